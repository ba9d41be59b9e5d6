"""Collection: a seeded suite of problems, every candidate measured, every measurement recorded.

For each problem of the suite (:func:`problem_suite`), the candidates are those of every usable
registered backend (``uhop.backends.for_problem``) plus, for matmul, a seeded sample of the tiled
kernel family (:mod:`uhop.perf.family`). Each candidate goes through the tuner's own
:func:`uhop.tune.tuner.evaluate` (compile, float64 validation on fresh inputs, the one benchmark
function) in a seeded random order and without the 3x-best cutoff (a cost model needs the slow
candidates' times too). Every result becomes a telemetry row (``source='collect'``); the best
registered-backend candidate also goes into the kernel store as a tuned entry, exactly as
``uhop tune`` would store it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from uhop.backends.base import Backend, Candidate
from uhop.errors import InputError
from uhop.problem import Problem

#: dim values the suite draws from: powers of two, odd sizes, primes and tile non-multiples
DIM_VALUES = (1, 3, 8, 16, 24, 31, 48, 64, 80, 97, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024)
#: per-op cap on problem size, so the slowest candidate of a problem stays near 50 ms on a laptop core
FLOP_CAP = {"matmul": 4e7}
BYTE_CAP = 64e6


@dataclass
class CollectResult:
    problems: list[Problem] = field(default_factory=list)
    samples: int = 0  # telemetry rows with status ok
    rows: int = 0  # all telemetry rows written
    failed: int = 0
    seconds: float = 0.0
    #: per problem: list of (candidate, status, median_s)
    results: dict[str, list[tuple[Candidate, str, float]]] = field(default_factory=dict)


def problem_suite(op: str, n: int, seed: int, dtype: str = "float32", exclude: Sequence[Problem] = (),
                  flop_cap: float | None = None) -> list[Problem]:  # fmt: skip
    """``n`` distinct problems of ``op`` drawn with ``seed`` (dims from :data:`DIM_VALUES`, at
    most ``flop_cap`` FLOPs, default :data:`FLOP_CAP`), none with the dims of ``exclude``."""
    from uhop.ops import get as get_op

    spec = get_op(op)
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    seen = {p.dims for p in exclude}
    out: list[Problem] = []
    fixed = spec.defaulted_dims()
    for _ in range(200 * n):
        if len(out) >= n:
            break
        dims = {d: (fixed[d] if d in fixed else rng.choice(DIM_VALUES)) for d in spec.dims}
        try:
            p = Problem.make(op, dims, dtype)
        except Exception as exc:
            raise InputError(f"op {op!r} cannot be collected with default params: {exc}") from None
        if p.flops() > (flop_cap or FLOP_CAP.get(op, math.inf)) or p.bytes() > BYTE_CAP or p.dims in seen:
            continue
        seen.add(p.dims)
        out.append(p)
    return out


def candidates_for(problem: Problem, rng: random.Random, family_n: int = 16,
                   backends: Sequence[str] = ()) -> list[tuple[Candidate, Backend]]:  # fmt: skip
    """Registered backends' candidates plus ``family_n`` sampled family candidates, shuffled."""
    from uhop import backends as bk
    from uhop.config import settings

    out: list[tuple[Candidate, Backend]] = []
    for b in bk.for_problem(problem, tuple(backends) or settings().backends):
        try:
            out.extend((c, b) for c in b.candidates(problem))
        except Exception:  # a backend that cannot enumerate is skipped, as in the tuner
            continue
    if family_n > 0:
        from uhop.perf.family import TiledMatmulFamily

        fam = TiledMatmulFamily()
        if fam.available and fam.supports(problem):
            out.extend((c, fam) for c in fam.sample(problem, family_n, rng))
    rng.shuffle(out)
    return out


#: clocks a collection can read: wall time, or CPU time (immune to being preempted on a shared
#: machine) of the measuring thread or of the whole process. CPU time is latency only when the
#: process is pinned to one core with every thread pool at 1 thread; ``process-cpu`` also counts
#: runtimes that keep their own worker threads (IREE's task executor), ``thread-cpu`` does not.
TIMERS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter, "thread-cpu": time.thread_time, "process-cpu": time.process_time,
}  # fmt: skip


