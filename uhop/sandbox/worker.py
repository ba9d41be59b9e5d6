"""Parent side of the sandbox: start a worker process (bubblewrap when present), talk to it with
a wall-clock deadline, watch its memory, and kill and discard it on any fault.

Isolation layers, strongest first (``Sandbox.layers`` reports which ran):

* ``bwrap``: new user, pid, net, ipc, uts and cgroup namespaces; the root file system is an
  allowlist of read-only binds (``/usr``, the Python prefix, ``sys.path``), ``/tmp`` a private
  size-capped tmpfs that is the only writable place, no ``/home``, no host ``/etc`` beyond the
  loader cache, ``--die-with-parent``;
* ``seccomp`` (pyseccomp, the ``sandbox`` extra): kills the process on exec, fork, sockets,
  ptrace, mounts, namespace changes and similar (threads stay allowed); without bubblewrap it
  also refuses every write-open and a private network namespace is tried with ``unshare``;
* ``rlimits``: CPU seconds, file size, open files, no core dumps, address space (CPU
  candidates only: ``RLIMIT_AS`` breaks CUDA, so GPU workers are held to ``memory_bytes`` by
  polling their resident memory from here instead);
* ``shield`` (every worker, where Landlock exists): a Landlock domain entered before the
  worker's first thread, so no thread of the candidate can open ``/proc/<pid>/mem`` (or ptrace)
  of a process outside it: bubblewrap's init, the tool broker, a compiler it runs;
* ``tools`` (tool workers: CUDA kernel files, ``TOOLS = True``, or ``tools=True``): a trusted
  broker (``broker.py``) started inside the same sandbox before the worker's first thread runs
  ptxas and the C compiler for Triton: only allowlisted programs with Triton's own argument
  forms, confined by its own Landlock domain; refusals are reported here (``tool_refusals``).

Without bubblewrap *and* seccomp there is no OS isolation and :class:`Sandbox` refuses to start.
A worker serves one candidate and is then discarded; the next is already warm (``WorkerPool``).
How its process is started (the isolation found here, bubblewrap's command line, the views, the
tools, the environment) is :mod:`uhop.sandbox.launch`; what runs inside it is ``child.py``.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from uhop.sandbox import broker, child
from uhop.sandbox.launch import (  # noqa: F401 - the rest re-exported: the sandbox's public names
    CHILD,
    DEFAULT_SANDBOX_ID,
    PASS_ENV,
    SandboxUnavailable,
    _bwrap_cmd,
    _env,
    _gpu_devices,
    _passed_env,
    _readable,
    bwrap_path,
    compiler_dirs,
    have_seccomp,
    libcuda_dir,
    resolve_isolation,
    sandbox_ids,
    tool_programs,
)

#: seconds a worker may take to start (interpreter + numpy) before the sandbox counts as broken
STARTUP_S = 60.0
#: categories a worker may report for a fault (anything else it says becomes ``crash``)
WORKER_CATEGORIES = frozenset({"memory", "disk", "forbidden", "crash", "bad-output", "bad-file", "input-mutated"})


@dataclass(frozen=True)
class Limits:
    """Per-candidate limits. ``wall_s`` bounds each request (load, one call, one timing batch);
    ``memory_bytes`` is added on top of the pre-warmed worker's own footprint."""

    wall_s: float = 20.0
    cpu_s: int = 60
    memory_bytes: int = 4 << 30
    file_bytes: int = 64 << 20
    disk_bytes: int = 256 << 20
    open_files: int = 256
    log_bytes: int = 1 << 20


class SandboxFault(Exception):
    """A candidate fault seen from the parent: ``category`` (timeout, memory, crash, forbidden,
    bad-output, disk, ...) and a one-line reason."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(f"{category}: {reason}")
        self.category = category
        self.reason = reason


def _tree_pids(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _pgid(pid: int) -> int:
    """``pid``'s process group (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return 0


