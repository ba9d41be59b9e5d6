# expect: bad-output
"""Returns one of its inputs instead of a new array."""
OP = "softmax"


def run(x):
    return x
