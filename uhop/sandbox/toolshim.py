"""The worker's side of the tool broker (``broker.py``). Stdlib only; the worker loads this file by
path (it never imports uhop).

* :func:`start` runs the broker, before the worker imports numpy or starts a thread;
* the worker then enters, still single-threaded, a Landlock domain of its own
  (``syscall_filter.shield``): every thread the candidate will ever have (BLAS and CUDA pools
  included) is in it, and a process in a Landlock domain cannot ptrace, or open
  ``/proc/<pid>/mem``, ``fd`` or ``environ`` of, a process outside it (the broker and the tools
  it runs);
* :class:`SubprocessShim` stands in for the ``subprocess`` module inside Triton (``run``,
  ``check_call``, ``check_output``) and forwards each call to the broker; :func:`install_triton`
  puts it in place in the trusted phase, before the candidate is imported.

The candidate can reach the shim and the broker's pipes; that gets it nothing the broker's
allowlist does not grant, and every refusal is reported to the parent on a channel it cannot
write.
"""

from __future__ import annotations

import base64
import errno
import importlib
import json
import os
import subprocess
import sys
import threading
import time

if __package__:  # imported as uhop.sandbox.toolshim (the parent, the tests)
    from . import framing
else:  # loaded by path in the worker (child._toolshim), which loads framing.py first
    framing = sys.modules["_uhop_framing"]

BROKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broker.py")
#: Triton modules that run programs on the CUDA path (3.6): ptxas, its --version, the C compiler
TRITON_MODULES = ("triton.knobs", "triton.runtime.build", "triton.backends.nvidia.compiler",
                  "triton.backends.nvidia.driver")  # fmt: skip


class BrokerError(Exception):
    """The broker could not be started or reached (not a candidate fault by itself)."""


class Client:
    """Framed JSON requests to the broker, one at a time (the pipe is a byte stream: two threads
    writing at once would garble it)."""

    def __init__(self, wfd: int, rfd: int, pid: int) -> None:
        self.wfd, self.rfd, self.pid = wfd, rfd, pid
        self.ready: dict | None = None
        self.shielded = False  # set by the worker once ``syscall_filter.shield`` succeeded
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def wait_ready(self, timeout_s: float = 30.0) -> dict:
        """The broker's start-up reply (it starts while the worker imports numpy)."""
        if self.ready is None:
            import selectors

            with selectors.DefaultSelector() as sel:
                sel.register(self.rfd, selectors.EVENT_READ)
                if not sel.select(timeout_s):
                    raise BrokerError(f"the tool broker did not start within {timeout_s:g} s")
            self.ready = self._read()
            if not self.ready.get("ready"):
                raise BrokerError(str(self.ready.get("reason", "the tool broker did not start")))
        return self.ready

    def _read(self) -> dict:
        try:
            frame = framing.read_frame(self.rfd, 16 << 20)
        except EOFError:
            raise EOFError("EOF from the tool broker") from None
        except ValueError:
            raise BrokerError("oversized reply from the tool broker") from None
        return json.loads(frame)

    def call(self, argv: list[str], cwd: str, timeout_s: float | None = None) -> dict:
        data = json.dumps({"argv": argv, "cwd": cwd, "timeout_s": timeout_s}).encode()
        with self._lock:
            try:
                framing.write_frame(self.wfd, data)
                return self._read()
            except (OSError, EOFError, ValueError) as exc:
                raise BrokerError(f"the tool broker is gone ({type(exc).__name__}: {exc})") from None

    def close(self) -> None:
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass


def start(cfg: dict) -> Client:
    """Start the broker (``cfg`` as the parent built it: programs, private dir, views, limits).
    Returns at once; :meth:`Client.wait_ready` waits for it."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    cfg = dict(cfg, rfd=req_r, wfd=rep_w, parent=os.getpid())
    # stderr (fd 2) is still the parent's start-up log here: the broker's report channel
    proc = subprocess.Popen(
        [sys.executable, "-I", "-B", BROKER, json.dumps(cfg)], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, pass_fds=(req_r, rep_w), close_fds=True,
    )  # fmt: skip
    os.close(req_r)
    os.close(rep_w)
    client = Client(req_w, rep_r, proc.pid)
    client.proc = proc
    return client


def _deliver(data: bytes, dest: object, default_fd: int) -> bytes | None:
    """Route a tool's output as ``subprocess`` would for ``dest``; returns it for PIPE."""
    if dest == subprocess.PIPE:
        return data
    if dest == subprocess.DEVNULL or not data:
        return None
    if dest is None:
        dest = default_fd
    try:
        fd = dest if isinstance(dest, int) else dest.fileno()  # type: ignore[attr-defined]
        if not isinstance(dest, int):
            dest.flush()  # type: ignore[attr-defined]
        framing.write_all(fd, data)
    except (OSError, AttributeError, ValueError):
        # Triton passes a log file opened for reading (``stderr=flog``): append by name instead
        name = getattr(dest, "name", None)
        if isinstance(name, str):
            with open(name, "ab") as f:
                f.write(data)
    return None


