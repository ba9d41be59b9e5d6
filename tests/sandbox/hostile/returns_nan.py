# expect: wrong-result
"""Returns NaN everywhere."""
import numpy as np

OP = "softmax"


def run(x):
    return np.full(x.shape, np.nan, dtype=x.dtype)
