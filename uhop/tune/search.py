"""Search runs: a strategy over the union of the backends' search spaces, every candidate a job in
the persistent queue, measured by an executor, the choice written to the kernel store.

    problem -> SearchSpace (space_for_problem) -> Strategy.ask -> TuningJob (queue)
            -> Executor (inline | local processes | Ray) -> run_job -> Measurement (queue row)
            -> Strategy.tell ... -> choose (weights) / Pareto front -> Store.record

``run_job`` is what a worker runs for one job, in whatever process or machine: plain data in, plain
data out, never raising for a candidate's fault.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from uhop import backends as bk
from uhop import metrics
from uhop.backends.base import Candidate
from uhop.config import settings
from uhop.errors import NoCandidateError
from uhop.problem import Problem, hardware_fingerprint
from uhop.tune.tuner import Measurement, ProgressFn, TuneResult, _record_telemetry, content_hash, evaluate

log = logging.getLogger("uhop.tune")

_VSETS: OrderedDict[Problem, Any] = OrderedDict()


def _validation_set(problem: Problem) -> Any:
    from uhop.measure.validate import ValidationSet

    if problem not in _VSETS:
        _VSETS[problem] = ValidationSet(problem, trials=settings().validation_trials)
        while len(_VSETS) > 8:
            _VSETS.popitem(last=False)
    return _VSETS[problem]


def worker_settings() -> dict[str, Any]:
    """The settings a worker process must share with the tuning process (passed explicitly: a
    worker on another machine or a spawned process does not see ``config.override``)."""
    s = settings()
    return {"home": str(s.home), "store_url": s.store_url, "bench_min_s": s.bench_min_s,
            "bench_repeat": s.bench_repeat, "validation_trials": s.validation_trials,
            "shape_buckets": s.shape_buckets}  # fmt: skip


def run_job(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Compile, validate and measure one job's candidate; returns ``{"measurement": ...}`` plus how
    energy and memory were measured. Candidate faults are results, never exceptions."""
    from uhop.tune.jobs import worker_name
    from uhop.tune.objectives import energy_per_call, peak_memory

    params = spec.get("params", {})
    out: dict[str, Any] = {"worker": worker_name()}
    try:
        problem = Problem.from_json(spec["problem"])
        backend = bk.get(spec["backend"])
        cand = Candidate.of(spec["backend"], params.get("template", ""), **params.get("config", {}))
    except Exception as exc:
        m = Measurement(Candidate(str(spec.get("backend")), str(params.get("template", ""))), "crash", f"bad job: {exc}"[:300])
        return {**out, "measurement": m.to_json()}
    if not backend.available:
        m = Measurement(cand, "compile-error", f"backend unavailable here: {backend.availability[1]}")
        return {**out, "measurement": m.to_json()}
    try:
        vset = _validation_set(problem)
        m, kernel = evaluate(cand, backend, problem, vset, cutoff_s=float(params.get("cutoff_s", math.inf)))
    except Exception as exc:  # evaluate contains candidate faults; this is a fault of ours, still a value
        m, kernel = Measurement(cand, "crash", f"{type(exc).__name__}: {exc}"[:300]), None
    objectives = params.get("objectives", ["latency"])
    if m.ok and kernel is not None and ("energy" in objectives or "memory" in objectives):
        args = vset.native_inputs(vset.trials[0], backend.array, problem.device)
        sync = (lambda: backend.synchronize(problem.device)) if problem.device != "cpu" else (lambda: None)

        def call() -> Any:
            return kernel(*args)

        energy, mem = math.nan, math.nan
        try:
            if "energy" in objectives:
                energy, out["energy_method"] = energy_per_call(call, sync, problem.device, m.median_s)
            if "memory" in objectives:
                mem, out["memory_method"] = peak_memory(call, sync, problem.device)
        except Exception as exc:
            m = dataclasses.replace(m, status="crash", reason=f"while measuring energy/memory: {exc}"[:300])
        m = dataclasses.replace(m, energy_j=energy, mem_bytes=mem)
    return {**out, "measurement": m.to_json()}


def values_of(m: Measurement, objectives: Sequence[str]) -> tuple[float, ...]:
    """Objective tuple of a measurement (all ``inf`` for a failed candidate)."""
    if not m.ok:
        return (math.inf,) * len(objectives)
    pick = {"latency": m.median_s, "energy": m.energy_j, "memory": m.mem_bytes}
    return tuple(pick[o] if pick[o] == pick[o] else math.inf for o in objectives)


