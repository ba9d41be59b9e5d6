"""The budgeted order: the baseline first, then what can win before what cannot."""

from __future__ import annotations

import pytest

from uhop import backends as bk
from uhop.problem import Problem
from uhop.tune.tuner import budget_order


def _order(op, dims, params=None):
    p = Problem.make(op, dims, "float32", params or {})
    usable = [b for b in bk.for_problem(p) if b.name in ("numpy", "torch", "numba")]
    return [c.id for c in budget_order(p, usable, [list(b.candidates(p)) for b in usable])]


def test_fused_kernels_come_before_eager_chains_on_memory_bound_ops():
    pytest.importorskip("numba")
    order = _order("elementwise", {"N": 1 << 24}, {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"})
    assert order[0].startswith("numpy/")  # the baseline is always measured first
    assert order[1].startswith("numba/fused")
    assert order.index("numpy/eager{block=0}") > order.index(next(c for c in order if c.startswith("numba/fused")))


def test_attention_that_keeps_scores_on_chip_comes_before_eager_attention():
    pytest.importorskip("numba")
    order = _order("attention", {"B": 8, "S": 2048, "L": 2048, "D": 64, "E": 64})
    assert order[0] == "numpy/eager"
    assert order[1].startswith("numba/blocked")
