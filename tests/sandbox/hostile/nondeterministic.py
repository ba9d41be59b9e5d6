# expect: nondeterministic
"""Right on the first call for each input, noisy on the repeat."""
import numpy as np

OP = "softmax"
CALLS = [0]


def run(x):
    CALLS[0] += 1
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out = (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
    if CALLS[0] % 2 == 0:
        out += np.random.default_rng().normal(0, 0.1, out.shape).astype(x.dtype)
    return out
