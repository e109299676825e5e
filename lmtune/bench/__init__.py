"""Benchmarks of lmtune's search methods on real, replayable results (``lmtune bench``)."""
