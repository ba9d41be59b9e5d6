# expect: forbidden
# expect-unchecked: forbidden
"""Executes /bin/sh."""
import os

OP = "softmax"


def run(x):
    os.execv("/bin/sh", ["sh", "-c", "touch /tmp/uhop_exec_pwned"])
