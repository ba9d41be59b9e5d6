# expect: crash
"""Raises SystemExit(0) mid-run (passes the static check)."""
OP = "softmax"


def run(x):
    raise SystemExit(0)
