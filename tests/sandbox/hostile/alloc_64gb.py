# expect: memory
"""Allocates 64 GB."""
import numpy as np

OP = "softmax"


def run(x):
    big = np.ones(64 << 30, dtype=np.uint8)
    return big[: x.size].reshape(x.shape).astype(x.dtype)
