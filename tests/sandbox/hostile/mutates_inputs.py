# expect: input-mutated
"""Correct output, but scribbles on its input."""
import numpy as np

OP = "softmax"


def run(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out = e / e.sum(axis=-1, keepdims=True)
    x *= 0
    return out.astype(x.dtype)
