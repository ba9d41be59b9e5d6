"""The tuning loop: problem -> candidates -> compile -> validate -> measure -> choose -> store.

Failures are values: a candidate that fails to compile, crashes, or returns a wrong result is a
:class:`Measurement` with a status and a reason and ``median_s = inf``; it never unwinds the loop
and never reaches the store as a choice.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from uhop import backends as bk
from uhop import metrics
from uhop.backends.base import Backend, Candidate, Kernel
from uhop.config import settings
from uhop.errors import NoCandidateError
from uhop.measure.bench import Timing, benchmark
from uhop.measure.validate import ValidationSet, check_kernel
from uhop.problem import Problem, hardware_fingerprint
from uhop.store import Entry, open_store


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
        )  # fmt: skip


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

    def rate(self, m: Measurement) -> tuple[float | None, float | None]:
        """(GFLOP/s, GB/s) of a measurement."""
        if not m.ok or not math.isfinite(m.median_s) or m.median_s <= 0:
            return None, None
        return self.problem.flops() / m.median_s / 1e9, self.problem.bytes() / m.median_s / 1e9


ProgressFn = Callable[[int, int, Measurement], None]

#: ``fast`` policy: which kind of backend to trust first without timing. Dense linear algebra goes
#: to the vendor library; memory-bound chains and row ops go to generated fused kernels.
_VENDOR_FIRST = {"matmul", "conv2d", "attention"}


def content_hash(candidate: Candidate, key: str, backend: Backend) -> str:
    """Hash of everything that determines the compiled kernel: candidate, problem key (op, shape
    class, dtype, params, layout, device), the backend's source, and the hardware fingerprint."""
    h = hashlib.sha256()
    h.update(repr((candidate.backend, candidate.template, candidate.config)).encode())
    h.update(key.encode())
    modules = [inspect.getmodule(type(backend))]
    modules += [importlib.import_module(m) for m in getattr(backend, "source_modules", ())]
    for mod in modules:  # the backend's code and the kernel modules it generates from
        try:
            h.update(inspect.getsource(mod).encode())  # type: ignore[arg-type]
        except (OSError, TypeError):
            h.update(type(backend).__qualname__.encode())
    file_hash = getattr(backend, "kernel_sha256", None)
    if file_hash is not None:  # user kernel files: the exact bytes of the file
        h.update(str(file_hash(candidate)).encode())
    return h.hexdigest()


def _interleave(per_backend: Sequence[Sequence[Candidate]]) -> list[Candidate]:
    """Round-robin across backends so a short budget still covers each backend's best guess."""
    out = []
    for group in itertools.zip_longest(*per_backend):
        out.extend(c for c in group if c is not None)
    return out


def _fast_order(problem: Problem, usable: list[Backend], per_backend: list[list[Candidate]]) -> list[Candidate]:
    vendor_first = problem.op in _VENDOR_FIRST
    order = sorted(range(len(usable)), key=lambda i: (usable[i].vendor != vendor_first, i))
    heuristic = [c for i in order for c in per_backend[i]]
    try:  # a trained cost model reorders by predicted latency; without one the heuristic stands
        from uhop.perf.model import rank

        return [c for c, _ in rank(problem, heuristic)]
    except ImportError:
        return heuristic


