# expect: forbidden
# expect-unchecked: disk
"""Fills the disk with files."""

OP = "softmax"


def run(x):
    chunk = b"\0" * (8 << 20)
    for i in range(100_000):
        with open(f"fill_{i}.bin", "wb") as f:
            f.write(chunk)
    return x.copy()
