# expect: forbidden
# expect-unchecked: disk|forbidden
"""Fills /dev/shm (memory-backed) instead of the disk."""
OP = "softmax"


def run(x):
    chunk = b"\0" * (8 << 20)
    for i in range(100_000):
        with open(f"/dev/shm/fill_{i}.bin", "wb") as f:
            f.write(chunk)
    return x.copy()
