# expect: forbidden
# expect-unchecked: forbidden
"""Fork bomb."""
import os

OP = "softmax"


def run(x):
    while True:
        os.fork()
