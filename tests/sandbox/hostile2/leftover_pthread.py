"""Round 2, class 6f: a native thread started through ctypes (invisible to Python's threading
module) left running after run() returns."""
import ctypes

import numpy as np

OP = "softmax"
libc = ctypes.CDLL(None)
SPIN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(lambda arg: libc.pause())


def run(x):
    tid = ctypes.c_ulong()
    libc.pthread_create(ctypes.byref(tid), None, SPIN, None)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
