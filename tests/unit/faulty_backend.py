"""A backend whose candidates kill their own process in the ways generated kernels do (segfault,
abort, hang, exit), plus one honest candidate. Registered by tests through
``uhop.backends.register``; isolated tuning must record each as a failure and survive."""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np

from uhop.backends.base import Backend, Candidate

FAULTS = ("segfault", "abort", "hang", "exit", "honest")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class FaultyBackend(Backend):
    name = "faulty"
    ops = ("softmax",)
    dtypes = ("float32",)

    def candidates(self, problem):
        return [Candidate.of("faulty", f) for f in FAULTS]

    def compile(self, candidate, problem):
        fault = candidate.template

        def kernel(x):
            if fault == "segfault":
                ctypes.string_at(0)  # reads address 0: SIGSEGV
            elif fault == "abort":
                os.abort()
            elif fault == "hang":
                time.sleep(3600)
            elif fault == "exit":
                os._exit(0)
            return _softmax(x)

        return kernel


class CrashingBackend(FaultyBackend):
    """The faults that kill a process at once (no hang): for executor tests with long job timeouts."""

    def candidates(self, problem):
        return [Candidate.of("faulty", f) for f in ("segfault", "abort", "honest")]


class GeneratedCodeBackend(CrashingBackend):
    """Declares itself crash-prone (JIT-compiled native code), as numba, IREE and Triton do."""

    crash_prone = True
