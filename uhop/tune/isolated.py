"""Crash containment for tuning: candidates compiled, validated and timed in a long-lived worker.

A generated kernel can do what no ``try`` catches: segfault, abort inside the compiler, hang, or
hit an illegal address that poisons the CUDA context for the rest of the process. With
``UHOP_ISOLATE`` (default ``auto``: GPU problems) the tuner sends each candidate to one worker
process per device and gets back a :class:`~uhop.tune.tuner.Measurement`; when the worker dies
the candidate is recorded as ``crash`` with the signal, when it runs past
``UHOP_ISOLATE_TIMEOUT_S`` it is killed and recorded as ``timeout``, and after a CUDA error the
worker checks its context and exits if it is poisoned. The next candidate gets a fresh worker.

The worker is a plain ``python -c`` subprocess (:mod:`uhop.tune.subproc`: not multiprocessing's
spawn, which re-imports the caller's ``__main__`` script), in its own session, dying with its
parent, talking over two pipes with :mod:`multiprocessing.connection` framing.
It is started when tuning starts, so its imports (torch, CUDA context, Triton) overlap the
parent's candidate enumeration, and it stays warm between problems until ``idle_s`` passes.
Only trusted code runs in it; untrusted kernel files are additionally sandboxed by the ``user``
backend inside it.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from uhop.backends.base import Candidate
from uhop.problem import Problem

#: a worker with nothing to do for this long exits (it holds a CUDA context and cached memory)
IDLE_S = 300.0
#: how long a new worker may take to import torch/Triton and create its CUDA context
START_TIMEOUT_S = 180.0


def device_healthy(device: str) -> bool:
    """False when the device's context is unusable (a sticky CUDA error such as an illegal address)."""
    if not device.startswith("cuda"):
        return True
    try:
        import torch

        torch.cuda.synchronize(device)
        return float(torch.ones(1, device=device).add_(1).item()) == 2.0
    except Exception:
        return False


