# expect: forbidden
# expect-unchecked: forbidden
"""Writes into the real home directory (not the sandbox's $HOME, which is its private /tmp)."""
import os

OP = "softmax"


def run(x):
    for home in ("/root", "/home", os.path.expanduser("~")):
        with open(os.path.join(home, "uhop_pwned.txt"), "w") as f:
            f.write("pwned")
    return x.copy()
