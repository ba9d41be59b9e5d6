"""Round 2, class 6e: uses its input as scratch space, then restores it before returning."""
import numpy as np

OP = "softmax"


def run(x):
    keep = x.copy()
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    out = (x / x.sum(axis=-1, keepdims=True)).astype(x.dtype)
    x[...] = keep
    return out
