"""Query answering over a built bundle: the search engine and the engine that follows new versions.
Imports ``index`` and ``encode``, never ``build``."""
