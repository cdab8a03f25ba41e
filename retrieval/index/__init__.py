"""FAISS indexes: one cosine index per modality plus the fused index, stored and versioned together as a
bundle folder (DESIGN.md, "Bundle format")."""
