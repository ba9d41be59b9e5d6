# expect: bad-output
"""Returns an output far larger than the op's (a reply bomb aimed at the parent's memory)."""
import numpy as np

OP = "softmax"


def run(x):
    return np.zeros((6000, 6000), dtype=x.dtype)
