"""Prometheus metrics and OpenTelemetry spans for every process that uses UHOP.

Off by default: every recording function below is a global check and a return while off, and
the dispatch hit path is not touched at all (:func:`timed` returns the kernel unchanged). On when

- ``UHOP_METRICS_PORT`` is set when UHOP is imported (an HTTP exporter is started on that port,
  on ``UHOP_METRICS_ADDR``, default ``127.0.0.1``; a process that finds the port taken, such as a
  spawned tuning worker, records without exporting), or
- :func:`start_http_server` is called, or :func:`enable` (to record into a registry that the
  application already exports), or
- ``PROMETHEUS_MULTIPROC_DIR`` is set: prometheus-client's multiprocess mode, for worker pools;
  every process writes its samples there and the one exporter sums them.

Dispatch latency is sampled: one call in ``UHOP_METRICS_SAMPLE_EVERY`` (default 64) is timed into
``uhop_dispatch_latency_seconds``; the others pay one counter decrement (measured in
``docs/observability.md``). Metric names and labels are documented there as well.

Spans (:func:`traced`) use the OpenTelemetry API when it is installed (``pip install
'uhop[observe]'``) and are free without it; with the API but no SDK configured they are no-ops too.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from uhop import config

log = logging.getLogger("uhop.metrics")

#: statuses of a candidate that failed validation (the rest of the failures are build/run faults)
VALIDATION_FAILURES = frozenset({"wrong-result", "bad-output", "input-mutated", "stale-output"})
#: histogram buckets for the dispatched call, seconds (1 µs .. 10 s)
DISPATCH_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
                    2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)  # fmt: skip
TUNING_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _Metrics:
    """The metric objects, created once per process on :func:`enable`."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        kw = {"registry": registry}
        self.selections = Counter("uhop_kernel_selections", "Kernels selected for a problem (store hit or tuned).",
                                  ["op", "backend", "policy"], **kw)  # fmt: skip
        self.store_lookups = Counter("uhop_store_lookups", "Kernel store lookups on a dispatch miss, by result.",
                                     ["op", "result"], **kw)  # fmt: skip
        self.tuning_runs = Counter("uhop_tuning_runs", "Tuning runs, by outcome (ok or failed).",
                                   ["op", "policy", "outcome"], **kw)  # fmt: skip
        self.tuning_seconds = Histogram("uhop_tuning_duration_seconds", "Wall time of one tuning run.",
                                        ["op"], buckets=TUNING_BUCKETS, **kw)  # fmt: skip
        self.candidates = Counter("uhop_candidates", "Candidates evaluated, by status (ok = measured; "
                                  "any other status is a rejection category).", ["op", "backend", "status"], **kw)
        self.validation_failures = Counter("uhop_validation_failures", "Candidates that ran but failed "
                                           "validation against the float64 reference.", ["op", "status"], **kw)
        self.sandbox_rejections = Counter("uhop_sandbox_rejections", "Untrusted kernel files rejected by the "
                                          "sandbox check, by category.", ["category"], **kw)
        self.dispatch = Histogram("uhop_dispatch_latency_seconds", "Dispatched kernel call (kernel plus array "
                                  "adapter), sampled: one call in UHOP_METRICS_SAMPLE_EVERY.", ["op"],
                                  buckets=DISPATCH_BUCKETS, **kw)  # fmt: skip
        # every process reports the same shared queue: the freshest live value, not a sum
        self.queue_depth = Gauge("uhop_tuning_queue_depth", "Pending jobs in the persistent tuning queue.",
                                 multiprocess_mode="livemax", **kw)  # fmt: skip
        self.ai_attempts = Counter("uhop_ai_generation_attempts", "AI kernel generation attempts, by outcome "
                                   "(ok, or the rejection category).", ["op", "outcome"], **kw)  # fmt: skip
        self.ai_promotions = Counter("uhop_ai_promotions", "AI-generated kernels promoted into the store (faster).",
                                     ["op"], **kw)  # fmt: skip


_m: _Metrics | None = None
_registry: Any = None
_sample_every = 64


def enabled() -> bool:
    return _m is not None


