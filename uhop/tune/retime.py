"""The final say between the best candidates: interleaved re-timing and a robust, reproducible pick.

Timings taken one candidate after another on a shared machine drift with its load: the first
candidate is timed while another process runs, the second while it sleeps. Before a winner is
committed the top candidates are timed again in rounds, each round visiting every candidate
once in a rotated order (A B C, B C A, C A B, ...), so that drift hits all of them alike. The
winner is the lowest median over rounds; a candidate whose paired per-round ratio to it is
within the noise of those ratios (at least :data:`MIN_MARGIN`, at most :data:`MAX_MARGIN`) is a statistical tie, unless the
fastest led it by more than :data:`MIN_MARGIN` in every round; ties go to
the most preferred candidate (the library baseline first, then the prior's order), so that runs
on a noisy machine pick the same kernel instead of a coin flip.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from uhop.measure.bench import benchmark

#: two candidates closer than this (relative, paired per round) are never told apart
MIN_MARGIN = 0.03
#: and a candidate whose paired median is further behind than this is never tied, however wide
#: the noise: with the quartiles of five rounds' ratios wide apart (a loaded 2-core VM), a numba
#: GEMM epilogue re-timed at 10.0 ms was "tied" with candidates whose first pass took 6.0-6.4 ms,
#: and kept as the prior's favourite (the preference below)
MAX_MARGIN = 0.10
ROUNDS = 5


@dataclass(frozen=True)
class Decision:
    winner: int  # index into the candidates given
    ties: tuple[int, ...]  # other indices statistically tied with the fastest
    medians: tuple[float, ...]  # seconds per call, per candidate, median over rounds
    fastest: int  # index of the lowest median (the winner unless a preferred one tied)


def interleaved(
    kernels: Sequence[Callable[..., Any]],
    arg_sets: Sequence[Sequence[Sequence[Any]]],
    *,
    sync: Callable[[], None] | None = None,
    rounds: int = ROUNDS,
    min_time_s: float = 0.02,
    cuda_events: bool = False,
) -> list[list[float]]:
    """Seconds per call, ``[candidate][round]``: each round times every kernel once (median of
    three samples of about ``min_time_s``), in an order rotated by one each round."""
    n = len(kernels)
    out: list[list[float]] = [[] for _ in range(n)]
    for r in range(rounds):
        for j in range(n):
            i = (j + r) % n
            t = benchmark(kernels[i], arg_sets[i], sync=sync, warmup=1, repeat=3, min_time_s=min_time_s,
                          cuda_events=cuda_events)  # fmt: skip
            out[i].append(t.median_s)
    return out


def decide(samples: Sequence[Sequence[float]], preference: Sequence[int] | None = None) -> Decision:
    """Pick from per-round times (:func:`interleaved`). ``preference`` ranks candidate indices
    (first = most preferred) for breaking ties; default: the given order."""
    n = len(samples)
    meds = tuple(statistics.median(s) for s in samples)
    fastest = min(range(n), key=lambda i: meds[i])
    ties = []
    for i in range(n):
        if i == fastest:
            continue
        ratios = sorted(a / b for a, b in zip(samples[fastest], samples[i], strict=True) if b > 0)
        if not ratios:
            continue
        q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        margin = min(max(MIN_MARGIN, q3 - q1), MAX_MARGIN)
        # faster beyond MIN_MARGIN in every round (3+ rounds) is a lead whatever the spread: one
        # noisy round of five widens the quartiles past a 10% lead (tuner_vs_oracle_cpu_run19.json
        # kept a CPU GEMM as "tied" that was 10% slower in every round of the final check)
        every_round = len(ratios) >= 3 and ratios[-1] < 1.0 - MIN_MARGIN
        if statistics.median(ratios) >= 1.0 - margin and not every_round:
            ties.append(i)
    pref = list(preference) if preference is not None else list(range(n))
    rank = {idx: k for k, idx in enumerate(pref)}
    group = [fastest, *ties]
    winner = min(group, key=lambda i: (rank.get(i, n), i))
    return Decision(winner, tuple(i for i in group if i != winner), meds, fastest)
