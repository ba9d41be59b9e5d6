"""Round 2, class 6g: right for its first 200 calls (the check), wrong for every call after (at
dispatch)."""
import numpy as np

OP = "softmax"
CALLS = [0]


def run(x):
    CALLS[0] += 1
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out = (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
    return out if CALLS[0] <= 200 else out[:, ::-1].copy()
