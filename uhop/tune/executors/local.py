"""Local executors: ``inline`` (this process) and ``local`` (a pool of spawned worker processes).

The pool's workers claim jobs of the run from the queue themselves (it is the only channel: no
pipes to deadlock on) and commit each result there. The parent watches them: a worker that dies
has its job put back in the queue and is replaced (``kill -9``, OOM kill: someone else's doing),
except when the candidate killed it (SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE, or a CUDA context
it poisoned: the worker exits with ``POISONED``), which fails the job at once; a job that
runs past ``job_timeout_s`` has its worker killed and is failed. Workers are fresh ``python -c``
processes (never forked: CUDA and BLAS thread pools do not survive a fork; not multiprocessing's
spawn, which re-imports the caller's ``__main__``: a script without an ``if __name__ ==
"__main__"`` guard ran its top level again in every worker, tuning again there), die with the
parent (``PR_SET_PDEATHSIG``), stop when the parent closes their stop pipe, and for GPU problems
there is one worker per visible GPU, each pinned with ``CUDA_VISIBLE_DEVICES``.

On CPU the default is one worker: candidates timed side by side on the same cores slow each
other down. ``workers=N`` trades timing accuracy for throughput.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from uhop import backends
from uhop.tune import subproc
from uhop.tune.executors import Executor
from uhop.tune.isolated import device_healthy, signal_name
from uhop.tune.jobs import TERMINAL, JobQueue, TuningJob, worker_name

#: exit code of a worker whose CUDA context a candidate left unusable (sticky CUDA error)
POISONED = 3
#: deaths that the candidate being run caused: retrying it would only kill another worker
_CANDIDATE_DEATHS = {-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, -signal.SIGILL, -signal.SIGFPE, POISONED}


def _pin_device(spec: dict[str, Any]) -> dict[str, Any]:
    """A worker pinned to one GPU sees it as ``cuda:0``."""
    prob = dict(spec["problem"])
    if str(prob.get("device", "cpu")).startswith("cuda"):
        prob["device"] = "cuda:0"
    return {**spec, "problem": prob}


class InlineExecutor(Executor):
    """Runs each job in this process, one at a time (tests, debugging, single-shot CLI use)."""

    name = "inline"

    def __init__(self, queue: JobQueue, run_id: str, **kw: Any) -> None:
        kw.pop("workers", None)
        kw.pop("address", None)
        super().__init__(queue, run_id, **kw)
        self._me = worker_name()

    def run(self, job_ids: Sequence[int]) -> Iterator[TuningJob]:
        from uhop.tune.search import run_job

        for jid in job_ids:
            job = self.queue.claim(self._me, run_id=self.run_id, job_id=jid)
            if job is not None:
                result = run_job(job.to_spec())
                self.queue.complete(job.id, job.attempts, result, result["measurement"].get("median_s"))  # type: ignore[arg-type]
            done = self.queue.get(jid)
            if done is not None and done.status in TERMINAL:
                yield done


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
            return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


class _StopPipe:
    """The read end of the parent's stop pipe: set once the parent closed (or wrote to) it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # poll, not select: select() refuses descriptors >= 1024, and a parent with many files
        # open (a server; the test suite's process) hands the worker one above that
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLHUP)

    def is_set(self) -> bool:
        return bool(self._poll.poll(0))


def _boot() -> None:
    """Entry point of a worker process (``python -c``, started by :class:`LocalExecutor`)."""
    a = json.loads(sys.argv[1])
    _worker_main(a["url"], a["run_id"], a["settings"], a["gpu"], _StopPipe(int(sys.argv[2])), a["parent"],
                 a["lease_s"], a["registry"])  # fmt: skip


def _worker_main(url: str, run_id: str, settings: dict[str, Any], gpu: str | None, stop: Any, parent: int,
                 lease_s: float, registry: dict[str, str]) -> None:  # fmt: skip
    subproc.die_with_parent()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    from uhop import backends, config

    backends.REGISTRY.update(registry)  # backends registered in the parent exist here too
    from uhop.tune.jobs import open_queue
    from uhop.tune.search import run_job

    with config.override(**settings):
        queue = open_queue(url)
        me = worker_name()
        while not stop.is_set() and os.getppid() == parent:
            job = queue.claim(me, run_id=run_id, lease_s=lease_s)
            if job is None:
                time.sleep(0.02)
                continue
            beat = threading.Event()

            def heartbeat(job: TuningJob = job, beat: threading.Event = beat) -> None:
                while not beat.wait(lease_s / 3):
                    queue.heartbeat(job.id, job.attempts, lease_s)  # type: ignore[arg-type]

            t = threading.Thread(target=heartbeat, daemon=True)
            t.start()
            spec = job.to_spec()
            result = run_job(_pin_device(spec) if gpu is not None else spec)
            beat.set()
            queue.complete(job.id, job.attempts, result, result["measurement"].get("median_s"))  # type: ignore[arg-type]
            if gpu is not None and not device_healthy("cuda:0"):
                os._exit(POISONED)  # every later job here would fail: the executor starts a fresh worker


