"""The tuning loop: problem -> candidates -> compile -> validate -> measure -> choose -> store.

Failures are values: a candidate that fails to compile, crashes, or returns a wrong result is a
:class:`Measurement` with a status and a reason and ``median_s = inf``; it never unwinds the loop
and never reaches the store as a choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uhop import backends as bk
from uhop import metrics
from uhop.backends.base import Backend, Candidate, Kernel
from uhop.config import settings
from uhop.errors import InputError, NoCandidateError
from uhop.measure.bench import Timing, benchmark
from uhop.measure.validate import ValidationSet, check_kernel
from uhop.problem import Problem, hardware_fingerprint
from uhop.store import Entry, open_store
from uhop.tune.background import check_abandoned


@dataclass(frozen=True)
class Measurement:
    candidate: Candidate
    status: str  # ok | compile-error | crash | timeout | wrong-result | bad-output | input-mutated | stale-output | skipped
    reason: str = ""
    timing: Timing = field(default_factory=Timing.failed)
    max_err: float = math.nan
    #: joules per call and peak extra bytes per call (multi-objective runs; nan when not measured)
    energy_j: float = math.nan
    mem_bytes: float = math.nan
    #: where the evaluation's time went, seconds: ``compile``, ``validate``, ``time``
    phases: tuple[tuple[str, float], ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def median_s(self) -> float:
        return self.timing.median_s

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_json(),
            "status": self.status,
            "reason": self.reason,
            "median_s": self.timing.median_s,
            "spread": self.timing.spread,
            "n": self.timing.n,
            "max_err": self.max_err,
            "energy_j": self.energy_j,
            "mem_bytes": self.mem_bytes,
            "phases": dict(self.phases),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Measurement:
        med = d.get("median_s")
        med = math.inf if med is None else float(med)
        n = int(d.get("n") or 0)
        spread = d.get("spread")
        timing = Timing(med, med, med, math.inf if spread is None else float(spread), n, 1) if n else Timing.failed()
        nan = math.nan
        return cls(
            Candidate.from_json(d["candidate"]), d["status"], d.get("reason", ""), timing,
            nan if d.get("max_err") is None else float(d["max_err"]),
            nan if d.get("energy_j") is None else float(d["energy_j"]),
            nan if d.get("mem_bytes") is None else float(d["mem_bytes"]),
            tuple((str(k), float(v)) for k, v in (d.get("phases") or {}).items()),
        )  # fmt: skip

    def with_(self, **changes: Any) -> Measurement:
        return dataclasses.replace(self, **changes)


@dataclass
class TuneResult:
    problem: Problem
    key: str
    policy: str
    measurements: list[Measurement]
    best: Measurement | None
    entry: Entry | None
    kernel: Kernel | None = None
    backend: Backend | None = None
    #: search runs (``strategy=``): the run id in the job queue, why the search stopped, and for
    #: multi-objective runs the Pareto front (measurements not dominated in every objective)
    run_id: str = ""
    stopped: str = ""
    pareto: list[Measurement] = field(default_factory=list)
    objectives: tuple[str, ...] = ("latency",)
    #: the candidate now in force for the key (the store keeps a faster earlier entry over a
    #: slower new pick); ``kernel``/``backend`` build it
    served: Candidate | None = None
    #: candidates statistically tied with the winner in the interleaved re-timing
    ties: list[Candidate] = field(default_factory=list)
    #: seconds outside the candidates' own evaluation: ``probe`` (backend imports), ``enumerate``, ``worker_start``,
    #: ``reference``, ``retime``, ``store``, ``total`` (``uhop tune --explain``)
    overhead: dict[str, float] = field(default_factory=dict)

    def rate(self, m: Measurement) -> tuple[float | None, float | None]:
        """(GFLOP/s, GB/s) of a measurement."""
        if not m.ok or not math.isfinite(m.median_s) or m.median_s <= 0:
            return None, None
        return self.problem.flops() / m.median_s / 1e9, self.problem.bytes() / m.median_s / 1e9


ProgressFn = Callable[[int, int, Measurement], None]

log = logging.getLogger("uhop")
#: without an interleaved re-timing, a candidate replaces the baseline only when its single pass
#: was this much faster (timings taken while the caller's program runs drift by tens of percent)
UNCONFIRMED_MARGIN = 0.2


def content_hash(candidate: Candidate, key: str, backend: Backend) -> str:
    """Hash of everything that determines the compiled kernel: candidate, problem key (op, shape
    class, dtype, params, layout, device), the backend's source, and the hardware fingerprint."""
    h = hashlib.sha256()
    h.update(repr((candidate.backend, candidate.template, candidate.config)).encode())
    h.update(key.encode())
    own = inspect.getmodule(type(backend))
    names = [own.__name__ if own is not None else "", *getattr(backend, "source_modules", ())]
    for name in names:  # the backend's code and the kernel modules it generates from, read as
        try:  # files: importing numba_kernels would import numba into a process that serves none
            spec = importlib.util.find_spec(name)
            h.update(Path(spec.origin).read_bytes())  # type: ignore[union-attr,arg-type]
        except (ImportError, ValueError, AttributeError, TypeError, OSError):
            h.update(type(backend).__qualname__.encode())
    file_hash = getattr(backend, "kernel_sha256", None)
    if file_hash is not None:  # user kernel files: the exact bytes of the file
        h.update(str(file_hash(candidate)).encode())
    return h.hexdigest()


