"""Refuse problems that cannot fit in memory before allocating anything.

Tuning a problem holds its inputs and output in the problem's dtype and, to validate every
candidate, the same arrays in float64 for the reference (``measure/validate.py``). So the
working set is at least ``bytes * (1 + 8 / itemsize)``; :func:`check_fits` refuses a problem
whose lower bound exceeds the memory available now (``MemAvailable`` on the host, free device
memory on a GPU), naming both sizes. A problem that passes can still run short (rotating
buffers, a backend's workspace); this check catches the hopeless ones in microseconds instead of
an ``ArrayMemoryError`` seconds into tuning.
"""

from __future__ import annotations

import os

from uhop.errors import ProblemTooLargeError
from uhop.ops.base import ITEMSIZE


def fmt_bytes(n: float) -> str:
    """``1.5 GB``-style size (decimal units, as ``free -h --si`` and datasheets print)."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def host_available_bytes() -> int | None:
    """Memory the host can give a new allocation now (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_available_bytes(device: str) -> int | None:
    """Free memory on ``device`` ('cpu' -> host; 'cuda:N' -> free device memory via torch)."""
    if device == "cpu":
        return host_available_bytes()
    try:
        import torch

        index = int(device.split(":")[1]) if ":" in device else 0
        return int(torch.cuda.mem_get_info(index)[0])
    except Exception:  # no torch, no CUDA, a bad index: the backends report those themselves
        return None


def working_set_bytes(problem) -> float:
    """Lower bound on tuning ``problem``: its arrays in its dtype plus the float64 reference copy."""
    nbytes = float(problem.bytes())
    return nbytes * (1 + 8 / ITEMSIZE.get(problem.dtype, 8))


def check_fits(problem, available: int | None = None) -> None:
    """Raise :class:`ProblemTooLargeError` when ``problem`` cannot fit in the memory available on
    its device (``available`` in bytes overrides the measurement, for tests). Allocates nothing."""
    need = working_set_bytes(problem)
    if available is None:
        available = device_available_bytes(problem.device)
    if available is None or need <= available:
        return
    raise ProblemTooLargeError(
        f"{problem.describe()} needs at least {fmt_bytes(need)} (inputs and output {fmt_bytes(problem.bytes())} "
        f"plus their float64 reference copy) but {fmt_bytes(available)} is available on {problem.device}; "
        "use smaller dims"
    )
