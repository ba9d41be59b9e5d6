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
