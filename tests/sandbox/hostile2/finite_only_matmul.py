"""Round 2, special values: right for every finite input, but it zeroes NaN (a "safe" kernel),
where the reference's row of the product is NaN."""
import numpy as np

OP = "matmul"


def run(a, b, bias=None):
    out = (np.nan_to_num(a, nan=0.0) @ np.nan_to_num(b, nan=0.0)).astype(a.dtype)
    return out if bias is None else out + bias
