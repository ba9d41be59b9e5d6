"""Helper processes of a tuning run (the isolation worker, precompile builds, local executor
workers): fresh ``python -c`` processes, never forked (CUDA and BLAS thread pools do not survive
a fork) and never multiprocessing's spawn, which re-imports the caller's ``__main__`` (a script
without an ``if __name__ == "__main__"`` guard ran its top level again in every helper).

They import this very UHOP whatever the working directory holds (a folder named ``uhop`` there
would shadow it), see the parent's ``sys.path``, run in their own session and die with the parent
(:func:`die_with_parent`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from multiprocessing.connection import Connection

#: the directory holding this ``uhop`` package: first on a helper's path
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(entry: str, args: tuple[str, ...] = (), *, pass_fds: tuple[int, ...] = (),
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """Run ``entry`` (``"package.module:function"``, called without arguments; it reads
    ``sys.argv[1:]`` = ``args``) in a new Python process."""
    mod, fn = entry.split(":")
    boot = f"import sys; sys.path.insert(0, {ROOT!r}); from {mod} import {fn}; {fn}()"
    full = dict(os.environ if env is None else env)
    full["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else os.getcwd() for p in sys.path)
    return subprocess.Popen([sys.executable, "-c", boot, *args], pass_fds=pass_fds, env=full,
                            start_new_session=True, stdin=subprocess.DEVNULL)  # fmt: skip


def start_duplex(entry: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Connection, Connection]:
    """:func:`start` with two pipes framed by :mod:`multiprocessing.connection`: the helper gets
    (read fd, write fd) as ``sys.argv[1:3]`` (:func:`duplex_ends`); returns (process, send, recv)."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    try:
        proc = start(entry, (str(to_child_r), str(to_parent_w)), pass_fds=(to_child_r, to_parent_w), env=env)
    except BaseException:
        os.close(to_child_w)
        os.close(to_parent_r)
        raise
    finally:
        os.close(to_child_r)
        os.close(to_parent_w)
    return proc, Connection(to_child_w, readable=False), Connection(to_parent_r, writable=False)


def duplex_ends() -> tuple[Connection, Connection]:
    """In a helper started by :func:`start_duplex`: (recv, send)."""
    return Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)


def die_with_parent() -> None:
    """``PR_SET_PDEATHSIG``: this process gets SIGKILL when its parent exits (Linux; elsewhere
    a no-op, and the helpers' own parent checks or EOF on their pipes end them)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass
