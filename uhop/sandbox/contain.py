"""Crash containment for *trusted* kernels (UHOP's own templates), which run in-process.

Not a security boundary: a built-in template is trusted not to be malicious, but generated code
can still segfault, hang or abort (a bad tile config, a compiler bug). :func:`probe` runs the
first call of a freshly compiled kernel in a forked child with a wall-clock limit, so such a
failure becomes a classified result instead of taking the tuner down; only a kernel that survived
its probe is then called in-process. CPU only: CUDA contexts do not survive ``fork`` (GPU
templates are probed through :class:`uhop.sandbox.worker.Worker` kernel files instead).
"""

from __future__ import annotations

import os
import selectors
import signal
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from uhop.sandbox import child


@dataclass(frozen=True)
class Probe:
    """``status`` is ok | crash | timeout | memory; ``output`` the child's result (numpy) if ok."""

    status: str
    reason: str = ""
    output: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def probe(kernel: Callable[..., Any], args: Sequence[Any], timeout_s: float = 30.0) -> Probe:
    """Call ``kernel(*args)`` once in a forked child; never raises for a kernel fault."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no return from this branch
        code = 1
        try:
            os.close(r)
            import faulthandler

            faulthandler.disable()  # the parent reports the signal; no traceback spew on its stderr
            out = kernel(*args)
            if hasattr(out, "detach"):
                out = out.detach().cpu().numpy()
            msg = child.pack({"ok": True}, [child.npy(np.ascontiguousarray(out))])
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as data
            kind = "memory" if isinstance(exc, MemoryError) else "crash"
            msg = child.pack({"error": kind, "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
        try:
            view = memoryview(msg)
            while view:
                view = view[os.write(w, view) :]
        finally:
            os._exit(code)
    os.close(w)
    try:
        data, timed_out = _read_all(r, time.monotonic() + timeout_s)
    finally:
        os.close(r)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return Probe("timeout", f"no result within {timeout_s:g} s")
    if os.WIFSIGNALED(status):
        return Probe("crash", f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}")
    try:
        (n,) = struct.unpack_from("<Q", data)
        header, blobs = child.unpack(data[8 : 8 + n])
    except Exception:
        return Probe("crash", f"exited with status {os.WEXITSTATUS(status)} without a result")
    if "error" in header:
        return Probe(str(header["error"]), str(header.get("reason", "")))
    return Probe("ok", "", child.from_npy(blobs[0]))


def _read_all(fd: int, deadline: float) -> tuple[bytes, bool]:
    chunks = []
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return b"".join(chunks), True
            if sel.select(left):
                c = os.read(fd, 1 << 20)
                if not c:
                    return b"".join(chunks), False
                chunks.append(c)
