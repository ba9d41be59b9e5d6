"""Honest matmul: blocked over rows, accumulating in float64 for small K."""
import numpy as np

OP = "matmul"
DTYPES = ("float32", "float64")


def run(a, b, bias=None):
    out = np.empty((*a.shape[:-1], b.shape[-1]), dtype=a.dtype)
    step = 32
    for i in range(0, a.shape[-2], step):
        out[..., i : i + step, :] = a[..., i : i + step, :] @ b
    if bias is not None:
        out += bias
    return out
