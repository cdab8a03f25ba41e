"""Retrieval side of DGMRec Search: catalog ingestion, open_clip encoders, feature cache, FAISS indexes
and the search engine. Imports flow one way: ``retrieval`` uses ``dgmrec_core``, never the reverse."""
