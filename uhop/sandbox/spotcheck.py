"""Dispatch-time spot checks for untrusted kernels (kernel files; later, generated kernels).

The sandbox check runs a kernel a few dozen times; a kernel written to be right during the check
and wrong later (after N calls, on some date, for some inputs) passes it. At dispatch, a random
sample of calls is therefore re-checked against the op's float64 reference on the very inputs of
that call: which calls are checked is drawn here from a secret-seeded generator in the caller's
process, which the kernel (in its sandboxed worker) cannot see. A failed check

1. quarantines the kernel's store entry (``store.quarantine(key, reason)``: a ``quarantined``
   measurement row, the entry removed, so a re-tune chooses another kernel),
2. asks ``fallback`` for the next best kernel (dispatch: :func:`next_best`, the fastest other
   kernel the store measured valid for the problem on a trusted backend, else the library
   baseline) and sends every later call to it, at call sites that cached the wrapper too; the
   float64 reference serves only where no fallback builds and validates,
3. calls ``on_quarantine``, and
4. returns the reference result for the failing call, cast to the kernel's output dtype and
   array library, so the caller never sees the wrong output.

The rate is ``UHOP_SPOTCHECK_RATE`` (fraction of calls, default 0.01; 0 disables, 1 checks
every call). A check costs one float64 reference computation and an input copy, on sampled
calls only; unsampled calls pay one random draw.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from uhop.measure.validate import compare
from uhop.ops.base import as_f64
from uhop.problem import Problem

log = logging.getLogger(__name__)
#: default fraction of dispatch calls re-checked against the reference
DEFAULT_RATE = 0.01


def spotcheck_rate() -> float:
    """``UHOP_SPOTCHECK_RATE`` as a fraction in [0, 1] (default :data:`DEFAULT_RATE`)."""
    from uhop.config import read

    rate = float(read("spotcheck_rate"))  # read now: tests and long-lived servers change it live
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"UHOP_SPOTCHECK_RATE must be in [0, 1], got {rate}")
    return rate


class SpotChecked:
    """``kernel`` wrapped with spot checks for ``problem`` (store entry ``key``).

    ``store``: anything with ``quarantine(key, reason)`` (``uhop.store`` SQLite or PostgreSQL),
    or None to only fall back; ``rate``: fraction of calls checked (default
    :func:`spotcheck_rate`); ``fallback``: called once, at the failure, for the kernel that
    serves every later call (taking and returning what ``kernel`` does), or None; without one
    (or when it fails) later calls get the float64 reference. ``checks``, ``failures`` and
    ``fallback_calls`` count what happened (for tests and telemetry)."""

    def __init__(self, kernel: Callable[..., Any], problem: Problem, key: str, *, store: Any = None,
                 rate: float | None = None, on_quarantine: Callable[[], None] | None = None,
                 fallback: Callable[[], Callable[..., Any] | None] | None = None) -> None:  # fmt: skip
        self.kernel = kernel
        self.problem = problem
        self.key = key
        self.store = store
        self.rate = spotcheck_rate() if rate is None else float(rate)
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {self.rate}")
        self.on_quarantine = on_quarantine
        self.fallback = fallback
        self.fallback_kernel: Callable[..., Any] | None = None
        self.quarantined = ""
        self.checks = 0
        self.failures = 0
        self.fallback_calls = 0
        self._rng = np.random.default_rng(secrets.randbits(63))
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        if self.quarantined:
            fb = self.fallback_kernel
            if fb is None:
                return self._reference(args)
            self.fallback_calls += 1
            return fb(*args)
        with self._lock:
            sampled = self.rate > 0 and self._rng.random() < self.rate
        if not sampled:
            return self.kernel(*args)
        xs = [as_f64(a) for a in args]  # copied before the call: the kernel cannot change them
        out = self.kernel(*args)
        self.checks += 1
        ref = self.problem.spec.reference(*xs, **self.problem.param)
        try:
            v = compare(out, ref, self.problem)
        except Exception as exc:  # an output the comparison cannot read is a failure too
            reason = f"unreadable output ({type(exc).__name__}: {exc})"
        else:
            if v.ok:
                return out
            reason = f"{v.status}: {v.reason}"
        self.failures += 1
        self._quarantine(f"dispatch spot check, call output wrong: {reason}"[:400])
        return _like(ref, out)

    def _reference(self, args: tuple) -> Any:
        """The float64 reference of ``args`` in the problem's (result) dtype, array and device;
        each input is read in its own dtype (``as_f64``), mixed dtypes included."""
        ref = self.problem.spec.reference(*[as_f64(a) for a in args], **self.problem.param)
        dt = self.problem.dtype
        if self.problem.array == "torch":
            import torch

            return torch.from_numpy(ref).to(dtype=getattr(torch, dt), device=self.problem.device)
        return ref.astype("float32" if dt == "bfloat16" else dt)  # numpy has no bfloat16

    def _quarantine(self, reason: str) -> None:
        with self._lock:
            if self.quarantined:
                return
            self.quarantined = reason
        if self.store is not None:
            try:
                self.store.quarantine(self.key, reason)
            except Exception:  # a store that cannot be written must not turn a fallback into a crash
                pass
        if self.fallback is not None:
            try:
                self.fallback_kernel = self.fallback()
            except Exception as exc:  # no next best: the reference serves
                log.warning("no fallback for quarantined kernel %s (%s: %s); calling the reference",
                            self.key, type(exc).__name__, exc)  # fmt: skip
        if self.on_quarantine is not None:
            self.on_quarantine()


def _like(ref: np.ndarray, out: Any) -> Any:
    """``ref`` in the dtype, array library and device of the kernel's (wrong) output."""
    if hasattr(out, "detach"):  # torch
        import torch

        return torch.from_numpy(ref).to(dtype=out.dtype, device=out.device)
    dtype = getattr(out, "dtype", np.float64)
    try:
        return ref.astype(dtype)
    except TypeError:
        return ref


