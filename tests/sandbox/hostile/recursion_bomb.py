# expect: crash
"""Unbounded recursion."""
OP = "softmax"


def bomb(n):
    return bomb(n + 1) + 1


def run(x):
    return bomb(0)
