"""The generated kernel's way into the store, and back out.

* :func:`sandbox_check` is the one adapter to the sandbox (``uhop.sandbox.check``): generated
  code is untrusted, goes only through the kernel-file format and the hardened validator, and is
  never imported into this process.
* :func:`current_best` reads what a generated kernel must beat: the store entry for the key and
  its measured spread.
* :func:`should_promote` is the rule, the store's own (:func:`uhop.store.replaces`): valid, and a
  median per-call time below the current best's by more than the measured spread of either
  (the best's stored (p90-p10)/median, the candidate's (median-min)/median as served: through
  the sandboxed worker, timed in this process like every tuner candidate, :func:`served_timing`),
  at least ``min_gain``; the spread counts up to ``uhop.store.MAX_SPREAD``.
  The store applies the same rule again inside its write transaction, so a concurrent faster
  writer still wins.
* :func:`promote` registers the file for the ``user`` backend (content-hashed, like
  ``uhop kernel add``) and records it as the key's entry; it is then served like any other entry.
* :func:`quarantine` takes a promoted kernel out (registry file moved aside, entry dropped) and
  restores the entry it replaced.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uhop.ai.attempts import AttemptStore
from uhop.ai.prompt import Best
from uhop.problem import Problem


@dataclass(frozen=True)
class Verdict:
    """The sandbox's judgement of one kernel file: ``category`` ``ok`` or a rejection category
    (:data:`uhop.sandbox.CATEGORIES`); ``median_s``/``min_s`` per call at the target problem as
    dispatch will serve it (the sandboxed worker's round trip included; parent clock, seconds;
    inf when rejected); ``kernel_s`` the kernel's own time inside the sandbox."""

    ok: bool
    category: str
    reason: str = ""
    median_s: float = math.inf
    min_s: float = math.inf
    max_err: float = math.nan
    sha256: str = ""
    check_s: float = 0.0
    kernel_s: float = math.inf

    @property
    def spread(self) -> float:
        """(median - min) / median: the candidate's own timing noise, a lower estimate of p90-p10."""
        if not (math.isfinite(self.median_s) and self.median_s > 0):
            return 0.0
        return max(0.0, (self.median_s - self.min_s) / self.median_s)


def sandbox_check(path: Path, problem: Problem, *, wall_s: float = 30.0) -> Verdict:
    """Check a kernel file at a small odd validation shape of its op plus the target problem,
    then time it at the target. The only call into :mod:`uhop.sandbox` (its API may grow; keep
    the coupling here). Never raises for a candidate fault."""
    import time

    from uhop.sandbox.check import SHAPES, check, problems_for
    from uhop.sandbox.kernelfile import KernelFileError, load
    from uhop.sandbox.worker import Limits

    t0 = time.monotonic()
    try:
        kf = load(path)
        if kf.op != problem.op:
            raise KernelFileError("bad-file", f"the file declares OP = {kf.op!r}, expected {problem.op!r}")
        small = problems_for(kf, problem.dtype, problem.param, SHAPES[problem.op][:1])
        res = check(kf, [*small, problem], limits=Limits(wall_s=wall_s, cpu_s=max(1, math.ceil(2 * wall_s))))
    except KernelFileError as exc:
        return Verdict(False, exc.category, exc.reason, check_s=time.monotonic() - t0)
    except Exception as exc:  # e.g. problem/params the file cannot take
        return Verdict(False, "bad-file", f"{type(exc).__name__}: {exc}"[:300], check_s=time.monotonic() - t0)
    if not res.ok:
        return Verdict(False, res.category, res.reason, sha256=res.sha256, check_s=time.monotonic() - t0)
    try:
        served = served_timing(kf, problem)
    except Exception as exc:  # valid in the check, failing as served: not a kernel to promote
        return Verdict(False, "crash", f"as served: {exc}"[:300], sha256=res.sha256, check_s=time.monotonic() - t0)
    return Verdict(True, res.category, res.reason, served.median_s, served.min_s, res.max_err, res.sha256,
                   time.monotonic() - t0, res.median_s)  # fmt: skip


def served_timing(kf: Any, problem: Problem) -> Any:
    """Per-call time of ``kf`` as dispatch would serve it: the ``user`` backend's sandboxed worker
    with the inputs and the output crossing the process boundary (and the host, for CUDA
    callers), timed in this process as the tuner times every candidate. The sandbox's own figure
    is the kernel alone: a numpy softmax of 256 x 4096 took 1.8 ms there and 18.5 ms per call as
    served (2-core VM), so a generated kernel promoted on it replaced faster in-process entries."""
    from uhop.backends.user import SandboxedKernel, UserKernelBackend
    from uhop.config import settings
    from uhop.measure.bench import benchmark
    from uhop.measure.validate import ValidationSet
    from uhop.tune.tuner import as_called

    backend = UserKernelBackend()
    kernel = SandboxedKernel(kf)
    try:
        vset = ValidationSet(problem, trials=2, references=False)  # inputs only: nothing is checked here
        called, arg_sets = as_called(kernel, backend, problem, vset)
        s = settings()
        sync = None
        if problem.device != "cpu":
            from uhop import backends as bk

            sync = lambda: bk.get("torch").synchronize(problem.device)  # noqa: E731
        return benchmark(called, arg_sets, sync=sync, repeat=s.bench_repeat, min_time_s=s.bench_min_s,
                         max_time_s=30.0)  # fmt: skip
    finally:
        kernel.close()


