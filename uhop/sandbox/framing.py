"""Length-prefixed frames on pipes: an 8-byte little-endian length, then the payload. Stdlib only:
the sandbox worker (``child.py``), the tool broker (``broker.py``) and the broker's client
(``toolshim.py``) load this file by path (none of them imports uhop).
"""

from __future__ import annotations

import os
import struct


def read_exact(fd: int, n: int) -> bytes:
    """Exactly ``n`` bytes from ``fd`` (a blocking pipe); EOFError if it ends first."""
    chunks, got = [], 0
    while got < n:
        c = os.read(fd, min(n - got, 1 << 20))
        if not c:
            raise EOFError
        chunks.append(c)
        got += len(c)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int, limit: int | None = None) -> bytes:
    """One frame's payload. EOFError if the pipe ends (before or within the frame); ValueError,
    with nothing of the payload read, for a frame longer than ``limit`` bytes."""
    (n,) = struct.unpack("<Q", read_exact(fd, 8))
    if limit is not None and n > limit:
        raise ValueError(f"frame of {n} bytes exceeds {limit}")
    return read_exact(fd, n)


def write_frame(fd: int, payload: bytes) -> None:
    write_all(fd, struct.pack("<Q", len(payload)) + payload)
