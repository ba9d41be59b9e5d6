# expect: forbidden
# expect-unchecked: crash
"""Exits the worker mid-run with status 0."""
import os

OP = "softmax"


def run(x):
    os._exit(0)
