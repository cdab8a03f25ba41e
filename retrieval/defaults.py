"""Defaults shared by the code and the command line's help texts, in one place.

Light on purpose (no torch, open_clip, faiss or gradio): ``dgmrec --help`` reads it.
"""
COMPACT_MODEL = "dgmrec-compact"
ENCODER_MODES = ("auto", "pretrained", "compact")

FINETUNE_EPOCHS = 20
FINETUNE_BATCH = 32  # the most pairs per batch; small catalogs get smaller batches (finetune.batch_for)
SCRATCH_LR = 1e-3  # fine-tuning learning rate from random weights ...
PRETRAINED_LR = 1e-5  # ... and from pretrained weights

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
AUTO_EXACT_MAX = 50_000  # index kind "auto": exact search below this many rows, IVF at or above
