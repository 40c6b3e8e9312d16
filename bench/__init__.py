"""Benchmarks (``python -m bench.<module>``); not part of the product."""
