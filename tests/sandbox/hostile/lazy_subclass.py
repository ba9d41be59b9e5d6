# expect: bad-output
"""Returns an ndarray subclass (a lazy result type would hide work the same way)."""
import numpy as np

OP = "softmax"


class Lazy(np.ndarray):
    pass


def run(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype).view(Lazy)
