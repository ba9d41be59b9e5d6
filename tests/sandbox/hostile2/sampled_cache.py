"""Round 2, class 6b: a result cache keyed on 16 sampled input elements. A miss costs 2 ms (the
"real" kernel), a hit nothing; the output is stale when inputs differ outside the sample."""
import time

import numpy as np

OP = "softmax"
CACHE = {}


def run(x):
    flat = x.reshape(-1)
    key = (x.shape, flat[:: max(1, flat.size // 16)][:16].tobytes())
    if key not in CACHE:
        time.sleep(0.002)
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        CACHE[key] = (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
    return CACHE[key].copy()
