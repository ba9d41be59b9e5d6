# expect: forbidden
"""Prints 8 MB."""
OP = "softmax"


def run(x):
    for _ in range(64):
        print("x" * (128 << 10))
    return x.copy()