@metrics.observe_evaluation
def evaluate(
    candidate: Candidate,
    backend: Backend,
    problem: Problem,
    vset: ValidationSet,
    *,
    time_it: bool = True,
    cutoff_s: float = math.inf,
) -> tuple[Measurement, Kernel | None]:
    """Compile, validate and (optionally) time one candidate. Never raises for candidate faults."""
    try:
        kernel = backend.compile(candidate, problem)
    except Exception as exc:
        return Measurement(candidate, "compile-error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]), None
    sync = (lambda: backend.synchronize(problem.device)) if problem.device != "cpu" else None
    verdict = check_kernel(kernel, vset, backend.array, problem.device, sync)
    if not verdict.ok:
        return Measurement(candidate, verdict.status, verdict.reason, max_err=verdict.max_err), None
    if not time_it:
        return Measurement(candidate, "ok", "chosen without timing (policy=fast)", max_err=verdict.max_err), kernel
    s = settings()
    arg_sets = [vset.native_inputs(t, backend.array, problem.device) for t in vset.trials]
    try:
        timing = benchmark(
            kernel, arg_sets, sync=sync, repeat=s.bench_repeat, min_time_s=s.bench_min_s, cutoff_s=cutoff_s,
            cuda_events=problem.device.startswith("cuda") and backend.array == "torch",
        )
    except Exception as exc:  # a kernel that validated but fails when timed is still contained
        return Measurement(candidate, "crash", f"while timing: {type(exc).__name__}: {exc}"[:300]), None
    # Re-check an output produced after timing: a kernel must not turn wrong once warmed up.
    again = check_kernel(kernel, _single(vset), backend.array, problem.device, sync)
    if not again.ok:
        return Measurement(candidate, again.status, "after timing: " + again.reason, timing), None
    return Measurement(candidate, "ok", "", timing, verdict.max_err), kernel


def _trials_for(problem: Problem, wanted: int) -> int:
    """Fresh draws to validate on: as configured, but two for problems whose inputs pass 32M
    elements (each draw costs a float64 reference on the host, seconds at that size)."""
    elements = sum(math.prod(s) for s in problem.spec.shapes_from_dims(problem.dim, problem.param, problem.arity))
    return min(wanted, 2) if elements > (1 << 25) else wanted


def _expected_s(took: Mapping[str, list[float]], backend: Backend) -> float:
    """How long the next evaluation on ``backend`` may take: the slowest of its last three (a
    JIT compile varies with the config; starting one that overruns costs the whole budget's
    promise), or before its first the backend's own estimate (``Backend.eval_s``)."""
    recent = took.get(backend.name, [])[-3:]
    return max(recent) if recent else backend.eval_s


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
    if policy not in ("tune", "fast"):
        raise ValueError(f"policy must be 'tune' or 'fast', got {policy!r}")
    store = store or open_store()
    if strategy is not None or executor is not None or resume is not None:
        from uhop.tune.search import search

        return search(
            problem, store=store, budget_s=budget_s, backends=tuple(backends) or s.backends, progress=progress,
            strategy=strategy or "exhaustive", max_evals=max_evals, objectives=tuple(objectives), weights=weights,
            executor=executor or "local", workers=workers, address=address, seed=seed, patience=patience,
            priority=priority, resume=resume, queue_url=queue_url,
        )  # fmt: skip
    budget = s.tune_budget_s if budget_s is None else budget_s
    key = problem.key(s.shape_buckets)
    usable = bk.for_problem(problem, tuple(backends) or s.backends)
    if not usable:
        reasons = "; ".join(f"{b.name}: {b.availability[1]}" for b in bk.all_backends())
        raise NoCandidateError(f"no available backend supports {problem.describe()} ({reasons})")
    isolated = {b.name for b in usable if (s.isolates(problem.device, b) if isolate is None else isolate)}
    iso = None
    if isolated:
        from uhop.tune.isolated import evaluator

        iso = evaluator(problem.device)
        iso.start()  # its imports overlap the candidate enumeration below
    per_backend: list[list[Candidate]] = []
    for b in usable:
        try:
            per_backend.append(list(b.candidates(problem)))
        except Exception as exc:  # a backend failing to enumerate must not stop the others
            per_backend.append([])
            progress and progress(0, 0, Measurement(Candidate(b.name, "<candidates>"), "crash", str(exc)))
    by_name = {b.name: b for b in usable}
    order = _fast_order(problem, usable, per_backend) if policy == "fast" else _interleave(per_backend)

    trials = _trials_for(problem, s.validation_trials)
    vset: ValidationSet | None = None  # built on first in-process use (the worker builds its own)
    measurements: list[Measurement] = []
    best: Measurement | None = None
    best_kernel: Kernel | None = None
    deadline = t_start + budget
    took: dict[str, list[float]] = {}  # seconds per evaluation, by backend
    for i, cand in enumerate(order):
        spent = time.monotonic() + _expected_s(took, by_name[cand.backend]) > deadline or (max_evals is not None and i >= max_evals)
        if best is not None and (policy == "fast" or spent):
            measurements.extend(Measurement(c, "skipped", f"policy={policy}" if policy == "fast" else "budget spent") for c in order[i:])
            break
        cutoff = 3 * best.median_s if best is not None and math.isfinite(best.median_s) else math.inf
        t0 = time.monotonic()
        setup = 0.0
        if iso is not None and cand.backend in isolated:
            m, kernel = iso.evaluate(cand, problem, trials=trials, time_it=policy == "tune", cutoff_s=cutoff), None
            setup = iso.last_setup_s
        else:
            if vset is None:
                vset = ValidationSet(problem, trials=trials)
                setup = time.monotonic() - t0
            m, kernel = evaluate(cand, by_name[cand.backend], problem, vset, time_it=policy == "tune", cutoff_s=cutoff)
        took.setdefault(cand.backend, []).append(time.monotonic() - t0 - setup)
        measurements.append(m)
        if m.ok and (best is None or m.median_s < best.median_s):
            best, best_kernel = m, kernel
        if progress:
            progress(i + 1, len(order), m)

    if iso is not None:
        iso.release()
        if best is not None and best_kernel is None:  # validated in the worker; the same build serves here
            best_kernel = by_name[best.candidate.backend].compile(best.candidate, problem)
    _record_telemetry(problem, measurements, store, key)
    entry = None
    chosen_backend = by_name[best.candidate.backend] if best is not None else None
    if best is not None:
        flops, nbytes = problem.flops(), problem.bytes()
        med = best.median_s if math.isfinite(best.median_s) else None
        entry = store.record(
            key, problem.to_json(), best.candidate.to_json(), [m.to_json() for m in measurements],
            median_s=med, gflops=flops / med / 1e9 if med else None, gbps=nbytes / med / 1e9 if med else None,
            policy=policy, fingerprint=hardware_fingerprint(problem.device),
            content_hash=content_hash(best.candidate, key, chosen_backend),  # type: ignore[arg-type]
        )  # fmt: skip
    else:
        store.record(
            key, problem.to_json(), None, [m.to_json() for m in measurements], median_s=None, gflops=None,
            gbps=None, policy=policy, fingerprint=hardware_fingerprint(problem.device),
        )  # fmt: skip
        reasons = "; ".join(f"{m.candidate.id}: {m.status} ({m.reason})" for m in measurements[:8])
        raise NoCandidateError(f"no valid candidate for {problem.describe()}: {reasons}")
    return TuneResult(problem, key, policy, measurements, best, entry, best_kernel, chosen_backend)
