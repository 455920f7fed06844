"""Local detection: turns sample batches into events (numba kernels underneath).

Imports nothing: the kernels' ahead-of-time build (`agent.detect.kernels.build`) must
choose their form before any of them is imported.
"""
