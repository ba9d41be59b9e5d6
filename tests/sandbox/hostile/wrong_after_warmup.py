# expect: wrong-result
# timed: yes
"""Right for the first calls (validation), wrong once warmed up (timing)."""
import numpy as np

OP = "softmax"
CALLS = [0]


def run(x):
    CALLS[0] += 1
    if CALLS[0] > 20:  # validation makes 20 calls (2 shapes x 5 sets x 2); timing comes next
        return np.zeros_like(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
