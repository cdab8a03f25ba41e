"""User-facing layer: the `dgmrec` command line and the Gradio app. Thin: calls retrieval and dgmrec_core."""
