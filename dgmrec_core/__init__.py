"""DGMRec: disentangling and generating modalities for recommendation with missing modalities.

Pure torch/numpy; knows nothing of FAISS, open_clip or Gradio.
"""
