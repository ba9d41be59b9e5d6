# expect: crash
"""Segfaults with numpy alone (as_strided over unmapped memory): passes the static check."""
import numpy as np

OP = "softmax"


def run(x):
    bad = np.lib.stride_tricks.as_strided(x, shape=(4,), strides=(1 << 44,))
    return np.full(x.shape, float(bad.sum()), dtype=x.dtype)