def spot_checked(kernel: Callable[..., Any], problem: Problem, key: str, *, trusted: bool, store: Any = None,
                 on_quarantine: Callable[[], None] | None = None,
                 fallback: Callable[[], Callable[..., Any] | None] | None = None) -> Callable[..., Any]:  # fmt: skip
    """The dispatch hook: ``kernel`` itself for trusted backends (UHOP's own templates) or a
    zero rate, else a :class:`SpotChecked` wrapper."""
    if trusted or spotcheck_rate() == 0.0:
        return kernel
    return SpotChecked(kernel, problem, key, store=store, on_quarantine=on_quarantine, fallback=fallback)


#: measured candidates :func:`next_best` builds and validates at most (each costs a build and a
#: float64 reference of the problem's size, once, on the call that found the fault)
NEXT_BEST_TRIES = 3


def next_best(problem: Problem, key: str, store: Any) -> tuple[Callable[..., Any], Any, Any] | None:
    """The fastest kernel other than the quarantined one that the store measured valid for
    ``key`` (the tuning run's ``ok`` measurement rows), on a trusted backend (UHOP's own
    templates and vendor libraries: an untrusted one would need its own spot checks) allowed by
    ``UHOP_BACKENDS``, that still builds and passes one fresh validation at the problem's own
    size, as ``(kernel, backend, candidate)``; None when there is none."""
    from uhop import backends as bk
    from uhop.backends.base import Candidate
    from uhop.config import settings
    from uhop.measure.validate import ValidationSet, check_kernel

    allow = settings().backends
    rows = [m for m in store.measurements(key) if m.get("status") == "ok" and m.get("median_s") is not None]
    tried: set[str] = set()
    for m in sorted(rows, key=lambda m: float(m["median_s"])):
        if len(tried) >= NEXT_BEST_TRIES:
            break
        try:
            cand = Candidate.from_json(m["candidate"])
            backend = bk.get(cand.backend)
        except Exception:  # a row from another UHOP version, a backend not in this install
            continue
        if cand.id in tried or not (backend.trusted and backend.available and backend.supports(problem)):
            continue
        if allow and backend.name not in allow:
            continue
        tried.add(cand.id)
        try:
            kernel = backend.compile(cand, problem)
            sync = (lambda b=backend: b.synchronize(problem.device)) if problem.device != "cpu" else None
            v = check_kernel(kernel, ValidationSet(problem, trials=1), backend.array, problem.device, sync)
        except Exception as exc:
            log.debug("next best %s for %s failed: %s: %s", cand.id, key, type(exc).__name__, exc)
            continue
        if v.ok:
            return kernel, backend, cand
        log.debug("next best %s for %s failed validation: %s", cand.id, key, v.reason)
    return None
