# expect: wrong-result
"""Plausible but wrong: a transposed product."""
import numpy as np

OP = "matmul"


def run(a, b):
    return (a @ b) * np.float32(1.01)
