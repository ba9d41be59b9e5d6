# expect: forbidden
# expect-unchecked: memory
"""Lifts its own resource limits, then allocates 64 GB."""
import resource

import numpy as np

OP = "softmax"


def run(x):
    for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE):
        try:
            resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass
    big = np.ones(64 << 30, dtype=np.uint8)
    return big[: x.size].reshape(x.shape).astype(x.dtype)
