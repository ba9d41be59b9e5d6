# expect: partial-write
"""Skips work: writes only the first half of the rows."""
import numpy as np

OP = "matmul"


def run(a, b):
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    h = a.shape[0] // 2
    out[:h] = a[:h] @ b
    return out