def current_best(store: Any, key: str) -> tuple[Any, Best | None]:
    """The store entry for ``key`` and what a generated kernel must beat (``None`` when the
    entry is missing or unmeasured). The spread is the entry's stored one, else that of its
    latest measurement."""
    entry = store.get(key)
    if entry is None or entry.median_s is None:
        return entry, None
    spread = getattr(entry, "spread", None)
    for m in [] if spread is not None else reversed(store.measurements(key)):
        if m.get("status") == "ok" and m.get("candidate") == entry.candidate and m.get("spread") is not None:
            spread = float(m["spread"])
            break
    spread = spread or 0.0
    cand = entry.candidate
    label = f"{cand.get('backend')}/{cand.get('template')}" + (
        f"{cand.get('config')}" if cand.get("config") else ""
    )
    code = None
    if cand.get("backend") == "user":
        from uhop.backends.user import kernels_dir

        f = kernels_dir() / str((cand.get("config") or {}).get("file", ""))
        code = f.read_text() if f.is_file() else None
    return entry, Best(label, float(entry.median_s), spread, code)


def should_promote(v: Verdict, best: Best | None, min_gain: float) -> tuple[bool, str]:
    """Promote a valid kernel that beats ``best`` by more than the measured spread of either
    (and ``min_gain``): the store's conflict rule, so the store accepts what is decided here."""
    from uhop.store import MAX_SPREAD, MIN_GAIN

    if not v.ok:
        return False, f"rejected: {v.category}"
    if best is None:
        return True, "no measured kernel for this problem"
    margin = max(min_gain, min(MAX_SPREAD, max(MIN_GAIN, best.spread, v.spread)))
    ratio = best.median_s / v.median_s
    if v.median_s < best.median_s * (1 - margin):
        return True, f"{ratio:.2f}x faster than {best.label} (margin {margin:.1%})"
    return False, f"not faster than {best.label} by more than {margin:.1%} ({ratio:.2f}x)"


def promote(store: Any, attempts: AttemptStore, problem: Problem, key: str, path: Path, v: Verdict) -> Any:
    """Register ``path`` for the ``user`` backend and record it as ``key``'s entry. Returns the
    entry in force afterwards (another writer's, if theirs is faster) and the promotion id, or
    ``None`` for the id when the store kept another entry."""
    from uhop.backends.base import Candidate
    from uhop.backends.user import UserKernelBackend, add_kernel
    from uhop.problem import hardware_fingerprint
    from uhop.tune.tuner import content_hash

    previous = store.get(key)  # what this promotion replaces, read just before it does
    dest = add_kernel(path)
    cand = Candidate.of("user", v.sha256[:16], file=dest.name)
    med = v.median_s
    m = {"candidate": cand.to_json(), "status": "ok", "reason": "promoted by uhop ai", "median_s": med,
         "spread": v.spread, "n": None, "max_err": v.max_err}  # fmt: skip
    entry = store.record(
        key, problem.to_json(), cand.to_json(), [m], median_s=med, gflops=problem.flops() / med / 1e9,
        gbps=problem.bytes() / med / 1e9, policy="tune", fingerprint=hardware_fingerprint(problem.device),
        content_hash=content_hash(cand, key, UserKernelBackend()),
        spread=v.spread,
    )  # fmt: skip
    if entry is None or entry.candidate != cand.to_json():
        return entry, None
    pid = attempts.add_promotion(
        key, problem.op, v.sha256, dest.name, med, None if previous is None else previous.to_json()
    )
    _forget_resolved()
    return entry, pid


def quarantine(
    store: Any, attempts: AttemptStore, key: str, reason: str = "quarantined by hand"
) -> dict[str, Any]:
    """Take the newest active promotion for ``key`` out of service and restore the entry it
    replaced. The kernel file moves to ``$UHOP_HOME/ai/quarantine/`` (so the ``user`` backend no
    longer offers it). Raises ``LookupError`` when ``key`` has no active promotion."""
    from uhop.backends.user import kernels_dir
    from uhop.config import settings

    active = attempts.promotions(key, active_only=True)
    if not active:
        raise LookupError(f"KEY {key!r} has no active AI promotion (uhop ai report lists them)")
    p = active[-1]
    src = kernels_dir() / p["file"]
    qdir = settings().home / "ai" / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    if src.exists():
        shutil.move(str(src), qdir / p["file"])
    entry = store.get(key)
    restored = None
    if entry is not None and entry.candidate.get("config", {}).get("file") == p["file"]:
        # drop, then re-insert: the previous (slower) entry would lose a "faster wins" conflict rule
        _drop_entry(store, key)
        prev = p["previous"]
        if prev is not None:
            restored = store.record(
                key, prev["problem"], prev["candidate"], [], median_s=prev.get("median_s"), gflops=prev.get("gflops"),
                gbps=prev.get("gbps"), policy=prev.get("policy", "tune"), fingerprint=prev.get("fingerprint", {}),
                content_hash=prev.get("content_hash", ""),
                spread=prev.get("spread"),
            )  # fmt: skip
    attempts.mark_quarantined(p["id"], reason)
    _forget_resolved()
    return {"key": key, "quarantined": p["sha256"], "file": str(qdir / p["file"]), "reason": reason,
            "restored": None if restored is None else restored.candidate}  # fmt: skip


def _drop_entry(store: Any, key: str) -> None:
    """Drop ``key``'s entry and keep its measurements. The SQLite store has ``invalidate``; the
    PostgreSQL store does not yet (a store capability for the lead: a quarantine method), so the
    same statement runs here on its connection."""
    if hasattr(store, "invalidate"):
        store.invalidate(key)
        return
    with store._tx() as cur:
        cur.execute("DELETE FROM kernels WHERE key=%s", (key,))


def _forget_resolved() -> None:
    """This process's dispatch cache must not keep serving a replaced kernel."""
    try:
        from uhop.dispatch import clear_process_cache

        clear_process_cache()
    except Exception:  # the dispatch module is being rewritten; never fail a promotion on it
        pass