#: a worker slot whose process exits this soon after starting, this many times in a row, fails the run
EARLY_EXIT_S = 10.0
EARLY_EXITS = 5


class LocalExecutor(Executor):
    """A pool of spawned worker processes on this machine (one per GPU for GPU problems)."""

    name = "local"
    #: what a worker process runs (``module:function``)
    entry = "uhop.tune.executors.local:_boot"

    def __init__(self, queue: JobQueue, run_id: str, *, workers: int | None = None, job_timeout_s: float = 600.0,
                 lease_s: float = 120.0, poll_s: float = 0.02, address: str | None = None, **kw: Any) -> None:  # fmt: skip
        super().__init__(queue, run_id, **kw)
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        gpus = visible_gpus() if self.device.startswith("cuda") else []
        n = workers or max(1, len(gpus))
        self._gpu = [gpus[i % len(gpus)] if gpus else None for i in range(n)]
        self._stop_r, self._stop_w = os.pipe()  # closing the write end stops the workers
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self._started = [0.0] * n
        self._early = [0] * n  # consecutive exits of a slot's worker right after its start
        self.job_timeout_s, self.lease_s, self.poll_s = job_timeout_s, lease_s, poll_s
        self._host = socket.gethostname()
        self.restarts = 0

    @property
    def slots(self) -> int:
        return len(self._procs)

    def _name(self, p: Any) -> str:
        return f"{self._host}:{p.pid}"

    def _start(self, i: int) -> None:
        args = {"url": self.queue.url, "run_id": self.run_id, "settings": self.settings, "gpu": self._gpu[i],
                "parent": os.getpid(), "lease_s": self.lease_s, "registry": dict(backends.REGISTRY)}  # fmt: skip
        env = dict(os.environ)
        if self._gpu[i] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self._gpu[i]
        self._procs[i] = subproc.start(self.entry, (json.dumps(args), str(self._stop_r)),
                                       pass_fds=(self._stop_r,), env=env)  # fmt: skip
        self._started[i] = time.monotonic()

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def _watch(self) -> None:
        for i, p in enumerate(self._procs):
            if p is None:
                self._start(i)
            elif p.poll() is not None:
                own = p.returncode in _CANDIDATE_DEATHS
                why = f"the candidate killed its worker ({signal_name(p.returncode)})" if own else f"worker exited with code {p.returncode}"
                self.queue.release_worker(self._name(p), why, retry=not own)
                early = not own and time.monotonic() - self._started[i] < EARLY_EXIT_S
                self._early[i] = self._early[i] + 1 if early else 0
                if self._early[i] >= EARLY_EXITS:  # it cannot start: restarting it for ever helps nobody
                    raise RuntimeError(
                        f"local executor: its worker process exited (code {p.returncode}) within {EARLY_EXIT_S:g} s "
                        f"of starting, {EARLY_EXITS} times in a row; its error is on stderr above")
                self.restarts += 1
                self._start(i)
        now = time.time()
        for job in self.queue.jobs(run_id=self.run_id, status="running"):
            if job.started is not None and now - job.started > self.job_timeout_s:
                for i, p in enumerate(self._procs):
                    if p is not None and self._name(p) == job.worker:
                        p.kill()
                        p.wait()
                        self.queue.fail(job.id, job.attempts, f"timed out after {self.job_timeout_s:g} s", retry=False)  # type: ignore[arg-type]
                        self.restarts += 1
                        self._start(i)

    def run(self, job_ids: Sequence[int]) -> Iterator[TuningJob]:
        remaining = set(job_ids)
        while remaining:
            self._watch()
            for job in self.queue.jobs(ids=sorted(remaining), status=TERMINAL):
                remaining.discard(job.id)  # type: ignore[arg-type]
                yield job
            if remaining:
                time.sleep(self.poll_s)

    def close(self) -> None:
        if self._stop_w >= 0:
            os.close(self._stop_w)  # every worker's stop pipe reads EOF: they finish their job and exit
            self._stop_w = -1
        for p in self._procs:
            if p is not None:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self._procs = [None] * len(self._procs)
        os.close(self._stop_r)
        self._stop_r, self._stop_w = os.pipe()  # usable again (the tuner may run it once more)