def _rss(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


class Worker:
    """One sandboxed worker process. Start-up (interpreter + numpy) runs in the background from
    construction; :meth:`load` waits for it. Every request has a deadline; on timeout, death,
    memory overrun or a malformed reply the process group is killed and ``SandboxFault`` raised."""

    def __init__(self, isolation: str = "auto", limits: Limits | None = None, gpu: bool = False,
                 tools: bool = False) -> None:  # fmt: skip
        self.isolation = resolve_isolation(isolation)
        self.limits = limits or Limits()
        self.gpu = gpu
        self.tools = tools
        # the layers this worker is started with (the load reply adds "netns" where it worked)
        self.layers: list[str] = ["rlimits"] + (["seccomp"] if have_seccomp() else [])
        self.dead = False
        self.started = time.perf_counter()
        self._tmp: str | None = None
        self._buf = bytearray()
        python = [sys.executable, "-I", "-B", str(CHILD)]
        if self.isolation == "bwrap":
            cmd, home = _bwrap_cmd(self.limits, gpu, tools) + python, "/tmp"
            self.layers.insert(0, "bwrap")
        else:
            self._tmp = tempfile.mkdtemp(prefix="uhop-sandbox-")
            cmd, home = python, self._tmp
            self.layers.append("no-writes")
        self.workdir = f"{home}/work"
        self.passed_env = _passed_env()
        # start-up errors (bwrap, interpreter) land here; the worker moves fd 2 to its own log
        # before any candidate code runs
        self._err = tempfile.TemporaryFile()
        self._refusals: list[str] = []
        self._err_tail = b""
        env = _env(home)
        ids = sandbox_ids()
        if ids:
            env["UHOP_SANDBOX_IDS"] = f"{ids[0]}:{ids[1]}"
        if self.isolation != "bwrap":
            env["UHOP_SANDBOX_PRIVATE"] = home
            env["UHOP_SANDBOX_DISK_BYTES"] = str(self.limits.disk_bytes)
            readable = _readable(gpu, tools)
            env["UHOP_SANDBOX_READABLE"] = json.dumps(readable)
            env["UHOP_SANDBOX_LANDLOCK"] = json.dumps({"writable": self._writable(), "readable": readable,
                                                       "gpu": self.gpu})  # fmt: skip
            if ids:
                os.chown(home, *ids)
        if tools:
            env.update(self._tool_env(home))
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=env,
            cwd=home if self._tmp else "/", start_new_session=True, close_fds=True,
        )  # fmt: skip
        self._ready = False
        self._seq = 0
        for f in (self.proc.stdin, self.proc.stdout):  # 1 MiB pipes: fewer context switches per array
            try:
                fcntl.fcntl(f.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ
            except OSError:
                pass

    def _writable(self) -> list[str]:
        return [self._tmp, "/dev/null"] + (_gpu_devices() if self.gpu else []) if self._tmp else []

    def _tool_env(self, home: str) -> dict[str, str]:
        """The broker's configuration (read and dropped by the worker at start) and what Triton
        inside needs to pick the same programs without looking around."""
        progs = tool_programs()
        cfg = {**progs, "private": home, "readable": _readable(self.gpu, True), "writable": [home, "/dev/null"],
               "timeout_s": max(self.limits.wall_s, 1.0), "cpu_s": self.limits.cpu_s,
               "file_bytes": self.limits.file_bytes, "out_bytes": 1 << 20,
               # compilers get the candidate's own memory cap (a macro bomb in a 1 KB source)
               "as_bytes": self.limits.memory_bytes}  # fmt: skip
        env = {"UHOP_SANDBOX_TOOLS": json.dumps(cfg)}
        if progs["cc"]:
            env["CC"] = progs["cc"][0]
        for var in ("TRITON_PTXAS_PATH", "TRITON_PTXAS_BLACKWELL_PATH"):
            if os.environ.get(var):
                env[var] = os.environ[var]
        if self.gpu and libcuda_dir():
            env["TRITON_LIBCUDA_PATH"] = libcuda_dir()  # type: ignore[assignment]
        return env

    def tool_refusals(self) -> list[str]:
        """What the broker refused this worker's candidate, from the broker's own report channel
        (the start-up log, which the candidate holds no descriptor of)."""
        if not self.tools:
            return []
        if self._err.closed:
            return self._refusals
        try:
            data = os.pread(self._err.fileno(), 1 << 20, 0)
        except (OSError, ValueError):
            return []
        lines = data.decode(errors="replace").splitlines()
        return [_printable(ln[len(broker.REPORT) :], 300) for ln in lines if ln.startswith(broker.REPORT)]

    # ---- lifecycle -----------------------------------------------------------------------------
    def kill(self) -> None:
        if not self.dead:
            self.dead = True
            if self.tools:  # the broker's tools run in process groups of their own
                # Their groups first (read while the tree is intact): a compiler's helpers (cc1)
                # are in its group, and outlive it as orphans if only the tree is killed.
                tree = _tree_pids(self.proc.pid)
                for pgid in {_pgid(p) for p in tree} - {0, os.getpgid(0), self.proc.pid}:
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                for pid in reversed(tree):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL'd group
                pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f and f.close()
            except OSError:
                pass
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if not self._err.closed:  # the start-up log goes with the worker (a bounded copy of its refusals stays)
            self._refusals = self.tool_refusals()
            self._err.seek(0, os.SEEK_END)
            self._err.seek(max(self._err.tell() - 400, 0))
            self._err_tail = self._err.read(400)
            self._err.close()

    close = kill

    def __del__(self) -> None:
        try:
            self.kill()
        except Exception:
            pass

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # ---- transport -----------------------------------------------------------------------------
    def _death(self) -> SandboxFault:
        try:
            rc = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            rc = None
        self.kill()
        sig = -rc if rc is not None and rc < 0 else (rc - 128 if rc is not None and rc > 128 else 0)
        if sig == signal.SIGSYS:
            return SandboxFault("forbidden", "killed by the seccomp filter (a forbidden system call)")
        if sig == signal.SIGXCPU:
            return SandboxFault("timeout", f"CPU time limit ({self.limits.cpu_s} s) exceeded")
        if sig == signal.SIGKILL:  # not ours (we mark those dead first): the OOM killer, usually
            return SandboxFault("memory", "killed by SIGKILL (out of memory, or past the CPU hard limit)")
        if sig:
            try:
                name = signal.Signals(sig).name
            except ValueError:  # an exit code above 128 that is no signal (bwrap reports 128+N)
                return SandboxFault("crash", f"worker exited (code {rc}) in the middle of a request")
            return SandboxFault("crash", f"worker died from signal {name}")
        return SandboxFault("crash", f"worker exited (code {rc}) in the middle of a request")

    def _read_frame(self, deadline: float, max_bytes: int) -> bytes:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        need: int | None = None
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                if need is None and len(self._buf) >= 8:
                    (need,) = struct.unpack_from("<Q", self._buf)
                    if need > max_bytes:
                        self.kill()
                        raise SandboxFault("bad-output", f"reply of {need} bytes exceeds the {max_bytes}-byte cap")
                if need is not None and len(self._buf) >= 8 + need:
                    frame = bytes(self._buf[8 : 8 + need])
                    del self._buf[: 8 + need]
                    return frame
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise SandboxFault("timeout", f"no reply within {self.limits.wall_s:g} s wall clock")
                if sel.select(min(left, 0.05)):
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        raise self._death()
                    self._buf += chunk
                elif self.gpu and _rss(_tree_pids(self.proc.pid)) > self.limits.memory_bytes + (2 << 30):
                    self.kill()
                    raise SandboxFault("memory", f"resident memory above {self.limits.memory_bytes >> 20} MiB")
        finally:
            sel.close()

    def _write_all(self, data: bytes, deadline: float) -> None:
        """Write a request within the request's deadline: a worker that stops reading (a shrunk
        pipe, a forged early reply, then sleep) is killed, never waited on."""
        fd = self.proc.stdin.fileno()  # type: ignore[union-attr]
        os.set_blocking(fd, False)
        view = memoryview(data)
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_WRITE)
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise SandboxFault("timeout", f"the worker stopped reading its requests ({self.limits.wall_s:g} s)")
                if not sel.select(min(left, 0.05)):
                    continue
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    continue
                except OSError:  # EPIPE: the worker is gone
                    raise self._death() from None

    def request(
        self, header: dict[str, Any], arrays: Sequence[np.ndarray] = (), *, max_reply: int = 1 << 26,
        wall_s: float | None = None, raw: bool = False,
    ) -> tuple[dict[str, Any], list[np.ndarray]]:  # fmt: skip
        """Send a command; return the reply header and its arrays (plain ndarrays only).
        ``raw``: send the arrays as raw bytes with their shapes and dtypes in the header (many
        small arrays: ``np.load`` costs ~0.1 ms each); a reply may come back either way."""
        if self.dead:
            raise SandboxFault("crash", "worker already discarded")
        if not self._ready:
            try:  # start-up is the sandbox's time, not the candidate's: its own generous deadline
                self._read_frame(time.monotonic() + STARTUP_S, 1 << 16)
            except SandboxFault as exc:  # no candidate involved yet: the sandbox itself is broken
                self.kill()
                err = self._err_tail.decode(errors="replace").strip().replace("\n", " | ")
                raise SandboxUnavailable(f"the sandbox worker did not start ({exc.reason}): {err}") from None
            self._ready = True
        deadline = time.monotonic() + (wall_s or self.limits.wall_s)
        self._seq += 1
        header = dict(header, id=self._seq)
        if raw:
            arrays = [np.ascontiguousarray(a) for a in arrays]
            header["meta"] = [child.raw_meta(a) for a in arrays]
            data = child.pack(header, [a.tobytes() for a in arrays])
        else:
            data = child.pack(header, [child.npy(np.ascontiguousarray(a)) for a in arrays])
        self._write_all(data, deadline)
        frame = self._read_frame(deadline, max_reply)
        try:
            reply, blobs = child.unpack(frame)
            meta = reply.get("meta")
            if meta is not None:
                if not isinstance(meta, list) or len(meta) != len(blobs):
                    raise ValueError("raw arrays without matching shapes")
                out = [child.from_raw(b, m) for b, m in zip(blobs, meta, strict=True)]
            else:
                out = [child.from_npy(b) for b in blobs]
        except Exception as exc:
            self.kill()
            raise SandboxFault("bad-output", f"malformed reply from the worker: {exc}") from None
        for a in out:  # np.load(allow_pickle=False) only builds plain arrays; check anyway
            # numbers only (floats; integers are embedding indices sent back): no objects, no records
            if type(a) is not np.ndarray or a.dtype.kind not in "fciu":
                self.kill()
                raise SandboxFault("bad-output", f"reply holds a {type(a).__name__} of dtype {a.dtype}, expected a numeric array")
        if reply.get("id") != self._seq:  # a forged early reply, or a stray frame: never resynchronise
            self.kill()
            raise SandboxFault("crash", f"protocol violation: reply to request {reply.get('id')!r}, expected {self._seq}")
        if "error" in reply:
            cat = reply["error"] if reply["error"] in WORKER_CATEGORIES else "crash"
            raise SandboxFault(cat, _printable(reply.get("reason", ""), 300))
        return reply, out

    # ---- commands ------------------------------------------------------------------------------
    def load(self, source: str, filename: str, *, array: str = "numpy", device: str = "cpu",
             tools: bool | None = None) -> list[str]:  # fmt: skip
        """Send the candidate, apply limits and seccomp, import it. Returns the layers in force.
        ``tools`` (default: whether this worker was started with them) hands Triton the broker."""
        reply, _ = self.request({
            "cmd": "load", "source": source, "filename": filename, "workdir": self.workdir,
            "limits": asdict(self.limits), "log_bytes": self.limits.log_bytes, "array": array,
            "device": device, "seccomp": True, "deny_writes": self.isolation != "bwrap",
            "writable": self._writable(),
            "readable": _readable(self.gpu, self.tools), "tools": self.tools if tools is None else tools,
        })  # fmt: skip
        got = reply.get("layers") if isinstance(reply.get("layers"), list) else []
        if "landlock" in got and "no-writes" in self.layers:  # writes confined by path instead
            self.layers[self.layers.index("no-writes")] = "landlock"
        self.layers += [x for x in ("nonroot", "shield", "netns", "tmpfs", "tools") if x in got and x not in self.layers]
        return self.layers