class ToolFailed(subprocess.CalledProcessError):
    """``CalledProcessError`` whose message names the tool's first error line (else its last
    output line): a sandboxed compile error is otherwise only an exit status in the rejection."""

    def __init__(self, returncode, cmd, output=None, stderr=None, tail: bytes = b"") -> None:
        super().__init__(returncode, cmd, output, stderr)
        lines = [ln.strip() for ln in tail.decode(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        self.tail = (errors or lines or [""])[0 if errors else -1][:200]

    def __str__(self) -> str:
        name = os.path.basename(str(self.cmd[0])) if isinstance(self.cmd, list) and self.cmd else "tool"
        return f"{name} failed with exit status {self.returncode}" + (f": {self.tail}" if self.tail else "")


class SubprocessShim:
    """The part of the ``subprocess`` module Triton uses, forwarded to the broker. Programs run
    with stdin from /dev/null and the broker's fixed environment (``env=`` is ignored)."""

    PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL
    CalledProcessError, TimeoutExpired = subprocess.CalledProcessError, subprocess.TimeoutExpired
    CompletedProcess, SubprocessError = subprocess.CompletedProcess, subprocess.SubprocessError

    def __init__(self, client: Client) -> None:
        self.client = client

    def run(self, args, *, stdin=None, input=None, stdout=None, stderr=None, capture_output=False, check=False,
            timeout=None, cwd=None, text=None, universal_newlines=None, encoding=None, errors=None, shell=False,
            **_ignored):  # fmt: skip
        if shell:
            raise PermissionError(errno.EPERM, "the tool broker runs no shell")
        if input is not None or stdin not in (None, subprocess.DEVNULL):
            raise ValueError("tools run by the broker read nothing: stdin is /dev/null")
        argv = [os.fspath(args)] if isinstance(args, (str, bytes, os.PathLike)) else [os.fspath(a) for a in args]
        argv = [a.decode() if isinstance(a, bytes) else a for a in argv]
        if capture_output:
            stdout = stderr = subprocess.PIPE
        t0 = time.monotonic()
        reply = self.client.call(argv, os.fspath(cwd) if cwd is not None else os.getcwd(), timeout)
        if "refused" in reply:
            raise PermissionError(errno.EPERM, f"the tool broker refused: {reply['refused']}")
        if "error" in reply:
            raise OSError(errno.EIO, f"the tool broker could not run {argv[0]}: {reply['error']}")
        out, err = base64.b64decode(reply["stdout"]), base64.b64decode(reply["stderr"])
        rc = int(reply["returncode"])
        if reply.get("timed_out") and timeout is not None:
            raise subprocess.TimeoutExpired(argv, time.monotonic() - t0, out, err)
        if stderr == subprocess.STDOUT:
            out, err, stderr = out + err, b"", subprocess.DEVNULL
        got_out, got_err = _deliver(out, stdout, 1), _deliver(err, stderr, 2)
        if text or universal_newlines or encoding or errors:
            enc = encoding or "utf-8"
            got_out = got_out.decode(enc, errors or "strict") if got_out is not None else None
            got_err = got_err.decode(enc, errors or "strict") if got_err is not None else None
        if check and rc != 0:
            raise ToolFailed(rc, argv, got_out, got_err, tail=err or out)
        return subprocess.CompletedProcess(argv, rc, got_out, got_err)

    def check_call(self, args, **kw) -> int:
        return self.run(args, check=True, **kw).returncode

    def check_output(self, args, **kw):
        return self.run(args, stdout=subprocess.PIPE, check=True, **kw).stdout

    def call(self, args, **kw) -> int:
        return self.run(args, **kw).returncode


def install_triton(shim: SubprocessShim) -> list[str]:
    """Replace ``subprocess`` in the Triton modules that run programs. Returns those patched
    (none where Triton is not installed)."""
    patched = []
    for name in TRITON_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # not installed, or a backend that does not load here
            continue
        if getattr(mod, "subprocess", None) is subprocess:
            mod.subprocess = shim
            patched.append(name)
    try:  # the launcher build's cache key asks ``platform.architecture()``, which runs ``file``
        # on the interpreter (a vfork the filter kills): answer it now, while exec is allowed
        from triton.runtime.build import platform_key

        platform_key()
    except Exception:
        pass
    return patched