def signal_name(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class IsolatedEvaluator:
    """One worker process for one device; :meth:`evaluate` never raises for candidate faults."""

    def __init__(self, device: str = "cpu", *, idle_s: float = IDLE_S) -> None:
        self.device, self.idle_s = device, idle_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        self._ready = False
        self._lock = threading.Lock()
        #: workers started so far (the first one included): a count of crashes and timeouts + 1
        self.starts = 0
        #: seconds of the last :meth:`evaluate` that were set-up, not the candidate: waiting for a
        #: worker to start and building the problem's reference inputs (budget estimates skip it)
        self.last_setup_s = 0.0
        #: the part of ``last_setup_s`` spent waiting for a new worker to start
        self.last_start_s = 0.0

    # ---- the worker's life ----------------------------------------------------------------
    def start(self) -> None:
        """Start the worker if none is alive (returns at once; it finishes starting on its own)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._discard()

        from uhop.tune import subproc

        self._proc, self._send, self._recv = subproc.start_duplex("uhop.tune.isolated:main")
        self._ready = False
        self.starts += 1
        self._send.send({"cmd": "init", "device": self.device})

    def _discard(self) -> None:
        proc, self._proc = self._proc, None
        for c in (self._send, self._recv):
            if c is not None:
                c.close()
        self._send = self._recv = None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()

    def close(self) -> None:
        with self._lock:
            self._discard()

    def release(self) -> None:
        """Tell the worker to drop its validation inputs and cached device memory (no wait)."""
        if self._send is not None and self._proc is not None and self._proc.poll() is None:
            try:
                self._send.send({"cmd": "release"})
            except OSError:
                pass

    def _wait(self, deadline: float) -> tuple[str, Any]:
        """("reply", obj) | ("died", reason) | ("timeout", None)."""
        assert self._recv is not None and self._proc is not None
        while True:
            try:
                if self._recv.poll(0.05):
                    return "reply", self._recv.recv()
            except (EOFError, OSError):
                pass
            else:
                if self._proc.poll() is None:
                    if time.monotonic() > deadline:
                        return "timeout", None
                    continue
            code = self._proc.wait()
            return "died", signal_name(code)

    # ---- one candidate -------------------------------------------------------------------
    def evaluate(
        self, candidate: Candidate, problem: Problem, *, trials: int, time_it: bool = True,
        cutoff_s: float = math.inf, timeout_s: float | None = None, settings: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        """Compile, validate and time ``candidate`` in the worker; a :class:`Measurement`."""
        from uhop.config import settings as current
        from uhop.tune.search import worker_settings
        from uhop.tune.tuner import Measurement

        timeout_s = current().isolate_timeout_s if timeout_s is None else timeout_s
        from uhop import backends as bk

        req = {"cmd": "eval", "candidate": candidate.to_json(), "problem": problem.to_json(), "trials": trials,
               "registry": dict(bk.REGISTRY),
               "time_it": time_it, "cutoff_s": cutoff_s, "settings": settings or worker_settings()}  # fmt: skip
        with self._lock:
            self.last_setup_s = self.last_start_s = 0.0
            why = self._ensure_ready()
            if why:
                return Measurement(candidate, "crash", f"the isolation worker {why}")
            self.last_setup_s = self.last_start_s
            assert self._send is not None
            try:
                self._send.send(req)
            except OSError as exc:
                self._discard()
                return Measurement(candidate, "crash", f"the isolation worker is gone ({exc})")
            what, reply = self._wait(time.monotonic() + timeout_s)
            if what == "timeout":
                self._discard()
                return Measurement(candidate, "timeout", f"ran past {timeout_s:g} s (UHOP_ISOLATE_TIMEOUT_S); worker killed")
            if what == "died":
                self._discard()
                return Measurement(candidate, "crash", f"killed its process ({reply}); a fresh worker takes the next candidate")
            m = Measurement.from_json(reply["measurement"])
            self.last_setup_s += float(reply.get("setup_s", 0.0))
            if not reply.get("healthy", True):
                self._discard()  # the worker exits by itself too; do not wait for it to be noticed
                m = Measurement(m.candidate, "crash" if m.ok else m.status,
                                f"{m.reason}; it left the device context unusable (worker replaced)".lstrip("; "))  # fmt: skip
            return m


    def _ensure_ready(self) -> str:
        """Start the worker if needed and wait for it (not the candidate's time); '' or why not."""
        t0 = time.monotonic()
        self.start()
        if not self._ready:
            what, reply = self._wait(time.monotonic() + START_TIMEOUT_S)
            if what != "reply":
                self._discard()
                return "did not start in time" if what == "timeout" else f"died while starting ({reply})"
            if "error" in reply:  # it started but could not set up (e.g. an import failed)
                self._discard()
                return f"failed to start: {reply['error']}"
            self._ready = True
        self.last_start_s = time.monotonic() - t0
        return ""

    def prepare(self, problem: Problem, *, trials: int, candidate: Candidate | None = None) -> None:
        """Ask the worker (without waiting) to draw ``problem``'s validation inputs and build
        ``candidate`` now, so that both overlap the caller's own work: the candidate's later
        :meth:`evaluate` finds them ready. Only the next candidate the worker evaluates is built
        ahead, so that a build that kills the worker is charged to the right candidate."""
        from uhop import backends as bk
        from uhop.tune.search import worker_settings

        req = {"cmd": "prepare", "problem": problem.to_json(), "trials": trials, "registry": dict(bk.REGISTRY),
               "candidate": candidate.to_json() if candidate is not None else None, "settings": worker_settings()}  # fmt: skip
        with self._lock:
            self.start()
            try:
                assert self._send is not None
                self._send.send(req)
            except (OSError, AssertionError):
                self._discard()

    def retime(self, candidates: list[Candidate], problem: Problem, *, trials: int, rounds: int) -> list[list[float]] | None:
        """Interleaved re-timing of ``candidates`` in the worker (:func:`uhop.tune.retime.interleaved`):
        seconds per call ``[candidate][round]``, or None if the worker failed or died."""
        from uhop import backends as bk
        from uhop.config import settings as current
        from uhop.tune.search import worker_settings

        req = {"cmd": "retime", "candidates": [c.to_json() for c in candidates], "problem": problem.to_json(),
               "trials": trials, "rounds": rounds, "registry": dict(bk.REGISTRY), "settings": worker_settings()}  # fmt: skip
        with self._lock:
            if self._ensure_ready():
                return None
            assert self._send is not None
            try:
                self._send.send(req)
            except OSError:
                self._discard()
                return None
            what, reply = self._wait(time.monotonic() + current().isolate_timeout_s)
            if what != "reply":
                self._discard()
                return None
            return reply.get("samples")


_evaluators: dict[str, IsolatedEvaluator] = {}
_evaluators_lock = threading.Lock()


def evaluator(device: str) -> IsolatedEvaluator:
    """The process-wide worker for ``device`` (started on first use, reused across problems)."""
    with _evaluators_lock:
        ev = _evaluators.get(device)
        if ev is None:
            ev = _evaluators[device] = IsolatedEvaluator(device)
        return ev


@atexit.register
def _close_all() -> None:
    for ev in list(_evaluators.values()):
        ev.close()


# ---- the worker process ------------------------------------------------------------------------
def _serve(recv: Connection, send: Connection) -> None:
    from uhop.tune.subproc import die_with_parent

    die_with_parent()
    init = recv.recv()
    try:
        from uhop import backends as bk
        from uhop import config
        from uhop.measure.validate import ValidationSet
        from uhop.tune.tuner import evaluate
    except Exception as exc:  # say why instead of dying: every candidate would be a "crash"
        send.send({"error": f"{type(exc).__name__}: {exc}"})
        return

    device = init["device"]
    if device.startswith("cuda"):  # pay the CUDA context and Triton import before the first candidate
        try:
            import torch

            torch.ones(1, device=device).add_(1).item()
            import triton  # noqa: F401
        except Exception:
            pass
    send.send({"ready": True, "pid": os.getpid()})
    vsets: dict[Any, ValidationSet] = {}
    built: dict[Candidate, tuple[Any, float]] = {}  # built ahead by "prepare": kernel, compile seconds
    ahead_s = 0.0  # reference inputs drawn by "prepare": reported with the next eval's set-up
    while recv.poll(IDLE_S):
        try:
            req = recv.recv()
        except EOFError:
            return
        if req["cmd"] == "release":
            vsets.clear()
            built.clear()
            if device.startswith("cuda"):
                try:
                    import torch

                    torch.cuda.empty_cache()
                except Exception:
                    pass
            continue
        for name, target in req["registry"].items():  # backends registered in the parent exist here too
            if bk.REGISTRY.get(name) != target:
                bk.REGISTRY[name] = target
                bk._instances.pop(name, None)
        with config.override(**req["settings"], isolate="never"):
            problem = Problem.from_json(req["problem"])
            vkey = (repr(sorted(req["problem"].items())), req["trials"])
            t0 = time.monotonic()
            if vkey not in vsets:
                vsets.clear()  # one problem at a time: inputs of the last one only
                vsets[vkey] = ValidationSet(problem, trials=req["trials"])
            setup_s = time.monotonic() - t0
            if req["cmd"] == "retime":
                send.send({"samples": _retime_here(req, problem, vsets[vkey])})
                continue
            if req["cmd"] == "prepare":  # no reply: the next eval's reply accounts for it
                ahead_s = setup_s
                built.clear()
                if req["candidate"] is not None:
                    cand = Candidate.from_json(req["candidate"])
                    try:
                        t1 = time.monotonic()
                        built[cand] = (bk.get(cand.backend).compile(cand, problem), time.monotonic() - t1)
                    except Exception:  # the eval request compiles it again and records the error
                        pass
                continue
            cand = Candidate.from_json(req["candidate"])
            kernel, compile_s = built.pop(cand, (None, 0.0))
            try:
                m, _ = evaluate(cand, bk.get(cand.backend), problem, vsets[vkey], time_it=req["time_it"],
                                cutoff_s=req["cutoff_s"], built=kernel)  # fmt: skip
                if kernel is not None:
                    m = m.with_(phases=(("compile", compile_s), *((k, v) for k, v in m.phases if k != "compile")))
                reply = m.to_json()
            except Exception as exc:  # a fault of ours, still a value
                from uhop.tune.tuner import Measurement

                reply = Measurement(cand, "crash", f"{type(exc).__name__}: {exc}"[:300]).to_json()
        healthy = device_healthy(problem.device)
        send.send({"measurement": reply, "healthy": healthy, "setup_s": setup_s + ahead_s})
        ahead_s = 0.0
        if not healthy:
            os._exit(3)


def _retime_here(req: dict[str, Any], problem: Problem, vset: Any) -> list[list[float]] | None:
    from uhop import backends as bk
    from uhop.config import settings
    from uhop.tune.retime import interleaved
    from uhop.tune.tuner import as_called

    try:
        ks, args = [], []
        for cj in req["candidates"]:
            c = Candidate.from_json(cj)
            b = bk.get(c.backend)
            k, inputs = as_called(b.compile(c, problem), b, problem, vset)
            ks.append(k)
            args.append(inputs)
        cuda = problem.device.startswith("cuda")
        sync = (lambda: bk.get("torch").synchronize(problem.device)) if cuda else None
        return interleaved(ks, args, sync=sync, rounds=req["rounds"], min_time_s=settings().bench_min_s / 4, cuda_events=cuda)
    except Exception:  # a candidate that timed fine once and fails now: keep the first pass
        return None


def main() -> None:
    """Entry point of the worker process (started by :meth:`IsolatedEvaluator.start`)."""
    try:
        from uhop.tune.subproc import duplex_ends

        _serve(*duplex_ends())
    except (BrokenPipeError, EOFError):  # the parent went away (exited, or dropped this worker): no one to tell
        sys.exit(0)


def _forget_after_fork() -> None:
    """A forked child must neither use nor (at its exit) kill its parent's workers."""
    global _evaluators_lock
    _evaluators.clear()
    _evaluators_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)

if __name__ == "__main__":
    main()
