"""Encoders: open_clip towers turning catalog texts and images into raw features, the content-keyed
feature cache, and fine-tuning of the compact encoder (DESIGN.md, "Parts")."""
