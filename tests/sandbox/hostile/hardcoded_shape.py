# expect: wrong-result
"""Correct only at one shape (the first validation shape); elsewhere it cuts a corner."""
import numpy as np

OP = "softmax"


def run(x):
    axis = -1 if x.shape == (37, 61) else 0
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)