def enable(registry: Any = None) -> None:
    """Start recording (idempotent). ``registry``: a ``prometheus_client.CollectorRegistry`` to
    register into (default: the process-wide ``REGISTRY``, or per-process files in multiprocess mode).
    Raises ImportError naming the extra when prometheus-client is missing."""
    global _m, _registry, _sample_every
    if _m is not None:
        return
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(f"metrics need prometheus-client (pip install 'uhop[observe]'): {exc}") from None
    _sample_every = config.read("metrics_sample_every")
    _registry = registry or prometheus_client.REGISTRY
    _m = _Metrics(_registry)


def export_registry() -> Any:
    """The registry an exporter should serve: in multiprocess mode a fresh one that sums every
    process's files (prometheus-client's documented pattern), else the one recorded into."""
    from prometheus_client import CollectorRegistry, multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return reg
    return _registry


def start_http_server(port: int | None = None, addr: str | None = None) -> int:
    """Enable metrics and serve them at ``http://ADDR:PORT/metrics``; returns the bound port
    (``port=0`` picks a free one). Defaults: ``UHOP_METRICS_PORT``, ``UHOP_METRICS_ADDR`` or
    127.0.0.1. Sets ``UHOP_METRICS_PORT`` so spawned worker processes record too."""
    import prometheus_client

    enable()
    port = (config.read("metrics_port") or 0) if port is None else port
    addr = addr or config.read("metrics_addr")
    server, _thread = prometheus_client.start_http_server(port, addr=addr, registry=export_registry())
    bound = int(server.server_address[1])
    os.environ["UHOP_METRICS_PORT"] = str(bound)
    return bound


def _from_env() -> None:
    try:
        port = config.read("metrics_port")  # at import, alone: it may have been set for this worker
        if port is not None:
            try:
                start_http_server(port)
            except OSError as exc:  # port taken: a worker of a process that exports already
                log.debug("metrics exporter not started on port %s (%s); recording only", port, exc)
        elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            enable()
    except ImportError as exc:
        log.warning("%s; metrics stay off", exc)


# ---- recording (each a no-op while off) ---------------------------------------------------------
def selection(op: str, backend: str, policy: str) -> None:
    if _m is not None:
        _m.selections.labels(op, backend, policy).inc()


def store_lookup(op: str, hit: bool) -> None:
    if _m is not None:
        _m.store_lookups.labels(op, "hit" if hit else "miss").inc()


def candidate(op: str, backend: str, status: str) -> None:
    if _m is not None:
        _m.candidates.labels(op, backend, status).inc()
        if status in VALIDATION_FAILURES:
            _m.validation_failures.labels(op, status).inc()


def tuning_run(op: str, policy: str, seconds: float, measurements: Iterable[Any] = (), ok: bool = True) -> None:
    """One tuning run of ``seconds`` wall time and its measurements (``Measurement`` objects or
    their JSON; skipped candidates were never run and are not counted)."""
    if _m is None:
        return
    _m.tuning_runs.labels(op, policy, "ok" if ok else "failed").inc()
    _m.tuning_seconds.labels(op).observe(seconds)
    for m in measurements:
        status = m["status"] if isinstance(m, dict) else m.status
        if status != "skipped":
            cand = m["candidate"] if isinstance(m, dict) else m.candidate
            candidate(op, cand["backend"] if isinstance(cand, dict) else cand.backend, status)


def sandbox_rejection(category: str) -> None:
    if _m is not None:
        _m.sandbox_rejections.labels(category).inc()


def queue_depth(n: int) -> None:
    if _m is not None:
        _m.queue_depth.set(n)


def queue_depth_of(queue: Any) -> None:
    """Set the queue-depth gauge from a :class:`~uhop.tune.jobs.JobQueue` (one count query, made
    only while metrics are on)."""
    if _m is not None:
        _m.queue_depth.set(queue.counts().get("pending", 0))


def ai_attempt(op: str, outcome: str) -> None:
    if _m is not None:
        _m.ai_attempts.labels(op, outcome).inc()


