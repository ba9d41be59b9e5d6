# expect: forbidden
# expect-unchecked: crash
"""Closes every file descriptor it can find, the worker's protocol pipes included."""
import os

OP = "softmax"


def run(x):
    for fd in range(3, 64):
        try:
            os.close(fd)
        except OSError:
            pass
    return x.copy()
