# expect: timeout
"""Spins forever."""
OP = "softmax"


def run(x):
    n = 0
    while True:
        n += 1
