"""Build JIT candidates ahead of their evaluation, in parallel processes.

A tuning run evaluates candidates one at a time (one timer at once); for JIT backends most of
an evaluation can be the compile (numba 0.5-2 s, IREE 1-5 s per config). Backends whose
``compile`` fills an on-disk cache that every process reads (``Backend.precompiles``: numba's
cache under ``UHOP_HOME/numba``, IREE's under ``UHOP_HOME/iree``, Triton's under
``TRITON_CACHE_DIR`` after one launch: ``Backend.prebuild``) are built here by a few build
processes, in the order the tuner will evaluate them, while the evaluation worker works
through earlier candidates; when it reaches one, it loads the binary instead of compiling it.
Inductor precompiles its Triton configs the same way. The tuner waits for a candidate's build
before evaluating it (two processes never compile the same kernel) and re-times its finalists
after the pool is closed, so compiles running beside a timing do not decide the pick.

A build that fails or kills its process is not an error here: the evaluation compiles the
candidate itself and records what happens.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import subprocess
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from uhop.backends.base import Candidate
from uhop.problem import Problem

log = logging.getLogger("uhop.tune")


class Precompiler:
    """``workers`` processes building candidates for one problem, in the order submitted.

    Plain ``python -c`` subprocesses (:mod:`uhop.tune.subproc`), not a multiprocessing pool:
    spawn re-imports the caller's ``__main__`` script, so a script without an ``if __name__ ==
    "__main__"`` guard ran its top level again in every pool process (its prints, its files, its
    own tuning, which then failed to start a pool inside a bootstrapping process)."""

    def __init__(self, workers: int) -> None:
        from uhop.config import settings

        snap = {f.name: getattr(settings(), f.name) for f in dataclasses.fields(settings())}
        self._settings = json.dumps(snap, default=str)
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[Candidate, str]] = collections.deque()
        self._state: dict[Candidate, str] = {}  # queued | running | done | failed | cancelled
        self._built: dict[Candidate, float] = {}
        self._closed = False
        self._workers = max(1, workers)
        for _ in range(self._workers):
            threading.Thread(target=self._drive, daemon=True, name="uhop-precompile").start()

    # ---- the caller's side ----------------------------------------------------------------
    def submit(self, problem: Problem, candidates: list[Candidate]) -> None:
        """Queue builds of ``candidates`` (in this order) for ``problem``."""
        pj = json.dumps(problem.to_json())
        with self._cond:
            for c in candidates:
                if c not in self._state and not self._closed:
                    self._state[c] = "queued"
                    self._queue.append((c, pj))
            self._cond.notify_all()

    def ahead(self, candidate: Candidate) -> bool:
        """Whether ``candidate`` is built here (queued, building or built), not by its evaluation."""
        with self._cond:
            return self._state.get(candidate) in ("queued", "running", "done")

    def pending_s(self, candidate: Candidate, default_s: float) -> float:
        """Seconds ``candidate``'s evaluation may still wait for its build: 0 when it is built (or
        not queued here), else the slowest build finished so far (``default_s`` before any)."""
        with self._cond:
            if self._state.get(candidate) not in ("queued", "running"):
                return 0.0
            return max(self._built.values(), default=default_s)

    def wait(self, candidate: Candidate, timeout: float) -> float | None:
        """Wait up to ``timeout`` seconds for ``candidate``'s build; its compile seconds in the
        pool, or None when it was not built there (not queued, failed, still running)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while True:
                state = self._state.get(candidate)
                if state == "queued":
                    ahead = next((i for i, q in enumerate(self._queue) if q[0] == candidate), self._workers)
                    if ahead >= self._workers:  # not about to start: the evaluation compiles it now
                        self._state[candidate] = "cancelled"
                        self._queue = collections.deque(q for q in self._queue if q[0] != candidate)
                        return None
                elif state != "running":
                    return self._built.get(candidate)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def drop(self, keep: Any) -> None:
        """Cancel the queued builds of candidates for which ``keep(candidate)`` is false (the tuner
        will not evaluate them; a running build finishes)."""
        with self._cond:
            gone = [c for c, _ in self._queue if not keep(c)]
            for c in gone:
                self._state[c] = "cancelled"
            if gone:
                self._queue = collections.deque(q for q in self._queue if keep(q[0]))

    def close(self) -> None:
        """Drop queued builds and let the processes go (a running compile finishes in the background)."""
        with self._cond:
            self._closed = True
            for c, _ in self._queue:
                self._state[c] = "cancelled"
            self._queue.clear()
            self._cond.notify_all()

    # ---- one driver thread per process ------------------------------------------------------
    def _start(self) -> tuple[subprocess.Popen[bytes], Connection, Connection]:
        from uhop.tune import subproc

        proc, send, recv = subproc.start_duplex("uhop.tune.precompile:main")
        send.send_bytes(self._settings.encode())
        return proc, send, recv

    def _drive(self) -> None:
        proc = send = recv = None
        deaths = 0  # in a row: a process that cannot even start (a broken install) stops the pool
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    cand, pj = self._queue.popleft()
                    self._state[cand] = "running"
                if proc is None or proc.poll() is not None:
                    for c in (send, recv):
                        if c is not None:
                            c.close()
                    proc, send, recv = self._start()
                secs: float | None = None
                try:
                    assert send is not None and recv is not None
                    send.send_bytes(json.dumps({"problem": pj, "candidate": cand.to_json()}).encode())
                    reply = json.loads(recv.recv_bytes())
                    secs = reply.get("s")
                    if secs is None:
                        log.debug("precompile of %s failed: %s", cand.id, reply.get("error"))
                except (EOFError, OSError):  # the build killed its process: the evaluation will say why
                    proc = None
                    deaths += 1
                    if deaths >= 3:
                        log.warning("precompile processes keep dying (last on %s); building in the evaluation instead", cand.id)
                        self.close()
                else:
                    deaths = 0
                with self._cond:
                    self._state[cand] = "done" if secs is not None else "failed"
                    if secs is not None:
                        self._built[cand] = float(secs)
                    self._cond.notify_all()
        finally:
            for c in (send, recv):
                if c is not None:
                    c.close()  # the process reads EOF and exits after its build


# ---- the build process ------------------------------------------------------------------------
def main() -> None:
    """Entry point of a build process (started by :class:`Precompiler`)."""
    from uhop.tune.subproc import die_with_parent, duplex_ends

    die_with_parent()
    recv, send = duplex_ends()
    try:
        snapshot = json.loads(recv.recv_bytes())
    except EOFError:
        return
    from pathlib import Path

    from uhop import config

    fields = {f.name: f for f in dataclasses.fields(config.Settings)}
    values = {k: v for k, v in snapshot.items() if k in fields}
    values["home"] = Path(values["home"])
    for k, v in list(values.items()):  # tuples arrive as lists
        if isinstance(v, list):
            values[k] = tuple(v)
    config.install(config.Settings(**values))  # this process runs under the tuner's settings
    try:
        os.nice(5)  # behind the evaluation worker, whose timings are running
    except OSError:
        pass
    from uhop import backends as bk

    while True:
        try:
            req = json.loads(recv.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            problem, cand = Problem.from_json(json.loads(req["problem"])), Candidate.from_json(req["candidate"])
            t0 = time.monotonic()
            bk.get(cand.backend).prebuild(cand, problem)
            reply: dict[str, Any] = {"s": time.monotonic() - t0}
        except Exception as exc:  # not an error here: the evaluation compiles it and records what happens
            reply = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        try:
            send.send_bytes(json.dumps(reply).encode())
        except OSError:
            return