def ai_promotion(op: str) -> None:
    if _m is not None:
        _m.ai_promotions.labels(op).inc()


def dispatch_sample(op: str, seconds: float) -> None:
    if _m is not None:
        _m.dispatch.labels(op).observe(seconds)


def timed(op: str, kernel: Callable[..., Any]) -> Callable[..., Any]:
    """``kernel`` itself while metrics are off (the hit path pays nothing); else a wrapper that
    times one call in ``UHOP_METRICS_SAMPLE_EVERY`` into the dispatch latency histogram."""
    if _m is None:
        return kernel
    child = _m.dispatch.labels(op)
    every = _sample_every
    left = [every]
    clock = time.perf_counter

    def sampled(*args: Any) -> Any:
        left[0] -= 1  # racy under threads by design: a lost decrement only shifts the next sample
        if left[0] > 0:
            return kernel(*args)
        left[0] = every
        t0 = clock()
        out = kernel(*args)
        child.observe(clock() - t0)
        return out

    sampled.__wrapped__ = kernel  # type: ignore[attr-defined]
    return sampled


# ---- decorators for the tuner and the sandbox (one line each at the definition) ------------------
def observe_tuning(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``tune()``: a span ``uhop.tune`` and, when metrics are on, the run, its duration and
    every candidate's status (from the returned ``TuneResult``; a run that raises counts as failed).
    OpenTelemetry is imported on the first run, not with UHOP."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        span = _span_factory()
        t0 = time.monotonic()
        with span("uhop.tune", {"uhop.op": str(kwargs.get("op") or (args[0] if args else ""))}) as sp:
            try:
                res = fn(*args, **kwargs)
            except Exception:
                if _m is not None:
                    p = kwargs.get("problem")
                    op = getattr(p, "op", None) or kwargs.get("op") or (args[0] if args else "?")
                    tuning_run(str(op), str(kwargs.get("policy") or "tune"), time.monotonic() - t0, ok=False)
                raise
            if sp is not None:
                sp.set_attribute("uhop.op", res.problem.op)
                sp.set_attribute("uhop.key", res.key)
                sp.set_attribute("uhop.candidates", len(res.measurements))
                if res.best is not None:
                    sp.set_attribute("uhop.chosen", res.best.candidate.id)
            tuning_run(res.problem.op, res.policy, time.monotonic() - t0, res.measurements)
            return res

    return wrapper


def observe_evaluation(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the tuner's ``evaluate(candidate, backend, problem, ...)`` in a span
    ``uhop.evaluate`` (status and median time as attributes); without OpenTelemetry, one cached
    check and the call."""

    @functools.wraps(fn)
    def wrapper(cand: Any, backend: Any, problem: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = _otel_tracer()
        if tracer is None:
            return fn(cand, backend, problem, *args, **kwargs)
        with tracer.start_as_current_span("uhop.evaluate", attributes={"uhop.candidate": cand.id, "uhop.op": problem.op}) as sp:
            m, kernel = fn(cand, backend, problem, *args, **kwargs)
            sp.set_attribute("uhop.status", m.status)
            sp.set_attribute("uhop.median_s", float(m.median_s))
            return m, kernel

    return wrapper


def observe_sandbox(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the sandbox's ``check``: count each rejection (a ``CheckResult`` not ok) by category."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        res = fn(*args, **kwargs)
        if _m is not None and not res.ok:
            sandbox_rejection(res.category)
        return res

    return wrapper


# ---- OpenTelemetry ------------------------------------------------------------------------------
@functools.cache
def _otel_tracer() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    from uhop import __version__

    return trace.get_tracer("uhop", __version__)


class _NoSpan:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _span_factory() -> Callable[[str, dict[str, Any]], Any]:
    tracer = _otel_tracer()
    if tracer is None:
        return lambda name, attrs: _NoSpan()
    return lambda name, attrs: tracer.start_as_current_span(name, attributes=attrs)


def traced(name: str, **attrs: Any) -> Any:
    """A context manager: an OpenTelemetry span named ``name`` (yields it), or a no-op yielding None."""
    return _span_factory()(name, attrs)


_from_env()
