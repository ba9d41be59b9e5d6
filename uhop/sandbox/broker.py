"""The tool broker: runs the few compiler programs Triton needs (ptxas, the C compiler) on behalf
of a sandboxed worker that may never exec anything itself. Stdlib only; run by path
(``python -I -B broker.py CONFIG``) by the worker (``child.py``) at its start, before numpy,
threads, limits or seccomp exist in it, and only for workers started with tools.

Contract:

* a request is one frame (8-byte little-endian length + JSON) ``{"argv": [...], "cwd": str,
  "timeout_s": float}`` on the request pipe; the reply ``{"returncode", "stdout", "stderr"
  (base64, each capped at ``out_bytes``), "timed_out"}`` or ``{"refused": reason}``;
* ``argv[0]`` must resolve (bare names through a fixed PATH, relative paths against ``cwd``,
  symlinks followed) to one of the exact programs named in the config; the broker then execs
  that canonical path, never the caller's spelling (gcc finds cc1 and as relative to argv[0]);
* the arguments must be the forms Triton 3.6 passes (:func:`check_cc`, :func:`check_ptxas`);
  inputs, outputs and ``cwd`` lie beneath the worker's private directory;
* the tool gets a fixed environment, stdin from /dev/null, its own process group, rlimits (CPU,
  address space, file size, no core) and a wall-clock limit after which its group is killed;
* every refusal is also written to the broker's stderr, which is the parent's start-up log (the
  candidate holds no descriptor of it): the parent rejects the candidate as ``forbidden`` even
  if it swallowed the refusal;
* the broker is non-dumpable, confined by Landlock to the sandbox's file-system view (reads
  beneath ``readable``, writes beneath the private directory), and dies with the worker
  (``PR_SET_PDEATHSIG``, EOF on its request pipe); while a tool runs it watches the worker (a
  hang-up on the request pipe, a new parent pid) and kills the tool's process group when the
  worker is gone, so no compiler helper outlives a killed check.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

#: the only environment a tool sees
TOOL_PATH = "/usr/bin:/bin"
MAX_REQUEST = 1 << 20
REPORT = "uhop-broker refused: "
CC_FLAGS = frozenset({"-O3", "-shared", "-fPIC", "-Wno-psabi"})
#: ccflags Triton's NVIDIA driver adds (none in 3.6); anything here must not make gcc run or load
#: another program (-B, -wrapper, -fplugin, -specs, @file, -x, --sysroot stay refused)
CC_EXTRA: frozenset[str] = frozenset()
PTXAS_FLAGS = frozenset({"-v", "-lineinfo", "-suppress-debug-info", "-g", "--fmad=false", "--fmad=true"})
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_GPU = re.compile(r"--gpu-name=sm_\d{2,3}[af]?")


class Refused(Exception):
    pass


def _beneath(path: str, cwd: str, root: str) -> str:
    real = os.path.realpath(os.path.join(cwd, path))
    if not (real == root or real.startswith(root.rstrip("/") + "/")):
        raise Refused(f"path {path!r} lies outside the private directory {root}")
    return real


def _plain(arg: str) -> bool:
    return bool(arg) and not arg.startswith(("-", "@")) and all(c.isprintable() for c in arg)


def check_cc(args: list[str], cwd: str, private: str) -> None:
    """Exactly what ``triton.runtime.build._build`` passes: SRC.c -O3 -shared -fPIC -Wno-psabi
    -o OUT.so -lNAME|-l:FILE -LDIR -IDIR (DIR absolute), source and output beneath ``private``."""
    src = out = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in CC_FLAGS or a in CC_EXTRA:
            pass
        elif a == "-o" and i + 1 < len(args) and _plain(args[i + 1]) and args[i + 1].endswith(".so") and out is None:
            i += 1
            out = _beneath(args[i], cwd, private)
        elif a.startswith("-l:") and _NAME.fullmatch(a[3:]) or a.startswith("-l") and _NAME.fullmatch(a[2:]):
            pass
        elif a[:2] in ("-L", "-I") and a[2:3] == "/" and all(c.isprintable() for c in a):
            pass
        elif _plain(a) and a.endswith(".c") and src is None:
            src = _beneath(a, cwd, private)
        else:
            raise Refused(f"C compiler argument {a[:80]!r} is not one Triton's build passes")
        i += 1
    if src is None or out is None:
        raise Refused("the C compiler needs one .c source and -o OUT.so")


def check_ptxas(args: list[str], cwd: str, private: str) -> None:
    """``--version`` alone, or what Triton's ``make_cubin`` passes: -lineinfo,
    -suppress-debug-info, -g, --fmad=false, -v, --opt-level N, --gpu-name=sm_NN[a], IN.ptx, -o OUT."""
    if args == ["--version"]:
        return
    src = out = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in PTXAS_FLAGS or _GPU.fullmatch(a):
            pass
        elif a == "--opt-level" and i + 1 < len(args) and args[i + 1] in ("0", "1", "2", "3"):
            i += 1
        elif a == "-o" and i + 1 < len(args) and _plain(args[i + 1]) and out is None:
            i += 1
            out = _beneath(args[i], cwd, private)
        elif _plain(a) and a.endswith(".ptx") and src is None:
            src = _beneath(a, cwd, private)
        else:
            raise Refused(f"ptxas argument {a[:80]!r} is not one Triton's compiler passes")
        i += 1
    if src is None or out is None:
        raise Refused("ptxas needs one .ptx input and -o OUT")


class Broker:
    def __init__(self, cfg: dict) -> None:
        self.private = os.path.realpath(cfg["private"])
        # canonical path -> argument checker; an allowlisted program is run by this path only
        self.programs: dict[str, object] = {}
        for kind, check in (("cc", check_cc), ("ptxas", check_ptxas)):
            for p in cfg.get(kind, []):
                if p and os.path.isfile(p):
                    self.programs[os.path.realpath(p)] = check
        self.timeout_s = float(cfg.get("timeout_s", 60.0))
        self.cpu_s = int(cfg.get("cpu_s", 60))
        self.as_bytes = int(cfg.get("as_bytes", 16 << 30))
        self.file_bytes = int(cfg.get("file_bytes", 64 << 20))
        self.out_bytes = int(cfg.get("out_bytes", 1 << 20))
        # the worker, watched while a tool runs: its end of the request pipe (hang-up when it is
        # gone) and its pid (we are reparented when it dies)
        self.worker_fd: int | None = int(cfg["rfd"]) if "rfd" in cfg else None
        self.parent: int | None = int(cfg["parent"]) if "parent" in cfg else None

    def orphaned(self, pgid: int) -> None:
        """The worker died while a tool ran: kill the tool's process group (a compiler's helpers,
        cc1 and as, are in it and would outlive gcc as orphans) and exit. The parent-death signal
        cannot be relied on for this: in the fallback the worker's Landlock domain scopes signals,
        and the kernel checks a parent-death signal against the dying worker's domain, so it never
        reaches the broker (it lives outside that domain)."""
        _killpg(pgid)
        os._exit(0)

    def resolve(self, argv0: str, cwd: str) -> str:
        if not isinstance(argv0, str) or not argv0 or "\0" in argv0:
            raise Refused("no program named")
        found = shutil.which(argv0, path=TOOL_PATH) if "/" not in argv0 else os.path.join(cwd, argv0)
        real = os.path.realpath(found) if found else ""
        if real not in self.programs:
            raise Refused(f"program {argv0[:120]!r} is not an allowed tool")
        return real

    def handle(self, req: object) -> dict:
        if not isinstance(req, dict):
            raise Refused("a request must be a JSON object")
        argv, cwd = req.get("argv"), req.get("cwd") or self.private
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise Refused("argv must be a non-empty list of strings")
        if not isinstance(cwd, str):
            raise Refused("cwd must be a string")
        cwd = _beneath(cwd, self.private, self.private)
        exe = self.resolve(argv[0], cwd)
        self.programs[exe](argv[1:], cwd, self.private)  # type: ignore[operator]
        t = req.get("timeout_s")
        timeout = min(float(t), self.timeout_s) if isinstance(t, (int, float)) and t > 0 else self.timeout_s
        return self.run([exe, *argv[1:]], cwd, timeout)

    def _limits(self) -> None:  # runs in the tool's process between fork and exec
        import resource

        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no tool outlives the broker
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_s, self.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (self.as_bytes, self.as_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_bytes, self.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def run(self, argv: list[str], cwd: str, timeout: float) -> dict:
        env = {"PATH": TOOL_PATH, "LANG": "C", "HOME": self.private, "TMPDIR": self.private}
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, process_group=0, preexec_fn=self._limits,
        )  # fmt: skip
        ofd, efd = proc.stdout.fileno(), proc.stderr.fileno()  # type: ignore[union-attr]
        bufs = {ofd: bytearray(), efd: bytearray()}
        deadline, timed_out = time.monotonic() + timeout, False
        poll, reading = select.poll(), set(bufs)
        for fd in bufs:
            poll.register(fd, select.POLLIN)
        if self.worker_fd is not None:  # no events asked: only POLLHUP, once the worker is gone
            poll.register(self.worker_fd, 0)
        while reading:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for fd, ev in poll.poll(min(left, 1.0) * 1000):
                if fd == self.worker_fd:
                    if ev & (select.POLLHUP | select.POLLERR):
                        self.orphaned(proc.pid)
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    poll.unregister(fd)
                    reading.discard(fd)
                elif len(bufs[fd]) < self.out_bytes:  # past the cap: drained, not kept
                    bufs[fd] += chunk[: self.out_bytes - len(bufs[fd])]
            if self.parent is not None and os.getppid() != self.parent:
                self.orphaned(proc.pid)
        if timed_out:
            _killpg(proc.pid)
        try:
            rc = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            _killpg(proc.pid)
            rc = proc.wait()
        _killpg(proc.pid)  # helpers the tool left behind in its group
        out, err = bytes(bufs[ofd]), bytes(bufs[efd])
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        if timed_out:
            err += f"\n[uhop broker: killed after {timeout:g} s]\n".encode()
        return {"returncode": rc, "stdout": base64.b64encode(out).decode(), "stderr": base64.b64encode(err).decode(),
                "timed_out": timed_out}  # fmt: skip


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _prctl(option: int, arg: int) -> int:
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


def _sibling(name: str):
    """A stdlib module next to this file, loaded by path: this program runs with ``-I`` and its
    directory is never on sys.path."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_uhop_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _confine(readable: list[str], writable: list[str]) -> bool:
    """Landlock on the broker and so on every tool it starts: reads and execution beneath
    ``readable``, reads and writes (never execution: a tool runs nothing the candidate wrote)
    beneath ``writable``, no TCP, no signals or abstract sockets out of the domain (where the
    ABI has them). Returns False where Landlock is unavailable."""
    return _sibling("syscall_filter").landlock(writable, readable, exec_writable=False)