def problem_of_run(run_id: str, queue_url: str | None = None) -> Problem:
    from uhop.tune.jobs import open_queue

    run = open_queue(queue_url).run(run_id)
    if run is None:
        raise ValueError(f"resume: no tuning run {run_id!r} in the job queue")
    return Problem.from_json(run["spec"]["problem"])


def _check(objectives: Sequence[str], weights: Sequence[float] | None) -> None:
    from uhop.tune.strategies import OBJECTIVES

    if not objectives or len(set(objectives)) != len(objectives) or any(o not in OBJECTIVES for o in objectives):
        raise ValueError(f"objectives must be distinct names among {', '.join(OBJECTIVES)}, got {list(objectives)}")
    if weights is not None and len(weights) != len(objectives):
        raise ValueError(f"weights: {len(weights)} given for {len(objectives)} objectives")


def search(
    problem: Problem,
    *,
    store: Any,
    budget_s: float | None,
    backends: Sequence[str],
    progress: ProgressFn | None,
    strategy: str,
    max_evals: int | None,
    objectives: tuple[str, ...],
    weights: Sequence[float] | None,
    executor: str,
    workers: int | None,
    address: str | None,
    seed: int,
    patience: int | None,
    priority: int,
    resume: str | None,
    queue_url: str | None,
) -> TuneResult:
    """A search run (see :func:`uhop.tune.tuner.tune`, which calls this)."""
    from uhop.space import space_for_problem
    from uhop.tune import strategies as S
    from uhop.tune.executors import make_executor
    from uhop.tune.jobs import TuningJob, open_queue

    s = settings()
    queue = open_queue(queue_url)
    if resume is not None:
        run = queue.run(resume)
        if run is None:
            raise ValueError(f"resume: no tuning run {resume!r} in the job queue")
        spec = run["spec"]
        problem = Problem.from_json(spec["problem"])
        strategy, objectives, seed = spec["strategy"], tuple(spec["objectives"]), spec["seed"]
        weights, max_evals, budget_s, patience = spec["weights"], spec["max_evals"], spec["budget_s"], spec["patience"]
        backends, priority = tuple(spec["backends"]), spec["priority"]
        run_id = resume
        queue.requeue_running(run_id)
    else:
        _check(objectives, weights)
        S.get(strategy)  # unknown names and missing optional dependencies fail before any work
        spec = {"problem": problem.to_json(), "strategy": strategy, "objectives": list(objectives), "seed": seed,
                "weights": None if weights is None else list(weights), "max_evals": max_evals, "budget_s": budget_s,
                "patience": patience, "backends": list(backends), "priority": priority}  # fmt: skip
        run_id = queue.create_run(spec)
    if max_evals is None and budget_s is None:
        budget_s = s.tune_budget_s
    usable = bk.for_problem(problem, tuple(backends))
    if not usable:
        reasons = "; ".join(f"{b.name}: {b.availability[1]}" for b in bk.all_backends())
        raise NoCandidateError(f"no available backend supports {problem.describe()} ({reasons})")
    space = space_for_problem(problem, usable)
    extra: dict[str, Any] = {}
    if strategy == "surrogate":  # a trained cost model guides the search when there is one
        try:
            from uhop.perf.model import surrogate_model

            extra["cost_model"] = surrogate_model(problem, space)
        except ImportError:
            pass
    strat = S.make(strategy, space, objectives=objectives, weights=weights, seed=seed, **extra)
    if strategy == "exhaustive" and max_evals and (space.size() or 0) > max_evals:
        log.warning("exhaustive search: the space has %d configs and --budget %d measures only the first %d in "
                    "a fixed order; --strategy random, evolution or surrogate sample the whole space",
                    space.size(), max_evals, max_evals)  # fmt: skip
    budget = S.SearchBudget(max_evals=max_evals, max_seconds=budget_s, patience=patience)
    latency_only = tuple(objectives) == ("latency",)
    best_latency = [math.inf]
    key = problem.key(s.shape_buckets)

    def trial_of(job: Any) -> tuple[dict[str, Any], tuple[float, ...], Measurement]:
        cfg = job.params["space_config"]
        if job.status == "done" and job.result:
            m = Measurement.from_json(job.result["measurement"])
        else:  # lost every attempt (worker crashes, timeouts): a failed candidate, not a lost one
            cand = Candidate.of(job.backend, job.params.get("template", ""), **job.params.get("config", {}))
            m = Measurement(cand, "crash", job.error or job.status)
        return cfg, values_of(m, objectives), m

    total = max_evals or (space.size() or 0)
    ex = make_executor(executor, queue, run_id, settings=worker_settings(), workers=workers, address=address,
                       device=problem.device)  # fmt: skip
    try:
        prior: dict[str, Any] = {}
        if resume is not None:  # finish what was queued, then replay every result into the new search
            unfinished = queue.jobs(run_id=run_id, status=("pending", "running"))
            for _ in ex.run([j.id for j in unfinished]):  # type: ignore[misc]
                pass
            for job in queue.jobs(run_id=run_id, status=("done", "failed")):
                cfg, vals, m = trial_of(job)
                if space.is_valid(cfg):  # a backend that vanished since: its results no longer apply
                    prior[space.config_hash(cfg)] = (cfg, vals, m)

        def evaluate_batch(cfgs: list[dict[str, Any]]):
            jobs = []
            for cfg in cfgs:
                cand = space.candidate(cfg)
                params = {"template": cand.template, "config": cand.cfg, "space_config": cfg, "objectives": list(objectives)}
                if latency_only and math.isfinite(best_latency[0]):
                    params["cutoff_s"] = 3 * best_latency[0]  # stop timing hopeless candidates early
                jobs.append(TuningJob(problem.op, problem.to_json(), cand.backend, params, priority=priority,
                                      run_id=run_id, key=space.config_hash(cfg)))  # fmt: skip
            ids = queue.submit(jobs)
            metrics.queue_depth_of(queue)
            for job in ex.run(ids):
                cfg, vals, m = trial_of(job)
                metrics.queue_depth_of(queue)
                if m.ok:
                    best_latency[0] = min(best_latency[0], m.median_s)
                yield cfg, vals, m

        def on_result(trial: Any, res: Any) -> None:
            if progress:
                progress(len(res.trials), total, trial.extra)

        res = S.run_search(space, strat, evaluate_batch, budget, batch=ex.slots, prior=prior, on_result=on_result)
    except BaseException:
        ex.close()
        raise  # the run stays 'running': `uhop tune --resume RUN_ID` picks it up
    ex.close()

    measurements = [t.extra for t in res.trials]
    best = next((t.extra for t in res.trials if res.best_config is not None and t.config == res.best_config), None)
    if best is not None and not best.ok:
        best = None
    pareto = [t.extra for t in res.pareto]
    fp = hardware_fingerprint(problem.device)
    _record_telemetry(problem, measurements, store, key)
    summary = {"evaluations": res.evaluations, "stopped": res.stopped,
               "best": best.candidate.to_json() if best else None}  # fmt: skip
    if best is None:
        store.record(key, problem.to_json(), None, [m.to_json() for m in measurements], median_s=None, gflops=None,
                     gbps=None, policy="tune", fingerprint=fp)  # fmt: skip
        queue.finish_run(run_id, "failed", summary)
        reasons = "; ".join(f"{m.candidate.id}: {m.status} ({m.reason})" for m in measurements[:8])
        raise NoCandidateError(f"no valid candidate for {problem.describe()} (run {run_id}): {reasons}")
    backend = bk.get(best.candidate.backend)
    med = best.median_s
    entry = store.record(
        key, problem.to_json(), best.candidate.to_json(), [m.to_json() for m in measurements], median_s=med,
        gflops=problem.flops() / med / 1e9, gbps=problem.bytes() / med / 1e9, policy="tune", fingerprint=fp,
        content_hash=content_hash(best.candidate, key, backend),
    )  # fmt: skip
    queue.finish_run(run_id, "done", summary)
    kernel = None
    if backend.trusted:
        try:
            kernel = backend.compile(best.candidate, problem)
        except Exception:  # measured elsewhere (a Ray node); dispatch compiles it again when needed
            kernel = None
    return TuneResult(problem, key, "tune", measurements, best, entry, kernel, backend, run_id=run_id,
                      stopped=res.stopped, pareto=pareto, objectives=tuple(objectives))  # fmt: skip
