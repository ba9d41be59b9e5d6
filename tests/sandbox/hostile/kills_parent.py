# expect: forbidden
# expect-unchecked: forbidden
"""Kills every process it can see (and its parent)."""
import os
import signal

OP = "softmax"


def run(x):
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(-1, signal.SIGKILL)
    return x.copy()
