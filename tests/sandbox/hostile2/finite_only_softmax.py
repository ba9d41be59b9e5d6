"""Round 2, special values: an overflow guard that clips inputs to +-1e4, right for every finite
input the validator ever drew, but a row holding +inf gives a finite distribution where the
reference's row is NaN."""
import numpy as np

OP = "softmax"


def run(x):
    x = np.clip(x, -1e4, 1e4)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
