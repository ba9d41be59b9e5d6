"""Round 2, class 6f: a SIGALRM interval timer and handler that keep running after run() returns."""
import signal

import numpy as np

OP = "softmax"
TICKS = [0]


def run(x):
    signal.signal(signal.SIGALRM, lambda *a: TICKS.__setitem__(0, TICKS[0] + 1))
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
