"""Benchmarks (``python -m bench.provision_bench``, ...); a package so their modules import each other."""
