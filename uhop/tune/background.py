"""Tuning off the caller's path: first use serves the library kernel while the tuner runs.

A new problem's first call must not stall for the tuning budget. With ``UHOP_POLICY=background``
(the default for ``@uhop.optimize`` and ``uhop.ops``) dispatch serves the problem's baseline (the
library call a user would otherwise make: torch on CUDA and for torch callers, numpy for numpy
callers), checked first on a small instance of the problem, and queues the problem here. One
daemon thread per process tunes queued problems one at a time (timings of two tuning runs must
not overlap), with the same budget, worker processes and store as a blocking run; when a run
ends, its callback swaps the validated winner into every dispatch cache that served the baseline
and the store keeps it for every later process.

:func:`wait` blocks until the queue is empty (scripts, tests, benchmarks). At interpreter exit the
queue is given up to ``UHOP_EXIT_WAIT_S`` seconds to finish, so that a short script still stores
what its first call started tuning; after that the work is abandoned (nothing half-written: the
store is written once per problem, in one transaction): queued jobs are dropped and the running
one stops at its next candidate, and the thread is joined before the interpreter finalizes (a
tuning thread left inside a library call at exit aborted the process: "terminate called without
an active exception", exit status 134, after a script whose last calls had started tuning). In a
forked child the queue starts empty: the parent's thread does not exist there, and the child
serves what it inherited.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("uhop")

Job = Callable[[], None]


class Abandoned(BaseException):
    """Raised inside a job at its next check once the process is exiting: it stores nothing.
    A BaseException, as SystemExit is: no ``except Exception`` on the way records it as a failure."""


_abandon = threading.Event()


def check_abandoned() -> None:
    """Called by the tuner between candidates: raises :class:`Abandoned` at interpreter exit."""
    if _abandon.is_set():
        raise Abandoned


class Queue:
    """A FIFO of jobs keyed by problem key (a key queued twice runs once), run by one daemon thread."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._running: str | None = None
        self._thread: threading.Thread | None = None
        #: keys whose job stores something (tuning): the exit wait is for these only, not for a
        #: re-validation of an entry already stored
        self._persist: set[str] = set()
        self._holds = 0  # first calls running (see first_call)
        #: keys whose job finished (for reports: ``uhop.wait()`` returns them)
        self.done: list[str] = []

    def submit(self, key: str, job: Job, *, persist: bool = True) -> bool:
        """Queue ``job`` under ``key`` unless that key is queued or running; True if queued.
        ``persist``: the job stores a result that interpreter exit should wait for."""
        with self._cv:
            if key in self._jobs or key == self._running:
                return False
            self._jobs[key] = job
            if persist:
                self._persist.add(key)
            _depth(len(self._jobs) + (self._running is not None))
            if self._thread is None or not self._thread.is_alive():
                _exit_hook_first()
                self._thread = threading.Thread(target=self._run, name="uhop-tuner", daemon=True)
                self._thread.start()
            self._cv.notify_all()
            return True

    def no_exit_wait(self, key: str) -> None:
        """``key``'s job stores nothing after all (it waits for another process's tuning):
        interpreter exit need not wait for it."""
        with self._cv:
            self._persist.discard(key)
            self._cv.notify_all()

    def pending(self, persist_only: bool = False) -> int:
        with self._cv:
            keys = [*self._jobs, *([self._running] if self._running is not None else [])]
            return sum(1 for k in keys if not persist_only or k in self._persist)

    def wait_persisting(self, timeout: float) -> bool:
        """Block until no job that stores something is queued or running (the exit wait)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while any(k in self._persist for k in [*self._jobs, self._running] if k is not None):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(timeout=left)
            return True

    @contextlib.contextmanager
    def first_call(self) -> Iterator[None]:
        """While the block runs (a new problem's first call), no job starts (at most
        :data:`HOLD_MAX_S` seconds: a long first call does not postpone tuning for ever)."""
        with self._cv:
            self._holds += 1
        try:
            yield
        finally:
            with self._cv:
                self._holds -= 1
                self._cv.notify_all()

    def busy(self, key: str) -> bool:
        with self._cv:
            return key in self._jobs or key == self._running

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    if _abandon.is_set() or not self._cv.wait(timeout=IDLE_S) and not self._jobs:
                        self._thread = None  # idle (the next submit starts a new thread), or exiting
                        return
                # a caller's first call on a new problem is running: what a job starts with
                # (importing a JIT runtime or torch, drawing a float64 reference) holds the GIL
                # for up to seconds, and that call would wait for it
                hold_end = time.monotonic() + HOLD_MAX_S
                while self._holds and time.monotonic() < hold_end:
                    self._cv.wait(timeout=hold_end - time.monotonic())
                if not self._jobs:  # dropped while it waited (the process is exiting)
                    continue
                key, job = self._jobs.popitem(last=False)
                self._running = key
            _exit_hook_first()  # a library imported since (concurrent.futures) must not precede it
            try:
                job()
            except Abandoned:
                log.debug("background tuning of %s abandoned: the process is exiting", key)
            except Exception:  # a job must never kill the thread the other problems wait on
                log.exception("background tuning of %s failed", key)
            finally:
                del job  # its closure holds kernels: they must not outlive their caches
                with self._cv:
                    self._running = None
                    _depth(len(self._jobs))
                    self._persist.discard(key)
                    self.done.append(key)
                    self._cv.notify_all()

    def abandon(self, join_s: float) -> bool:
        """Drop the queued jobs, stop the running one at its next check and join the thread (at
        most ``join_s`` seconds); True if no thread is left running."""
        with self._cv:
            self._jobs.clear()
            self._persist.clear()
            thread = self._thread
            _abandon.set()
            self._cv.notify_all()
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(join_s)
        return not thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._jobs or self._running is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(timeout=left)
            return True


def _depth(n: int) -> None:
    """``uhop_tuning_queue_depth`` (a no-op unless metrics are enabled)."""
    from uhop import metrics

    metrics.queue_depth(n)


_queue = Queue()

#: longest a job waits for first calls in flight before it starts anyway, seconds
HOLD_MAX_S = 2.0
#: longest interpreter exit waits for the tuning thread to stop at its next check, seconds
ABANDON_JOIN_S = 10.0
#: the tuning thread exits after this long without work, seconds (the next job starts a new one).
#: Short: a parallel kernel it ran gave it an OpenMP thread team of its own, and while two teams
#: exist GNU OpenMP counts more threads than cores and stops spinning between parallel regions, so
#: every small op of the caller's torch paid a thread wake-up until the thread ended (a 64x64
#: layer_norm on 2 cores: 5 -> 12 us while another thread holding a team was alive)
IDLE_S = 0.05


def first_call() -> contextlib.AbstractContextManager[None]:
    """Around a new problem's first call (dispatch): background jobs wait until it returns."""
    return _queue.first_call()


