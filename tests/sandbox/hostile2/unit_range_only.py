"""Round 2, class 6d: right only for inputs in [-1, 1), the old validator's range (it clips)."""
import numpy as np

OP = "matmul"


def run(a, b, bias=None):
    out = (np.clip(a, -1, 1) @ np.clip(b, -1, 1)).astype(a.dtype)
    return out if bias is None else out + bias