def main() -> None:
    sys.dont_write_bytecode = True
    cfg = json.loads(sys.argv[1])
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the worker
    if os.getppid() != int(cfg["parent"]):  # the worker died before the line above
        os._exit(1)
    _prctl(4, 0)  # PR_SET_DUMPABLE 0: no /proc/<pid>/mem, fd or environ access from others
    rfd, wfd = int(cfg["rfd"]), int(cfg["wfd"])
    framing = _sibling("framing")

    def reply(obj: dict) -> None:
        framing.write_frame(wfd, json.dumps(obj).encode())

    broker = Broker(cfg)
    confined = _confine(list(cfg.get("readable", [])), list(cfg.get("writable", []))) if cfg.get("confine", True) else False
    if cfg.get("confine", True) and not confined:
        reply({"ready": False, "reason": "Landlock is unavailable: the tool broker cannot be confined"})
        os._exit(3)
    reply({"ready": True, "pid": os.getpid(), "confined": confined})
    while True:
        try:
            req = json.loads(framing.read_frame(rfd, MAX_REQUEST))
        except EOFError:
            os._exit(0)
        except (ValueError, OSError) as exc:  # a garbled stream cannot be resynchronised
            _report(f"malformed request ({exc})"[:300])
            try:
                reply({"refused": "malformed request"})
            finally:
                os._exit(2)
        try:
            out = broker.handle(req)
        except Refused as exc:
            _report(str(exc))
            out = {"refused": str(exc)}
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        try:
            reply(out)
        except OSError:
            os._exit(0)


#: refusals reported on the trusted channel (the parent's start-up log, a file in its TMPDIR):
#: one rejects the candidate; more are counted, never written, so a flood cannot fill the disk
MAX_REPORTS = 16
_reported = [0]


def _report(reason: str) -> None:
    """The trusted channel: one line on the broker's stderr (the parent's start-up log), for the
    first :data:`MAX_REPORTS` refusals only."""
    _reported[0] += 1
    if _reported[0] > MAX_REPORTS:
        return
    line = REPORT + "".join(c if c.isprintable() else "?" for c in reason)[:300] + "\n"
    try:
        os.write(2, line.encode())
    except OSError:
        pass


if __name__ == "__main__":
    main()
