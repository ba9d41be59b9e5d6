# expect: timeout
"""Sleeps forever."""
import time

OP = "softmax"


def run(x):
    time.sleep(10**6)
