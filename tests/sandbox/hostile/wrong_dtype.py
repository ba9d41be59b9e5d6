# expect: bad-output
"""Right values, float64 instead of float32."""
import numpy as np

OP = "matmul"


def run(a, b):
    return a.astype(np.float64) @ b.astype(np.float64)
