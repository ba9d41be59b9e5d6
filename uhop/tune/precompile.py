"""Build JIT candidates ahead of their evaluation, in parallel processes.

A tuning run evaluates candidates one at a time (one timer at once); for JIT backends most of
an evaluation can be the compile (numba 0.5-2 s, IREE 1-5 s per config). Backends whose
``compile`` fills an on-disk cache that every process reads (``Backend.precompiles``: numba's
cache under ``UHOP_HOME/numba``, IREE's under ``UHOP_HOME/iree``, Triton's under
``TRITON_CACHE_DIR`` after one launch: ``Backend.prebuild``) are built here by a pool of
spawn processes, in the order the tuner will evaluate them, while the evaluation worker works
through earlier candidates; when it reaches one, it loads the binary instead of compiling it.
Inductor precompiles its Triton configs the same way. The tuner waits for a candidate's build
before evaluating it (two processes never compile the same kernel) and re-times its finalists
after the pool is closed, so compiles running beside a timing do not decide the pick.

A build that fails or kills its process is not an error here: the evaluation compiles the
candidate itself and records what happens.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import multiprocessing
import os
import signal
import time
from typing import Any

from uhop.backends.base import Candidate
from uhop.problem import Problem

log = logging.getLogger("uhop.tune")


class Precompiler:
    """A pool of ``workers`` spawn processes building candidates for one problem."""

    def __init__(self, workers: int) -> None:
        from uhop.config import settings

        snapshot = {f.name: getattr(settings(), f.name) for f in dataclasses.fields(settings())}
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init, initargs=(snapshot,),
        )  # fmt: skip
        self._futures: dict[Candidate, cf.Future[float]] = {}

    def submit(self, problem: Problem, candidates: list[Candidate]) -> None:
        """Queue builds of ``candidates`` (in this order) for ``problem``."""
        pj = problem.to_json()
        for c in candidates:
            if c not in self._futures:
                try:
                    self._futures[c] = self._pool.submit(_build, pj, c.to_json())
                except RuntimeError:  # the pool broke (a build killed its process): stop queueing
                    return

    def pending_s(self, candidate: Candidate, default_s: float) -> float:
        """Seconds ``candidate``'s evaluation may still wait for its build: 0 when it is built (or
        not queued here), else the slowest build finished so far (``default_s`` before any)."""
        fut = self._futures.get(candidate)
        if fut is None or fut.done():
            return 0.0
        built = [f.result() for f in self._futures.values() if f.done() and not f.cancelled() and f.exception() is None]
        return max(built, default=default_s)

    def wait(self, candidate: Candidate, timeout: float) -> float | None:
        """Wait up to ``timeout`` seconds for ``candidate``'s build; its compile seconds in the
        pool, or None when it was not built there (not queued, failed, still running)."""
        fut = self._futures.get(candidate)
        if fut is None:
            return None
        if not fut.done() and not fut.running():
            fut.cancel()  # not started: the evaluation compiles it now rather than wait for a slot
        try:
            return fut.result(timeout=max(timeout, 0.0))
        except (cf.TimeoutError, cf.CancelledError):
            return None
        except Exception as exc:  # a failed build, a broken pool: the evaluation will say why
            log.debug("precompile of %s failed: %s", candidate.id, exc)
            return None

    def close(self) -> None:
        """Cancel queued builds and let the processes go (a running compile finishes in the background)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _init(snapshot: dict[str, Any]) -> None:
    try:  # die with the tuner
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    from pathlib import Path

    from uhop import config

    snapshot["home"] = Path(snapshot["home"])
    config.install(config.Settings(**snapshot))  # this process runs under the tuner's settings
    try:
        os.nice(5)  # behind the evaluation worker, whose timings are running
    except OSError:
        pass


def _build(problem_json: dict[str, Any], candidate_json: dict[str, Any]) -> float:
    from uhop import backends as bk

    problem, cand = Problem.from_json(problem_json), Candidate.from_json(candidate_json)
    t0 = time.monotonic()
    bk.get(cand.backend).prebuild(cand, problem)
    return time.monotonic() - t0
