"""Defaults shared by the code and the command line's help texts, in one place.

Light on purpose (no torch, open_clip, faiss or gradio): ``dgmrec --help`` reads it.
"""
COMPACT_MODEL = "dgmrec-compact"
ENCODER_MODES = ("auto", "pretrained", "compact")

FINETUNE_EPOCHS = 20
FINETUNE_BATCH = 32  # the most pairs per batch; small catalogs get smaller batches (finetune.batch_for)
SCRATCH_LR = 1e-3  # fine-tuning learning rate from random weights ...
PRETRAINED_LR = 1e-5  # ... and from pretrained weights

INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
AUTO_EXACT_MAX = 50_000  # index kind "auto": exact search below this many rows, IVF at or above
# ... and IVF-PQ (codes in memory, full vectors re-read from disk) once IVF's float32 vectors, n x d x 4
# bytes, would exceed this: 2,097,152 rows at d = 512 (benchmarks/RESULTS.md section 9).
AUTO_COMPRESS_BYTES = 4 * 1024**3
# Index bundles: each add-items writes one more segment (only its rows); an append that would make more
# segments than this rewrites the bundle as one instead, so at most 1 in MAX_SEGMENTS appends rewrites the
# catalog (retrieval/index/segments.py, docs/DESIGN.md "Bundle format").
MAX_SEGMENTS = 16

# `dgmrec demo`: DGMRec validated every epoch, stopping after 2 validations without a better Recall@20, at
# most 10 epochs, and a shorter generation refit. On the sample shop the best validation epoch is 3-7
# and the held-out report is the same with 500 refit steps as with 1000 (benchmarks/RESULTS.md section 6);
# the paper's rule (every 3 epochs, patience 26, cap 500) is for the benchmarks, not a first run.
DEMO_TRAINING = {"epochs": 10, "eval_every": 1, "patience": 2, "gen_refit_steps": 500}
# ... and the compact encoder's fine-tuning on the sample shop: attribute search precision@10 (both
# attributes, encoder alone, seed 0) 0.67 after 8 epochs, 0.83 after 12, 0.90 after 14, 0.93 after 16,
# 0.98 after 20; seeds 1 and 2 give 0.92 and 0.90 after 16 (RESULTS.md section 6). A catalog given to
# the demo gets FINETUNE_EPOCHS.
DEMO_FINETUNE_EPOCHS = 16
