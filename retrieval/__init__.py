"""Retrieval side of DGMRec Search, in subpackages of one job each (docs/DESIGN.md, "Parts"):
``catalog`` (reading catalogs), ``modalities`` (the modality registry), ``encode``, ``index``, ``build``,
``search`` and ``demo``. Imports flow one way: ``retrieval`` uses ``dgmrec_core``, never the reverse; within
it, demo -> build -> search -> index/encode -> catalog/modalities."""
