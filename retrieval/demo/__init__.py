"""The demo: the generated sample shop, `dgmrec demo` end to end, and what the page shows of an index."""