def baseline(problem: Problem, usable: Sequence[Backend], per_backend: Sequence[Sequence[Candidate]]) -> Candidate | None:
    """The library path a user would otherwise call (torch on CUDA and for torch callers; numpy
    for numpy callers on CPU): measured first in every tuning run, served while a problem tunes
    in the background, and preferred when the re-timing finds no candidate clearly faster."""
    vendors = [(b, cs[0]) for b, cs in zip(usable, per_backend, strict=True) if b.vendor and cs]
    if not vendors:
        return None
    want = "torch" if problem.device != "cpu" or problem.array == "torch" else "numpy"
    return next((c for b, c in vendors if b.array == want), vendors[0][1])


#: seconds of samples a first pass spends on a slow candidate (at least three samples); the
#: finalists are timed again interleaved
SLOW_TIMING_S = 1.0
#: the baseline goes second, after the expected fastest, when that is expected this many times faster
LEAD_AHEAD_OF_BASELINE = 2.0


def budget_order(problem: Problem, usable: Sequence[Backend], per_backend: Sequence[Sequence[Candidate]],
                 lead: bool = False) -> list[Candidate]:  # fmt: skip
    """Evaluation order of a budgeted run: the baseline, then every other candidate by expected
    time (the trained cost model, else the roofline prior of :mod:`uhop.tune.prior`).

    ``lead`` (timing runs): the expected fastest goes first when it is expected at least
    :data:`LEAD_AHEAD_OF_BASELINE` times faster than the baseline; the baseline follows it, and
    if it is more than 3x slower its first call ends its evaluation (``too-slow``). A slow
    baseline measured in full first can spend the budget alone: the demo's numpy attention (0.2-0.8
    s a call) took 8 s of an 11 s budget on a loaded 2-core VM and every numba candidate, 8-10x
    faster, was skipped.

    Kernel files the user registered (``uhop kernel add``, or promoted by ``uhop ai``: the
    ``user`` backend) come right after the baseline: someone chose to add them, and the prior
    knows nothing of them (it ranked a registered softmax with numpy's eager chain, and a 10 s
    run spent its budget before reaching it)."""
    from uhop.tune.prior import order

    base = baseline(problem, usable, per_backend)
    scored = order(problem, [c for cs in per_backend for c in cs])
    added = [c for c, _ in scored if c != base and c.backend in REGISTERED_BACKENDS]
    rest = [c for c, _ in scored if c != base and c.backend not in REGISTERED_BACKENDS]
    if base is None:
        return [*added, *rest]
    if lead and rest:
        expected = dict(scored)
        if expected[rest[0]] * LEAD_AHEAD_OF_BASELINE <= expected.get(base, 0.0):
            return [rest[0], base, *added, *rest[1:]]
    return [base, *added, *rest]


#: backends whose candidates are files a user registered: evaluated first in a budgeted run
REGISTERED_BACKENDS = ("user",)


@metrics.observe_evaluation
def evaluate(
    candidate: Candidate,
    backend: Backend,
    problem: Problem,
    vset: ValidationSet,
    *,
    time_it: bool = True,
    cutoff_s: float = math.inf,
    built: Kernel | None = None,
) -> tuple[Measurement, Kernel | None]:
    """Compile, validate and (optionally) time one candidate. Never raises for candidate faults.

    ``cutoff_s`` (3x the fastest so far, in a tuning run): timing stops after the first call
    when that call is slower, and the candidate is recorded ``too-slow``, never a choice.

    The first candidate of a backend whose library this process has not imported yet (the lazy
    probe) imports it first, recorded as its own phase, ``import``: a one-time cost of the process
    (or isolation worker) that the tuner keeps off the budget, as the probe's. Charged to the
    candidate's compile, torch's 1.3-1.5 s left a 1024x4096x1024 GEMM + GELU no time for numba's
    kernels (``tuner_vs_oracle_cpu_run26.json``)."""
    imported = 0.0
    if built is None and "availability" not in backend.__dict__:
        t = time.monotonic()
        backend.available  # noqa: B018 - the import; an unavailable backend's compile then says why
        imported = time.monotonic() - t
    m, kernel = _evaluate(candidate, backend, problem, vset, time_it, cutoff_s, built)
    return (m.with_(phases=(("import", imported), *m.phases)) if imported else m), kernel