def evaluate_timed(candidate: Candidate, backend: Backend, problem: Problem, vset: Any, timer: str = "wall") -> Any:
    """The tuner's :func:`~uhop.tune.tuner.evaluate` (no cutoff), reading ``timer`` as the clock;
    returns ``(Measurement, kernel or None)``."""
    from uhop.config import settings
    from uhop.measure.bench import benchmark
    from uhop.tune.tuner import Measurement, evaluate

    if timer == "wall":
        return evaluate(candidate, backend, problem, vset)
    if timer not in TIMERS:
        raise InputError(f"timer must be one of {', '.join(TIMERS)}, got {timer!r}")
    m, kernel = evaluate(candidate, backend, problem, vset, time_it=False)
    if not m.ok:
        return m, None
    s = settings()
    args = [vset.native_inputs(t, backend.array, problem.device) for t in vset.trials]
    try:
        timing = benchmark(kernel, args, repeat=s.bench_repeat, min_time_s=s.bench_min_s, timer=TIMERS[timer])
    except Exception as exc:
        return Measurement(candidate, "crash", f"while timing: {type(exc).__name__}: {exc}"[:300]), None
    again = evaluate(candidate, backend, problem, vset, time_it=False)[0]  # still right once warm
    if not again.ok:
        return Measurement(candidate, again.status, "after timing: " + again.reason, timing), None
    return Measurement(candidate, "ok", "", timing, m.max_err), kernel


def energy_per_call(kernel: Any, args: Sequence[Any], min_time_s: float = 0.2) -> float | None:
    """Joules per call from the package energy counter over >= ``min_time_s`` of back-to-back
    calls, or None without a counter (or if it wrapped). Includes idle cores' draw: a package
    figure, comparable between candidates of one machine, not an isolated kernel's energy."""
    from uhop.perf.telemetry import read_energy_j

    e0 = read_energy_j()
    if e0 is None:
        return None
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time_s:
        kernel(*args)
        n += 1
    e1 = read_energy_j()
    return (e1 - e0) / n if e1 is not None and e1 >= e0 and n else None


def measure_problem(
    problem: Problem, cands: Sequence[tuple[Candidate, Backend]], *, store: Any = None, source: str = "collect",
    timer: str = "wall", hw: Any = None,
) -> list[Any]:  # fmt: skip
    """Evaluate every candidate (no cutoff), record telemetry and the store entry; returns the
    tuner ``Measurement`` values in evaluation order."""
    from uhop.config import settings
    from uhop.measure.validate import ValidationSet
    from uhop.perf.telemetry import read_energy_j, record_measurements
    from uhop.problem import hardware_fingerprint
    from uhop.store import open_store
    from uhop.tune.tuner import content_hash

    store = store or open_store()
    vset = ValidationSet(problem, trials=settings().validation_trials)
    ms, energy = [], {}
    has_counter = read_energy_j() is not None
    for cand, backend in cands:
        m, kernel = evaluate_timed(cand, backend, problem, vset, timer)
        ms.append(m)
        if has_counter and kernel is not None:
            e = energy_per_call(kernel, vset.native_inputs(vset.trials[0], backend.array, problem.device))
            if e is not None:
                energy[cand.id] = e
    fp = hardware_fingerprint(problem.device)
    key = problem.key(settings().shape_buckets)
    record_measurements(problem, ms, fp, store=store, key=key, source=source, timer=timer, hw=hw,
                        energy_j=energy, strict=True)  # fmt: skip
    registered = [m for m, (_, b) in zip(ms, cands, strict=True) if b.name != "tiled"]
    best = min((m for m in registered if m.ok), key=lambda m: m.median_s, default=None)
    if best is not None:
        med = best.median_s
        backend = next(b for c, b in cands if c == best.candidate)
        store.record(
            key, problem.to_json(), best.candidate.to_json(), [m.to_json() for m in registered], median_s=med,
            gflops=problem.flops() / med / 1e9, gbps=problem.bytes() / med / 1e9, policy="tune", fingerprint=fp,
            content_hash=content_hash(best.candidate, key, backend),
        )  # fmt: skip
    return ms


def collect(
    op: str,
    samples: int = 200,
    seed: int = 0,
    *,
    dtype: str = "float32",
    family_n: int = 16,
    store: Any = None,
    problems: Sequence[Problem] | None = None,
    backends: Sequence[str] = (),
    progress: Callable[[int, int, Problem], None] | None = None,
    timer: str = "wall",
) -> CollectResult:
    """Measure problems of the seeded suite until at least ``samples`` labelled (status ok)
    measurements are recorded (or ``problems`` is exhausted)."""
    if samples < 1:
        raise InputError(f"samples must be >= 1, got {samples}")
    if timer not in TIMERS:
        raise InputError(f"timer must be one of {', '.join(TIMERS)}, got {timer!r}")
    rng = random.Random(seed)
    suite = list(problems) if problems is not None else problem_suite(op, max(4, samples), seed, dtype)
    res = CollectResult()
    t0 = time.monotonic()
    for p in suite:
        if res.samples >= samples:
            break
        cands = candidates_for(p, rng, family_n, backends)
        if not cands:
            continue
        ms = measure_problem(p, cands, store=store, timer=timer)
        res.problems.append(p)
        res.results[p.key()] = [(m.candidate, m.status, m.median_s) for m in ms]
        res.rows += len(ms)
        ok = sum(m.ok for m in ms)
        res.samples += ok
        res.failed += len(ms) - ok
        if progress:
            progress(res.samples, samples, p)
    res.seconds = time.monotonic() - t0
    return res
