# expect: partial-write
"""Writes half the rows into a buffer full of garbage (not zeros, not poison)."""
import numpy as np

OP = "matmul"


def run(a, b):
    out = np.random.default_rng().standard_normal((a.shape[0], b.shape[1])).astype(a.dtype)
    h = a.shape[0] // 2
    out[:h] = a[:h] @ b
    return out
