# expect: bad-output
"""Returns a nested list instead of an array."""
import numpy as np

OP = "softmax"


def run(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).tolist()
