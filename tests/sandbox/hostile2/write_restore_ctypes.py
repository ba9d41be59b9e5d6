"""Round 2, class 6e (raw pointer): writes into its input through ctypes, past numpy's read-only
flag, then restores it."""
import ctypes

import numpy as np

OP = "softmax"


def run(x):
    buf = (ctypes.c_char * x.nbytes).from_address(x.ctypes.data)
    keep = bytes(buf)
    ctypes.memset(x.ctypes.data, 0, x.nbytes)
    ctypes.memmove(x.ctypes.data, keep, x.nbytes)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
