"""Benchmarks of prefetch against its peers (not part of the installed package or the tests).

Run `python benchmarks/loaders.py --help`; see benchmarks/README.md.
"""
