"""Dispatch-time spot checks for untrusted kernels (kernel files; later, generated kernels).

The sandbox check runs a kernel a few dozen times; a kernel written to be right during the check
and wrong later (after N calls, on some date, for some inputs) passes it. At dispatch, a random
sample of calls is therefore re-checked against the op's float64 reference on the very inputs of
that call: which calls are checked is drawn here from a secret-seeded generator in the caller's
process, which the kernel (in its sandboxed worker) cannot see. A failed check

1. quarantines the kernel's store entry (``store.quarantine(key, reason)``: a ``quarantined``
   measurement row, the entry removed, so a re-tune chooses another kernel),
2. calls ``on_quarantine`` (dispatch drops the kernel from its in-process cache: the next call
   resolves to the next best kernel), and
3. returns the reference result for the failing call, cast to the kernel's output dtype and
   array library, so the caller never sees the wrong output.

The rate is ``UHOP_SPOTCHECK_RATE`` (fraction of calls, default 0.01; 0 disables, 1 checks
every call). A check costs one float64 reference computation and an input copy, on sampled
calls only; unsampled calls pay one random draw.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from uhop.measure.validate import compare
from uhop.ops.base import as_f64
from uhop.problem import Problem

#: default fraction of dispatch calls re-checked against the reference
DEFAULT_RATE = 0.01


def spotcheck_rate() -> float:
    """``UHOP_SPOTCHECK_RATE`` as a fraction in [0, 1] (default :data:`DEFAULT_RATE`)."""
    raw = os.environ.get("UHOP_SPOTCHECK_RATE", "")
    if not raw:
        return DEFAULT_RATE
    try:
        rate = float(raw)
    except ValueError:
        raise ValueError(f"UHOP_SPOTCHECK_RATE must be a number in [0, 1], got {raw!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"UHOP_SPOTCHECK_RATE must be in [0, 1], got {rate}")
    return rate


class SpotChecked:
    """``kernel`` wrapped with spot checks for ``problem`` (store entry ``key``).

    ``store``: anything with ``quarantine(key, reason)`` (``uhop.store`` SQLite or PostgreSQL),
    or None to only fall back; ``rate``: fraction of calls checked (default
    :func:`spotcheck_rate`). After a failure every later call goes to the reference (if
    ``on_quarantine`` did not already route callers elsewhere). ``checks`` and ``failures``
    count what happened (for tests and telemetry)."""

    def __init__(self, kernel: Callable[..., Any], problem: Problem, key: str, *, store: Any = None,
                 rate: float | None = None, on_quarantine: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.kernel = kernel
        self.problem = problem
        self.key = key
        self.store = store
        self.rate = spotcheck_rate() if rate is None else float(rate)
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {self.rate}")
        self.on_quarantine = on_quarantine
        self.quarantined = ""
        self.checks = 0
        self.failures = 0
        self._rng = np.random.default_rng(secrets.randbits(63))
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        if self.quarantined:
            return self._reference(args)
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
        ref = self.problem.spec.reference(*[as_f64(a) for a in args], **self.problem.param)
        dtype = "float32" if self.problem.dtype == "bfloat16" else self.problem.dtype
        out = ref.astype(dtype)
        if self.problem.array == "torch":
            import torch

            out = torch.from_numpy(out).to(self.problem.device)
        return out

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
                 on_quarantine: Callable[[], None] | None = None) -> Callable[..., Any]:  # fmt: skip
    """The dispatch hook: ``kernel`` itself for trusted backends (UHOP's own templates) or a
    zero rate, else a :class:`SpotChecked` wrapper."""
    if trusted or spotcheck_rate() == 0.0:
        return kernel
    return SpotChecked(kernel, problem, key, store=store, on_quarantine=on_quarantine)
