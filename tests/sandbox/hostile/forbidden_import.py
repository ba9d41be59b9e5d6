# expect: forbidden
"""Imports subprocess."""
import subprocess

OP = "softmax"


def run(x):
    subprocess.run(["true"])
    return x.copy()
