# expect: forbidden
# expect-unchecked: wrong-result
"""Patches numpy's comparisons to always agree, then returns garbage."""
import numpy as np

OP = "softmax"
np.allclose = lambda *a, **k: True
np.array_equal = lambda *a, **k: True
np.testing.assert_allclose = lambda *a, **k: None


def run(x):
    return np.zeros_like(x) + 0.5
