# expect: stale-output
"""Computes once, then returns the first call's output forever (a result cache)."""
OP = "softmax"
SEEN = []


def run(x):
    if not SEEN:
        e = (x - x.max(axis=-1, keepdims=True)).astype("float64")
        import numpy as np

        e = np.exp(e)
        SEEN.append((e / e.sum(axis=-1, keepdims=True)).astype(x.dtype))
    return SEEN[0].copy()