def _evaluate(
    candidate: Candidate, backend: Backend, problem: Problem, vset: ValidationSet, time_it: bool, cutoff_s: float,
    built: Kernel | None,
) -> tuple[Measurement, Kernel | None]:  # fmt: skip
    t0 = time.monotonic()
    try:
        kernel = built if built is not None else backend.compile(candidate, problem)
    except Exception as exc:
        return Measurement(candidate, "compile-error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                           phases=(("compile", time.monotonic() - t0),)), None  # fmt: skip
    t1 = time.monotonic()
    sync = (lambda: backend.synchronize(problem.device)) if problem.device != "cpu" else None
    if math.isfinite(cutoff_s):  # a call first: a candidate 10x too slow must not be validated in full
        try:
            xs = vset.native_inputs(vset.trials[0], backend.array, problem.device)
            first = math.inf
            for _ in range(2):  # a slow first call is timed again: it may have been a JIT compile (Triton)
                ts = time.perf_counter()
                kernel(*xs)
                sync and sync()
                first = time.perf_counter() - ts
                if first <= max(2 * cutoff_s, 0.05):
                    break
        except Exception:
            first = 0.0  # validation reports the fault with its reason
        # 2x, and at least 50 ms: a first call may include lazy one-time work, and the point is
        # to save the seconds a hopeless candidate costs at full size, not microseconds
        if first > max(2 * cutoff_s, 0.05):
            return Measurement(candidate, "too-slow", f"first call {first:.3g} s > 2x the cutoff {cutoff_s:.3g} s "
                               "(3x the fastest so far); not validated or timed", phases=(("compile", t1 - t0),)), None  # fmt: skip
    verdict = check_kernel(kernel, vset, backend.array, problem.device, sync)
    t2 = time.monotonic()
    phases: tuple[tuple[str, float], ...] = (("compile", t1 - t0), ("validate", t2 - t1))
    if not verdict.ok:
        return Measurement(candidate, verdict.status, verdict.reason, max_err=verdict.max_err, phases=phases), None
    if not time_it:
        return Measurement(candidate, "ok", "chosen without timing (policy=fast)", max_err=verdict.max_err,
                           phases=phases), kernel  # fmt: skip
    s = settings()
    called, arg_sets = as_called(kernel, backend, problem, vset)
    try:
        timing = benchmark(
            called, arg_sets, sync=sync, repeat=s.bench_repeat, min_time_s=s.bench_min_s, cutoff_s=cutoff_s,
            cuda_events=problem.device.startswith("cuda") and backend.array == "torch", max_time_s=SLOW_TIMING_S,
        )
    except Exception as exc:  # a kernel that validated but fails when timed is still contained
        return Measurement(candidate, "crash", f"while timing: {type(exc).__name__}: {exc}"[:300], phases=phases), None
    phases += (("time", time.monotonic() - t2),)
    if timing.n == 1 and timing.median_s > cutoff_s:
        return Measurement(candidate, "too-slow", f"first timed call {timing.median_s:.3g} s > cutoff {cutoff_s:.3g} s "
                           "(3x the fastest so far); not timed further", timing, verdict.max_err, phases=phases), None  # fmt: skip
    # Re-check an output produced after timing: a kernel must not turn wrong once warmed up.
    again = check_kernel(kernel, _single(vset), backend.array, problem.device, sync)
    if not again.ok:
        return Measurement(candidate, again.status, "after timing: " + again.reason, timing, phases=phases), None
    return Measurement(candidate, "ok", "", timing, verdict.max_err, phases=phases), kernel


def as_called(kernel: Kernel, backend: Backend, problem: Problem, vset: Any) -> tuple[Kernel, list[list[Any]]]:
    """The kernel as the caller will run it, and ``vset``'s inputs in the arrays it takes then: a
    kernel of another library than the caller's (a numpy kernel serving torch CPU tensors) is
    timed inside the conversions dispatch wraps around it (:func:`uhop.dispatch._adapt`). On small
    problems they are most of the call: a 4x4 matmul through a numpy kernel took 12 us from torch
    tensors (torch's own 1.8 us) while the kernel alone timed on a par with torch's. A sandboxed
    user kernel serving CUDA tensors is timed with its copies to the host and back."""
    array = backend.array
    if backend.array != problem.array:
        from uhop.dispatch import _adapt

        kernel, array = _adapt(kernel, backend, problem), problem.array
    return kernel, [vset.native_inputs(t, array, problem.device) for t in vset.trials]


def _trials_for(problem: Problem, wanted: int) -> int:
    """Fresh draws to validate on: as configured, but at most two for problems whose inputs pass
    4M elements (each draw costs a float64 reference, seconds on a host at 16M elements; the
    output produced after timing is checked against a draw too)."""
    elements = sum(math.prod(s) for s in problem.spec.shapes_from_dims(problem.dim, problem.param, problem.arity))
    return min(wanted, 2) if elements > (1 << 22) else wanted


def _expected_s(took: Mapping[str, list[tuple[float, float]]], backend: Backend, cand: Candidate, problem: Problem,
                trials: int, scale: float, ahead: bool = False) -> float:  # fmt: skip
    """How long evaluating ``cand`` may take: the slowest of its backend's last three evaluations
    (a JIT compile varies with the config; starting one that overruns costs the whole budget's
    promise), or before its first the backend's own estimate (``Backend.eval_s``); at least the
    calls it will make (validation, timing) at its expected time per call, the roofline prior
    scaled by what the measured candidates showed of this machine (``scale``). ``took`` holds
    (seconds, of which compiling) per evaluation; a candidate built ``ahead`` by the precompile
    pool (its wait for that build is counted apart) is expected to cost those evaluations less
    their compiles: on the H100 a softmax's first Triton evaluation, compiled in the worker,
    made the tuner skip three precompiled candidates as "budget spent" with half the budget
    left (width_sweep_h100_product.json, sixteenth session, 12192 x 11008 bf16)."""
    from uhop.tune.prior import prior_s

    recent = took.get(backend.name, [])[-3:]
    base = max(e - (c if ahead else 0.0) for e, c in recent) if recent else backend.eval_s
    per_call = prior_s(cand, problem) * scale
    return max(base, per_call * (2 * trials + 4) + settings().bench_min_s)


def _call_floors(problem: Problem, store: Any, key: str) -> dict[str, float]:
    """Per backend, its fastest call recorded on this machine for this op on a no larger problem
    (:func:`uhop.perf.telemetry.call_floors`)."""
    try:
        from uhop.perf.telemetry import call_floors
    except ImportError:
        return {}
    return call_floors(store, problem, hardware_fingerprint(problem.device), key)


def _under_floor(cand: Candidate, floors: Mapping[str, float], best: Measurement, vendors: frozenset[str]) -> bool:
    """Whether no call of ``cand``'s backend has ever been fast enough on this machine to pass the
    timing cutoff (3x ``best``): it would be compiled, validated and rejected as too slow. Library
    (vendor) candidates are always evaluated: they are the comparison."""
    floor = floors.get(cand.backend)
    return floor is not None and cand.backend not in vendors and math.isfinite(best.median_s) and floor > 3 * best.median_s


def _floor_reason(cand: Candidate, floors: Mapping[str, float], best: Measurement) -> str:
    return (f"call floor: {cand.backend}'s fastest call of this op on a no larger problem here took "
            f"{floors[cand.backend] * 1e6:.3g} us > 3x the best ({best.median_s * 1e6:.3g} us); not compiled")  # fmt: skip


def _record_telemetry(problem: Problem, measurements: Sequence[Measurement], store: Any, key: str) -> None:
    """Every measurement is data for the cost model (never raises; a no-op without uhop.perf)."""
    try:
        from uhop.perf.telemetry import record_measurements
    except ImportError:
        return
    record_measurements(problem, measurements, hardware_fingerprint(problem.device), store=store, key=key)


def _single(vset: ValidationSet) -> ValidationSet:
    one = object.__new__(ValidationSet)
    one.problem, one.trials = vset.problem, vset.trials[-1:]
    return one


@metrics.observe_tuning
def tune(
    op: str | None = None,
    dims: Mapping[str, int] | None = None,
    dtype: str = "float32",
    params: Mapping[str, Any] | None = None,
    *,
    problem: Problem | None = None,
    policy: str | None = None,
    budget_s: float | None = None,
    backends: Sequence[str] = (),
    store: Any = None,
    progress: ProgressFn | None = None,
    force: bool = False,
    strategy: str | None = None,
    max_evals: int | None = None,
    objectives: Sequence[str] = ("latency",),
    weights: Sequence[float] | None = None,
    executor: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    seed: int = 0,
    patience: int | None = None,
    priority: int = 0,
    resume: str | None = None,
    queue_url: str | None = None,
    isolate: bool | None = None,
) -> TuneResult:
    """Find, validate, measure and store the best kernel for a problem.

    Either ``problem`` or ``op`` + ``dims`` (+ ``dtype``, ``params``). ``policy`` is ``tune``
    (time every viable candidate within ``budget_s`` seconds) or ``fast`` (first candidate, in
    heuristic order, that validates). Returns every measurement; raises
    :class:`~uhop.errors.NoCandidateError` only if no candidate at all is valid.

    ``budget_s`` (default ``UHOP_TUNE_BUDGET_S``) bounds the whole call, reference inputs and
    compiles included: a candidate is started only while the time it may take (the slowest of
    its backend's last three evaluations) still fits.

    Search runs: with ``strategy`` (``exhaustive``, ``random``, ``evolution``, ``nsga2``,
    ``surrogate``), ``executor`` (``inline``, ``local``, ``ray``) or ``resume`` (a run id), the
    union of the backends' search spaces is searched instead: at most ``max_evals`` measurements
    and/or ``budget_s`` seconds, stopping early after ``patience`` measurements without
    improvement; ``objectives`` (``latency``, ``energy``, ``memory``) with ``weights`` choose the
    kernel (every measured config's objectives are kept; ``TuneResult.pareto`` holds the front).
    Every candidate is a job in the persistent queue (``queue_url``, default the store's
    database), so ``resume=RUN_ID`` continues an interrupted run without re-measuring anything.

    ``isolate`` (default from ``UHOP_ISOLATE``: GPU problems, and on CPU the backends that run
    generated native code, ``Backend.crash_prone``) measures candidates in a worker process
    (:mod:`uhop.tune.isolated`): a candidate that kills its process, hangs or poisons the CUDA
    context is a recorded ``crash``/``timeout``; only the chosen kernel is built here.
    """
    s = settings()
    t_start = time.monotonic()
    if problem is None and resume is not None:
        from uhop.tune.search import problem_of_run

        problem = problem_of_run(resume, queue_url)
    if problem is None:
        if op is None or dims is None:
            raise TypeError("tune() needs problem= or op= and dims=")
        problem = Problem.make(op, dims, dtype, params)
    policy = policy or s.policy
    if policy not in ("tune", "fast", "background"):
        raise ValueError(f"policy must be 'background', 'tune' or 'fast', got {policy!r}")
    if policy == "background":  # a tune() call is the tuning itself: it blocks
        policy = "tune"
    unknown = [b for b in (tuple(backends) or s.backends) if b not in bk.REGISTRY]
    if unknown:
        where = "backends" if backends else "UHOP_BACKENDS"
        raise InputError(f"{where}: unknown backend(s) {', '.join(map(repr, unknown))}; known: {', '.join(bk.REGISTRY)}")
    store = store or open_store()
    if strategy is not None or executor is not None or resume is not None:
        from uhop.tune.search import search

        return search(
            problem, store=store, budget_s=budget_s, backends=tuple(backends) or s.backends, progress=progress,
            strategy=strategy or "exhaustive", max_evals=max_evals, objectives=tuple(objectives), weights=weights,
            executor=executor or "local", workers=workers, address=address, seed=seed, patience=patience,
            priority=priority, resume=resume, queue_url=queue_url,
        )  # fmt: skip
    from uhop.limits import check_fits

    check_fits(problem)  # dims too large for memory are refused before anything is allocated
    budget = s.tune_budget_s if budget_s is None else budget_s
    return _budgeted(problem, policy, budget, tuple(backends) or s.backends, store, progress, force, max_evals,
                     isolate, t_start)  # fmt: skip


def _budgeted(
    problem: Problem, policy: str, budget: float, allow: tuple[str, ...], store: Any, progress: ProgressFn | None,
    force: bool, max_evals: int | None, isolate: bool | None, t_start: float,
) -> TuneResult:  # fmt: skip
    """The default tuning run: baseline first (second behind a clearly faster expected lead), then
    candidates by expected time while the budget lasts, an interleaved re-timing of the best few,
    and the store's conflict rule."""
    s = settings()
    key = problem.key(s.shape_buckets)
    t = time.monotonic()
    # Where every candidate will run in the isolation worker, this process only needs to know the
    # libraries are installed: it imports one when its kernel wins (or runs here)
    usable = bk.for_problem(problem, allow, lazy=isolate is not False and s.isolate != "never")
    probe_s = time.monotonic() - t
    if not usable:
        reasons = "; ".join(f"{b.name}: {b.availability[1]}" for b in bk.all_backends())
        raise NoCandidateError(f"no available backend supports {problem.describe()} ({reasons})")
    isolated = {b.name for b in usable if (s.isolates(problem.device, b) if isolate is None else isolate)}
    if isolated:  # then every candidate runs there: one set of reference inputs, no two timers at once
        isolated = {b.name for b in usable}
    iso = None
    if isolated:
        from uhop.tune.isolated import evaluator

        iso = evaluator(problem.device)
        iso.start()  # its imports overlap the candidate enumeration below
    trials = _trials_for(problem, s.validation_trials)
    overhead = {"probe": probe_s, "enumerate": 0.0, "worker_start": 0.0, "reference": 0.0, "retime": 0.0, "store": 0.0}
    t = time.monotonic()
    per_backend: list[list[Candidate]] = []
    for b in usable:
        try:
            per_backend.append(list(b.candidates(problem)))
        except Exception as exc:  # a backend failing to enumerate must not stop the others
            per_backend.append([])
            progress and progress(0, 0, Measurement(Candidate(b.name, "<candidates>"), "crash", str(exc)))
    by_name = {b.name: b for b in usable}
    vendors = frozenset(n for n, b in by_name.items() if b.vendor)  # library paths: always in the re-timing
    order = budget_order(problem, usable, per_backend, lead=policy == "tune")
    base = baseline(problem, usable, per_backend)
    measurements: list[Measurement] = _quarantined(order, by_name, key, store)
    order = [c for c in order if all(m.candidate != c for m in measurements)]
    overhead["enumerate"] = time.monotonic() - t
    log.info("tuning %s: %d candidates, budget %.3g s", problem.describe(), len(order), budget)
    if problem.device == "cpu":
        from uhop.threads import note_unreached

        note_unreached()
    floors = _call_floors(problem, store, key)
    pre = None
    if iso is not None:  # the worker draws its inputs and builds its first candidate meanwhile
        first = next((c for c in order if c.backend in isolated), None)
        iso.prepare(problem, trials=trials, candidate=first if policy == "tune" else None)
        ahead = [c for c in order if by_name[c.backend].precompiles and c != first]
        if ahead and s.precompile_processes > 0 and policy == "tune":
            from uhop.tune.precompile import Precompiler

            pre = Precompiler(min(s.precompile_processes, len(ahead)))
            pre.submit(problem, ahead)
    vset: ValidationSet | None = None  # built on first in-process use (the worker builds its own)
    kernels: dict[Candidate, Kernel] = {}
    best: Measurement | None = None
    # The budget covers the evaluation, not this process's one-time costs: importing the backends'
    # libraries (``probe`` in --explain) and starting the isolation worker (``worker start``: on a
    # GPU a process importing torch and Triton and creating a CUDA context, 6 s on the H100 host,
    # which spent 60% of the budget before any of UHOP's kernels was timed). A later problem in
    # the same process pays neither; --explain and the JSON report both.
    deadline = t_start + probe_s + budget
    cold = iso is not None  # the first isolated evaluation waits for the worker's start: off the budget too
    took: dict[str, list[tuple[float, float]]] = {}  # (seconds, of which compiling) per evaluation, by backend
    scale = 1.0  # measured / prior time per call of the candidates timed so far (this machine, now)
    try:
        for i, cand in enumerate(order):
            check_abandoned()  # the process is exiting: stop here, store nothing
            if best is not None and policy == "fast":
                measurements.extend(Measurement(c, "skipped", "policy=fast") for c in order[i:])
                break
            if best is not None and _under_floor(cand, floors, best, vendors):
                measurements.append(Measurement(cand, "skipped", _floor_reason(cand, floors, best)))
                continue
            if best is not None and (
                time.monotonic() + _expected_s(took, by_name[cand.backend], cand, problem, trials, scale,
                                               pre is not None and pre.ahead(cand))  # fmt: skip
                + (pre.pending_s(cand, by_name[cand.backend].eval_s) if pre is not None else 0.0)  # its build, if not done
                + _build_reserve_s(best, measurements, budget, kernels) + _retime_reserve_s(measurements, best, budget, vendors)
                > deadline - END_MARGIN * budget
                or (max_evals is not None and sum(m.status != "skipped" for m in measurements) >= max_evals)
            ):
                measurements.append(Measurement(cand, "skipped", "budget spent"))  # a cheaper one may still fit
                continue
            cutoff = 3 * best.median_s if best is not None and math.isfinite(best.median_s) else math.inf
            t0 = time.monotonic()
            setup = 0.0
            if iso is not None and cand.backend in isolated:
                built_s = waited = None
                if pre is not None and by_name[cand.backend].precompiles:
                    built_s = pre.wait(cand, deadline - time.monotonic())
                    waited = time.monotonic() - t0
                m, kernel = iso.evaluate(cand, problem, trials=trials, time_it=policy == "tune", cutoff_s=cutoff), None
                if waited is not None:  # built by the pool ("ahead"), then the worker's "compile" loaded it
                    m = m.with_(phases=(*m.phases, ("wait", waited), *((("ahead", built_s),) if built_s is not None else ())))
                setup = iso.last_setup_s + (waited or 0.0)  # the pipeline's fill, not this candidate's cost
                overhead["worker_start"] += iso.last_start_s
                overhead["reference"] += iso.last_setup_s - iso.last_start_s
                if cold:  # a one-time cost of this process, as the backends' imports (a crash's restart is not)
                    deadline += iso.last_start_s
                    cold = False
            else:
                if vset is None:
                    vset = ValidationSet(problem, trials=trials)
                    setup = time.monotonic() - t0
                    overhead["reference"] += setup
                m, kernel = evaluate(cand, by_name[cand.backend], problem, vset, time_it=policy == "tune", cutoff_s=cutoff)
            imported = dict(m.phases).get("import", 0.0)  # a library's first import (see evaluate): off the budget
            overhead["probe"] += imported
            deadline += imported
            setup += imported
            took.setdefault(cand.backend, []).append((time.monotonic() - t0 - setup, dict(m.phases).get("compile", 0.0)))
            measurements.append(m)
            if m.ok and kernel is not None:
                kernels[cand] = kernel
            if m.ok and math.isfinite(m.median_s):
                from uhop.tune.prior import prior_s

                scale = max(scale, m.median_s / prior_s(cand, problem))
            if m.ok and (best is None or m.median_s < best.median_s):
                best = m
                if pre is not None:  # builds of candidates that can no longer get under the cutoff
                    pre.drop(lambda c, b=best: not _under_floor(c, floors, b, vendors))
            log.debug("  %s: %s %s", cand.id, m.status, f"{m.median_s * 1e3:.4g} ms" if m.ok else m.reason)
            if progress:
                progress(i + 1, len(order), m)
    finally:  # before the re-timing: no compiler beside the finalists' timings (and none left
        if pre is not None:  # running when the loop raises)
            pre.close()
    ties: list[Candidate] = []
    check_abandoned()
    if best is not None and policy == "tune":
        best, ties = _retime(problem, measurements, best, base, order, by_name, kernels, vset, iso, isolated,
                             trials, deadline - _build_reserve_s(best, measurements, budget, kernels), overhead,
                             vendors)  # fmt: skip
    if iso is not None:
        iso.release()
    _warn_backend_failures(problem, measurements)
    t = time.monotonic()
    _record_telemetry(problem, measurements, store, key)
    if best is None:
        store.record(
            key, problem.to_json(), None, [m.to_json() for m in measurements], median_s=None, gflops=None,
            gbps=None, policy=policy, fingerprint=hardware_fingerprint(problem.device),
        )  # fmt: skip
        reasons = "; ".join(f"{m.candidate.id}: {m.status} ({m.reason})" for m in measurements[:8])
        raise NoCandidateError(f"no valid candidate for {problem.describe()}: {reasons}")
    old = store.get(key)
    if old is not None and not force and _stale(old, key):
        store.invalidate(key)  # a stale entry is always replaced
    chosen_backend = by_name[best.candidate.backend]
    flops, nbytes = problem.flops(), problem.bytes()
    med = best.median_s if math.isfinite(best.median_s) else None
    spread = best.timing.spread if med is not None and math.isfinite(best.timing.spread) else None
    choice = dict(
        median_s=med, gflops=flops / med / 1e9 if med else None, gbps=nbytes / med / 1e9 if med else None,
        policy=policy, fingerprint=hardware_fingerprint(problem.device),
        content_hash=content_hash(best.candidate, key, chosen_backend), spread=spread,
    )  # fmt: skip
    entry = store.record(key, problem.to_json(), best.candidate.to_json(), [m.to_json() for m in measurements],
                         force=force, **choice)  # fmt: skip
    overhead["store"] = time.monotonic() - t
    served, kernel, backend = best.candidate, kernels.get(best.candidate), chosen_backend
    stored = Candidate.from_json(entry.candidate) if entry is not None else best.candidate
    if stored != best.candidate:  # the store kept a faster entry: that is what callers get
        try:
            sb = bk.get(stored.backend)
            if sb.available and sb.supports(problem):
                served, kernel, backend = stored, sb.compile(stored, problem), sb
                log.info("store keeps %s for %s (faster than this run's %s)", stored.id, problem.describe(), best.candidate.id)
        except Exception as exc:  # the stored one no longer builds: ours replaces it
            log.warning("stored kernel %s failed to build (%s); storing %s", stored.id, exc, best.candidate.id)
            store.record(key, problem.to_json(), best.candidate.to_json(), [], force=True, **choice)
    if kernel is None:  # validated in the worker; the same build serves here
        kernel = backend.compile(served, problem)
    _loaded_here.add(backend.name)
    if entry is not None and entry.content_hash:  # this process's dispatch serves it as built
        from uhop.dispatch import note_tuned

        note_tuned(key, entry.content_hash, (kernel, backend, served))
    overhead["total"] = time.monotonic() - t_start
    log.info("tuned %s in %.2f s: %s%s", problem.describe(), overhead["total"], served.id,
             f" ({best.median_s * 1e3:.4g} ms)" if med else "", extra={"uhop_overhead": dict(overhead)})  # fmt: skip
    return TuneResult(problem, key, policy, measurements, best, entry, kernel, backend, served=served, ties=ties,
                      overhead=overhead)  # fmt: skip


#: share of the budget a new candidate must leave unused: its evaluation's estimate errs (the
#: last one ran 0.05-0.1 s past a 10 s deadline) and the store write and swap come after
END_MARGIN = 0.02


def _finalists(measurements: Sequence[Measurement], best: Measurement, base: Candidate | None = None,
               vendors: frozenset[str] = frozenset()) -> list[Measurement]:  # fmt: skip
    """The candidates the re-timing compares: up to three within 1.25x of the best, the baseline
    when it is within that too, the fastest library candidate (a backend in ``vendors``)
    within 1.5x and up to two more library candidates within 1.25x: a first pass must not drop
    the safe choice on noise. In a CPU run torch's SDPA
    was timed at 24.1 ms after numba kernels had run in the worker (1.254x the best's 19.2 ms) and
    left out, while interleaved it ran 12-15 ms against the pick's 17-25 ms."""
    ok = sorted((m for m in measurements if m.ok and math.isfinite(m.median_s)), key=lambda m: m.median_s)
    top = [m for m in ok if m.median_s <= 1.25 * best.median_s][:3]
    if base is not None and base not in [m.candidate for m in top]:
        bm = next((m for m in ok if m.candidate == base and m.median_s <= 1.25 * best.median_s), None)
        if bm is not None:
            top.append(bm)
    libs = [m for m in ok if m.candidate.backend in vendors]
    if libs and libs[0].median_s <= 1.5 * best.median_s and libs[0] not in top:
        top.append(libs[0])
    # every other library kernel within the race's bound too (at most two more): on the H100
    # cuBLASLt's fused bias + gelu epilogue was timed 1.03x eager's matmul + gelu in one pass, 4th
    # of three within 1.25x, and left out, while 0.95x of it when timed again
    top += [m for m in libs[1:] if m.median_s <= 1.25 * best.median_s and m not in top][:2]
    return top


def _round_s(top: Sequence[Measurement]) -> float:
    """Seconds of one interleaved re-timing round over ``top`` (three samples and warm-up each)."""
    return sum(3 * max(settings().bench_min_s / 4, m.median_s) + 2 * m.median_s for m in top)


def _retime_reserve_s(measurements: Sequence[Measurement], best: Measurement, budget: float,
                      vendors: frozenset[str] = frozenset()) -> float:  # fmt: skip
    """Seconds a new candidate must leave for confirming the race it may join: three re-timing
    rounds of the finalists and of the new one (counted at the best's time), at most 15% of the
    budget. One pass cannot tell kernels within a few percent apart on a shared machine (an
    elementwise chain went to IREE over numba's fused kernel on a 7-12% lead in one pass, the last
    evaluation of the budget; 0.79-0.84x of numba's when timed again)."""
    return min(3 * _round_s([*_finalists(measurements, best, vendors=vendors), best]), 0.15 * budget)


def _build_reserve_s(best: Measurement, measurements: Sequence[Measurement], budget: float,
                     built: Mapping[Candidate, Any]) -> float:
    """Seconds to keep for building the winner in this process once the search ends (a worker
    measured it, so this process has not loaded it; with a JIT backend that is its runtime's
    import and a disk-cache load: numba 0.3-1.4 s, IREE about 1 s on the 2-core VM). Estimated by
    the worker's slowest build of that backend, at most a fifth of the budget; without it, CPU
    tuning ran 0.8-1.5 s over a 10 s budget."""
    if best.candidate in built or best.candidate.backend in _loaded_here:
        return 0.0
    builds = [dict(m.phases).get("compile", 0.0) for m in measurements if m.candidate.backend == best.candidate.backend]
    return min(max(builds, default=0.0), 0.2 * budget)


#: backends whose kernels this process has built (their runtime is loaded: a build is a cache hit)
_loaded_here: set[str] = set()


def _quarantined(order: Sequence[Candidate], by_name: Mapping[str, Backend], key: str, store: Any) -> list[Measurement]:
    """Untrusted candidates (kernel files, generated kernels) whose exact code failed a
    dispatch-time spot check on this problem: never tuned again (``Store.quarantined``)."""
    out = []
    for c in order:
        b = by_name[c.backend]
        if b.trusted or not hasattr(store, "quarantined"):
            continue
        try:
            if store.quarantined(content_hash(c, key, b)):
                out.append(Measurement(c, "skipped", "quarantined: failed a dispatch-time spot check"))
        except Exception as exc:  # a kernel file that went away: the evaluation says so
            log.debug("quarantine check of %s: %s", c.id, exc)
    return out


def _stale(entry: Entry, key: str) -> bool:
    """Whether a stored entry can no longer be served as stored: its backend is gone or its code
    changed since it was tuned (content hash)."""
    try:
        cand = Candidate.from_json(entry.candidate)
        b = bk.get(cand.backend)
    except Exception:
        return True
    if not b.available:
        return True
    return bool(entry.content_hash) and entry.content_hash != content_hash(cand, key, b)


def _warn_backend_failures(problem: Problem, measurements: Sequence[Measurement]) -> None:
    """One clear warning when every evaluated candidate of a backend failed the same way (a broken
    install, a worker that cannot import UHOP): tuning then chose among the rest."""
    import warnings

    from uhop.errors import UhopWarning

    by: dict[str, list[Measurement]] = {}
    for m in measurements:
        if m.status != "skipped":
            by.setdefault(m.candidate.backend, []).append(m)
    for name, ms in by.items():
        if len(ms) >= 2 and all(m.status in ("crash", "compile-error", "timeout") for m in ms):
            reasons = {(m.status, m.reason.split(";")[0][:120]) for m in ms}
            if len(reasons) == 1:
                status, reason = reasons.pop()
                warnings.warn(f"every {name} candidate for {problem.describe()} failed: {status} ({reason}); "
                              f"tuning chose among the other backends", UhopWarning, stacklevel=4)  # fmt: skip


def _retime(
    problem: Problem, measurements: list[Measurement], best: Measurement, base: Candidate | None,
    order: Sequence[Candidate], by_name: Mapping[str, Backend], kernels: Mapping[Candidate, Kernel],
    vset: ValidationSet | None, iso: Any, isolated: set[str], trials: int, deadline: float, overhead: dict[str, float],
    vendors: frozenset[str] = frozenset(),
) -> tuple[Measurement, list[Candidate]]:  # fmt: skip
    """Re-time the candidates that could still win (within 1.25x of the best; the baseline too),
    interleaved, and pick robustly (:mod:`uhop.tune.retime`). Skipped when one candidate is left
    or the remaining budget cannot pay for three rounds."""
    from uhop.tune import retime as rt

    top = _finalists(measurements, best, base, vendors)
    if len(top) < 2:
        return best, []
    rounds = min(rt.ROUNDS, int((deadline - time.monotonic()) / max(_round_s(top), 1e-9)))
    if rounds < 3:  # no budget to confirm: a pick other than the baseline must win by a clear margin
        bm = next((m for m in measurements if m.candidate == base and m.ok and math.isfinite(m.median_s)), None)
        if bm is not None and best.candidate != base and best.median_s > (1 - UNCONFIRMED_MARGIN) * bm.median_s:
            note = (f"kept the baseline: {best.candidate.id} was {bm.median_s / best.median_s:.2f}x faster in one "
                    f"unconfirmed pass (no budget left to re-time; needs {1 / (1 - UNCONFIRMED_MARGIN):.2f}x)")
            chosen = bm.with_(reason=note)
            measurements[measurements.index(bm)] = chosen
            return chosen, [best.candidate]
        return best, []
    t = time.monotonic()
    cands = [m.candidate for m in top]
    rank = {c: i for i, c in enumerate(order)}
    preference = sorted(range(len(cands)), key=lambda i: (cands[i] != base, rank.get(cands[i], len(order))))
    if iso is not None and any(c.backend in isolated for c in cands):
        samples = iso.retime(cands, problem, trials=trials, rounds=rounds)
    else:
        assert vset is not None
        ks, args = [], []
        for c in cands:
            b = by_name[c.backend]
            k, inputs = as_called(kernels.get(c) or b.compile(c, problem), b, problem, vset)
            ks.append(k)
            args.append(inputs)
        samples = rt.interleaved(ks, args, rounds=rounds, min_time_s=settings().bench_min_s / 4)
    overhead["retime"] = time.monotonic() - t
    if samples is None:  # the worker died re-timing: keep the first-pass pick
        return best, []
    d = rt.decide(samples, preference)
    w = top[d.winner]
    import statistics

    rs = sorted(samples[d.winner])
    spread = (rs[-1] - rs[0]) / d.medians[d.winner] if d.medians[d.winner] > 0 else 0.0
    timing = Timing(d.medians[d.winner], rs[0], rs[-1], spread, len(rs), w.timing.calls)
    ties = [cands[i] for i in d.ties]
    note = f"re-timed interleaved over {rounds} rounds against {', '.join(c.id for c in cands if c != w.candidate)}"
    if ties:
        note += f"; statistically tied with {', '.join(c.id for c in ties)} (kept the preferred)"
    log.debug("retime %s: %s", problem.describe(), [f"{c.id}={statistics.median(x) * 1e3:.4g}ms" for c, x in zip(cands, samples, strict=True)])
    chosen = w.with_(timing=timing, reason=note)
    measurements[measurements.index(w)] = chosen
    return chosen, ties
