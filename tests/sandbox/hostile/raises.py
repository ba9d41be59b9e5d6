# expect: crash
"""Raises."""
OP = "softmax"


def run(x):
    raise ValueError("kernel failed to launch")