def queue() -> Queue:
    return _queue


def wait(timeout: float | None = None) -> bool:
    """Block until every problem queued for background tuning has been tuned and swapped in
    (``True``), or ``timeout`` seconds passed (``False``)."""
    return _queue.wait(timeout)


def _interrupted() -> bool:
    """Whether the program is ending on Ctrl-C (an uncaught KeyboardInterrupt, which the
    interpreter has printed and kept as ``sys.last_value`` by the time exit hooks run)."""
    import sys

    return isinstance(getattr(sys, "last_exc", None) or getattr(sys, "last_value", None), KeyboardInterrupt)


def _at_exit() -> None:
    n = _queue.pending(persist_only=True)
    limit = _exit_wait_s() if n and not _interrupted() else 0.0  # Ctrl-C means now: no wait for a pick
    if limit > 0:
        log.warning("uhop: finishing background tuning of %d problem(s) before exit (at most %.0f s; "
                    "UHOP_EXIT_WAIT_S=0 skips it)", n, limit)  # fmt: skip
        try:
            _queue.wait_persisting(limit)
        except KeyboardInterrupt:  # Ctrl-C during the wait: stop now
            pass
    if not _queue.abandon(ABANDON_JOIN_S):
        log.warning("uhop: the tuning thread did not stop within %.0f s of exit", ABANDON_JOIN_S)


def _exit_wait_s() -> float:
    """``UHOP_EXIT_WAIT_S``; 0 where the settings cannot be read (a bad ``UHOP_*`` value is
    reported where it is used, not as a traceback at exit)."""
    from uhop.config import settings

    try:
        return settings().exit_wait_s
    except Exception:
        return 0.0


def _exit_hook_first() -> None:
    """Make :func:`_at_exit` the first of threading's exit hooks to run (they run last registered
    first): concurrent.futures' hook, registered by whichever library imported it after UHOP,
    makes every thread pool refuse new work, and the jobs that run during the exit wait or
    finish while it joins the thread use thread pools (numba kernels' tasks, the chunked float64
    references): a stored kernel's re-validation failed there and dropped a valid store entry."""
    hooks = getattr(threading, "_threading_atexits", None)
    if getattr(threading, "_SHUTTING_DOWN", False) or not isinstance(hooks, list) or not hooks:
        return  # the hooks are running (or this Python keeps them elsewhere): leave the list alone
    if getattr(hooks[-1], "func", None) is _at_exit:
        return
    ours = [h for h in hooks if getattr(h, "func", None) is _at_exit]
    for h in ours:
        hooks.remove(h)
    hooks.extend(ours)


def _register_exit() -> None:
    # Before atexit handlers run (the isolation workers are closed by one): the hook
    # concurrent.futures uses, run when the main thread ends. Fall back to atexit.
    try:
        threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        import atexit

        atexit.register(_at_exit)


def _reset_after_fork() -> None:
    global _queue, _abandon
    _queue = Queue()
    _abandon = threading.Event()


_register_exit()
os.register_at_fork(after_in_child=_reset_after_fork)

__all__: list[Any] = ["Queue", "queue", "wait"]


class TuningLease:
    """One process at a time tunes a key on this machine (per ``UHOP_HOME``): an exclusive
    ``flock`` on a file named by the key, released when the tuning ends or its process dies. A
    pool of worker processes meeting the same new problem tuned it once per worker, all at once
    (the cores shared N ways), and each worker's exit waited for its own tuning (a 2-process
    spawn pool: 15.7 s to close)."""

    def __init__(self, key: str) -> None:
        import hashlib

        from uhop.config import settings

        self.path = settings().home / "locks" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lease without blocking; True if this process holds it (also where file
        locks are unavailable: nothing to coordinate with)."""
        import os

        try:
            import fcntl
        except ImportError:  # not POSIX
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:  # a read-only home: tune without coordination
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        import os

        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the lock
            self._fd = None
