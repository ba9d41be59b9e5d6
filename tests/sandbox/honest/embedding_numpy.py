"""Honest embedding lookup in numpy (indices come in as int64; NaN and inf rows are copied)."""
import numpy as np

OP = "embedding"


def run(weight, indices):
    return np.take(weight, indices, axis=0)
