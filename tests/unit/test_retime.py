"""The final pick: interleaved re-timing, statistical ties, and the rule without re-timing."""

from __future__ import annotations

import time

from uhop.backends.base import Candidate
from uhop.measure.bench import Timing
from uhop.problem import Problem
from uhop.tune.retime import decide
from uhop.tune.tuner import Measurement, _retime


def test_decide_prefers_the_baseline_within_the_noise_and_the_faster_beyond_it():
    # candidate 1 is 1% faster than the baseline (0) in every round: a tie, the baseline is kept
    d = decide([[1.00, 1.01, 0.99, 1.00, 1.02], [0.99, 1.00, 0.98, 0.99, 1.01]], preference=[0, 1])
    assert d.fastest == 1 and d.winner == 0 and d.ties == (1,)
    # 30% faster in every round: no tie
    d = decide([[1.0, 1.0, 1.1, 1.0, 1.0], [0.7, 0.7, 0.75, 0.7, 0.7]], preference=[0, 1])
    assert d.winner == 1 and d.ties == ()
    # 4-30% faster in every round: the quartiles of the ratios are 0.21 apart, so the spread alone
    # would call it a tie; a lead beyond 3% in every round is not one
    d = decide([[1.0] * 5, [0.70, 0.75, 0.90, 0.96, 0.96]], preference=[0, 1])
    assert d.winner == 1 and d.ties == ()
    # the same but behind in one round: the spread decides, a tie
    d = decide([[1.0] * 5, [0.70, 0.75, 0.90, 0.96, 1.02]], preference=[0, 1])
    assert d.fastest == 1 and d.winner == 0 and d.ties == (1,)
    # 40% faster at the median, but the rounds spread so widely that the quartiles alone would call
    # it a tie: further behind than MAX_MARGIN is never one (the preferred candidate lost here)
    d = decide([[1.0] * 5, [0.35, 0.5, 0.6, 0.95, 1.3]], preference=[0, 1])
    assert d.winner == 1 and d.ties == ()


def _m(c: Candidate, t: float) -> Measurement:
    return Measurement(c, "ok", "", Timing(t, t, t, 0.0, 5, 1))


def test_without_budget_to_retime_a_pick_must_beat_the_baseline_clearly():
    p = Problem.make("softmax", {"R": 8, "N": 16}, "float32")
    base, other = Candidate.of("numpy", "eager", block=0), Candidate.of("numba", "rows", rows=8)
    past = time.monotonic() - 1.0  # no budget left: no interleaved re-timing
    ms = [_m(base, 1.0e-3), _m(other, 0.9e-3)]
    chosen, ties = _retime(p, ms, ms[1], base, [base, other], {}, {}, None, None, set(), 1, past, {})
    assert chosen.candidate == base and ties == [other] and "kept the baseline" in chosen.reason
    ms = [_m(base, 1.0e-3), _m(other, 0.5e-3)]
    chosen, ties = _retime(p, ms, ms[1], base, [base, other], {}, {}, None, None, set(), 1, past, {})
    assert chosen.candidate == other and ties == []


def test_benchmark_median_interval_covers_the_median_at_its_level():
    """``benchmarks/tuner_vs_oracle.py``'s interval of a paired ratio's median (order statistics):
    the k-th smallest and largest of 11 rounds is (3rd, 9th); (min, max) for 7; and over fresh
    random skewed samples it holds the true median at least 90% of the time."""
    import importlib.util
    import math
    from pathlib import Path

    import numpy as np

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "tuner_vs_oracle.py"
    spec = importlib.util.spec_from_file_location("tuner_vs_oracle", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.median_ci([float(i) for i in range(11)]) == (2.0, 8.0)
    assert mod.median_ci([5.0, 1.0, 3.0, 2.0, 4.0, 7.0, 6.0]) == (1.0, 7.0)
    assert mod.median_ci([0.9, math.nan, 1.1]) == (0.9, 1.1)
    lo, hi = mod.median_ci([])
    assert math.isnan(lo) and math.isnan(hi)
    rng = np.random.default_rng()
    true_median = math.exp(0.0)  # lognormal(0, s): median 1 whatever s
    hits = 0
    for _ in range(2000):
        lo, hi = mod.median_ci(list(rng.lognormal(0.0, 0.15, size=11)))
        hits += lo <= true_median <= hi
    assert hits / 2000 >= 0.90, hits / 2000
