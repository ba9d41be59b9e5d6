# expect: forbidden
# expect-unchecked: crash
"""Reads a secret from the environment (crashes when it is not there: the sandbox scrubs it)."""
import os

OP = "softmax"


def run(x):
    secret = os.environ.get("UHOP_TEST_SECRET")
    if secret is None:
        raise RuntimeError("no secret in the environment")
    return x.copy()