def _printable(text: object, limit: int) -> str:
    """Candidate-controlled text, made safe to print and store (no terminal escapes)."""
    return "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in str(text)[:limit])


class WorkerPool:
    """Hands out fresh workers, keeping one spare starting in the background, so a candidate
    does not wait for an interpreter and numpy to start (about 0.3 s under bubblewrap)."""

    def __init__(self, isolation: str = "auto", limits: Limits | None = None, gpu: bool = False,
                 tools: bool | None = None) -> None:  # fmt: skip
        self.isolation = resolve_isolation(isolation)
        self.limits = limits or Limits()
        self.gpu = gpu
        self.tools = gpu if tools is None else tools  # CUDA kernel files get Triton's tools
        self._spare: Worker | None = None
        self._lock = threading.Lock()

    def take(self) -> Worker:
        with self._lock:
            w = self._spare if self._spare is not None and self._spare.proc.poll() is None else None
            if w is not None and w.passed_env != _passed_env():  # started under another environment
                w.kill()
                w = None
            if w is None:
                w = Worker(self.isolation, self.limits, self.gpu, self.tools)
            self._spare = Worker(self.isolation, self.limits, self.gpu, self.tools)
            return w

    def close(self) -> None:
        if self._spare is not None:
            self._spare.kill()
            self._spare = None


_pools: dict[tuple[str, Limits, bool, bool], WorkerPool] = {}


def pool(isolation: str = "auto", limits: Limits | None = None, gpu: bool = False,
         tools: bool | None = None) -> WorkerPool:  # fmt: skip
    """A process-wide pool per (isolation, limits, gpu, tools); ``tools`` defaults to ``gpu``."""
    key = (resolve_isolation(isolation), limits or Limits(), gpu, gpu if tools is None else tools)
    if key not in _pools:
        _pools[key] = WorkerPool(*key)
    return _pools[key]


@atexit.register
def _close_pools() -> None:
    for p in _pools.values():
        p.close()
