"""Round 2, class 6f: a C-level signal handler installed through ctypes (Python's own view of its
handlers does not change) and left in place after run() returns."""
import ctypes

import numpy as np

OP = "softmax"
libc = ctypes.CDLL(None)
HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)(lambda sig: None)


def run(x):
    libc.signal(12, HANDLER)  # SIGUSR2
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
