"""``uhop.Buffer``: one array with copies in several places, and where to run an op on it.

A :class:`Buffer` wraps an array that may live on the host (numpy), on a CUDA device (a torch
tensor; CuPy and other DLPack arrays are taken zero-copy), in an OpenCL context (a
``pyopencl.array.Array``) or in an IREE device buffer. It records which copies are valid and which
location was written last, copies at most once per write (a valid copy is reused until the next
write invalidates it), and counts every copy between locations in :data:`TRANSFERS` (count,
bytes, seconds). Conversions that share memory (numpy <-> torch CPU, CuPy -> torch through
DLPack) are not transfers and are not counted.

UHOP calls take Buffers and return Buffers (``uhop.ops.softmax(buf)``, ``@uhop.optimize``
functions): :func:`apply` asks :func:`place` where the op runs, takes the inputs' copies there
(copying only what is missing) and wraps the result, which stays where it was computed until it
is read. A chain of calls on Buffers therefore moves each input to the device once and the
result back once, when the program reads it (``buf.numpy()``).

Locations are the strings ``"host"``, ``"cuda:N"``, ``"opencl"`` and ``"iree"``.

**Placement** (:func:`place`): the op runs where the estimated time of moving the missing inputs
there plus computing there is least. Move time is bytes over the host<->device link rate (the
median rate of this process's own transfers of at least 1 MiB, else ``LINK_BPS``); compute time
is the roofline bound ``max(flops / peak FLOP/s, bytes / peak bandwidth)`` from the device's
hardware manifest (measured figures from ``uhop hw probe`` where present); each copy and each
device launch adds ``LATENCY_S``. Candidates are the host,
every CUDA device holding an input, CUDA device 0 when torch sees one, and OpenCL only when every
input is already there (the OpenCL backend is a way to avoid a transfer, not a reason for one).

**Writes**: UHOP's kernels never write their inputs. A program that changes a copy in place
(``buf.numpy()[0] = 1``) calls ``buf.mark_written("host")``, which makes that copy the only valid
one. ``Buffer(..., managed=True)`` puts the data in CUDA managed memory (``cudaMallocManaged``
through CuPy): host and device address the same pages, so no explicit copy is made or counted;
the driver migrates pages on first touch (``benchmarks/buffer_chain.py`` measures both).
"""

from __future__ import annotations

import ctypes
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uhop.errors import InputError

log = logging.getLogger("uhop")

#: host<->device bytes/s assumed before any transfer was measured: PCIe 4.0 x16 as copies of
#: pageable memory achieve it (about 25 GB/s), a conservative figure for PCIe 5 and NVLink-C2C
LINK_BPS = 25e9
#: fixed seconds per host<->device copy and per device launch (driver + synchronisation floors,
#: about 10 us each on PCIe GPUs): what keeps small ops where their data is
LATENCY_S = 10e-6


# ---- transfer accounting ----------------------------------------------------------------------
@dataclass
class TransferLog:
    """Copies between locations: count, bytes and seconds, in total and per ``(src, dst)``."""

    count: int = 0
    bytes: int = 0
    seconds: float = 0.0
    by_route: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # route -> [count, bytes, s]
    rates: list[float] = field(default_factory=list)  # bytes/s of copies >= 1 MiB (link estimate)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, src: str, dst: str, nbytes: int, seconds: float) -> None:
        with self._lock:
            self.count += 1
            self.bytes += nbytes
            self.seconds += seconds
            r = self.by_route.setdefault((src, dst), [0, 0, 0.0])
            r[0], r[1], r[2] = r[0] + 1, r[1] + nbytes, r[2] + seconds
            if nbytes >= 1 << 20 and seconds > 0 and "host" in (src, dst):
                self.rates = [*self.rates[-31:], nbytes / seconds]

    def snapshot(self) -> dict[str, Any]:
        """Plain data: ``{"count", "bytes", "seconds", "routes": {"host->cuda:0": {...}}}``."""
        with self._lock:
            routes = {f"{s}->{d}": {"count": int(c), "bytes": int(b), "seconds": t} for (s, d), (c, b, t) in self.by_route.items()}
            return {"count": self.count, "bytes": self.bytes, "seconds": self.seconds, "routes": routes}

    def reset(self) -> None:
        with self._lock:
            self.count, self.bytes, self.seconds = 0, 0, 0.0
            self.by_route.clear()

    def link_bps(self) -> float:
        """Measured host<->device bytes/s (median of recent large copies), else ``LINK_BPS``."""
        with self._lock:
            return statistics.median(self.rates) if self.rates else LINK_BPS


#: every copy any Buffer made in this process
TRANSFERS = TransferLog()


# ---- converting between libraries ---------------------------------------------------------------
def _is_torch(x: Any) -> bool:
    return hasattr(x, "is_contiguous") and type(x).__module__.startswith("torch")


def _is_opencl(x: Any) -> bool:
    return type(x).__module__.startswith("pyopencl")


def _is_iree(x: Any) -> bool:
    return type(x).__module__.startswith("iree")


def location_of(x: Any) -> str:
    """Where an array lives: ``host``, ``cuda:N``, ``opencl`` or ``iree``."""
    if isinstance(x, np.ndarray):
        return "host"
    if _is_torch(x):
        return "host" if x.device.type == "cpu" else f"{x.device.type}:{x.device.index or 0}"
    if _is_opencl(x):
        return "opencl"
    if _is_iree(x):
        return "iree"
    if hasattr(x, "__dlpack_device__"):
        kind, index = x.__dlpack_device__()
        return "host" if int(kind) == 1 else f"cuda:{index}"  # DLPack kDLCPU = 1, kDLCUDA = 2
    raise InputError(f"Buffer: expected a numpy array, torch tensor, pyopencl array, IREE array or DLPack array, got {type(x).__name__}")


def _normalize(x: Any) -> Any:
    """The form a location keeps: numpy on the host, torch on CUDA (CuPy etc. through DLPack,
    zero-copy), the object itself for OpenCL and IREE."""
    if isinstance(x, np.ndarray) or _is_opencl(x) or _is_iree(x):
        return x
    if _is_torch(x):
        return x.detach().numpy() if x.device.type == "cpu" else x
    import torch

    t = torch.from_dlpack(x)
    return t.numpy() if t.device.type == "cpu" else t


def _sync(where: str) -> None:
    if where.startswith("cuda"):
        import torch

        torch.cuda.synchronize(where)


def device_to_host(x: Any) -> np.ndarray:
    """A CUDA tensor's values as a numpy array. From 1 MiB up through page-locked memory from
    torch's caching host allocator: ``x.cpu()`` writes into fresh pageable pages, which the H100
    host filled at 1.1-1.3 GB/s (5 results of 64 MiB took 274 ms in ``buffer_chain_h100.json``);
    a pinned block is written at PCIe speed and is reused once the array is dropped. Up to
    256 MiB per array, so that results a program keeps do not lock much of the host's memory."""
    if 1 << 20 <= x.numel() * x.element_size() <= 1 << 28:
        import torch

        try:
            out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            out.copy_(x)
            return out.numpy()
        except RuntimeError:  # no page-locked memory to be had: the pageable path
            pass
    return x.cpu().numpy()


def _copy(x: Any, src: str, dst: str) -> Any:
    """A copy of ``x`` (at ``src``) at ``dst``; through the host where no direct path exists."""
    if src == dst:
        return x
    if src != "host" and dst != "host" and not (src.startswith("cuda") and dst.startswith("cuda")):
        return _copy(_copy(x, src, "host"), "host", dst)  # two counted transfers: no interop path
    if dst == "host":
        if src.startswith("cuda"):
            return device_to_host(x)
        if src == "opencl":
            return x.get()
        if src == "iree":
            return np.asarray(x.to_host())
    if dst.startswith("cuda"):
        import torch

        return torch.from_numpy(np.ascontiguousarray(x)).to(dst) if src == "host" else x.to(dst)
    if dst == "opencl":
        import pyopencl.array as cla

        from uhop.backends.opencl import cl_device

        return cla.to_device(cl_device().queue, np.ascontiguousarray(x))
    if dst == "iree":
        import iree.runtime as ireert

        return ireert.asdevicearray(ireert.get_device("local-task"), np.ascontiguousarray(x))
    raise InputError(f"Buffer: unknown location {dst!r}; expected host, cuda:N, opencl or iree")


def _prefetch(ptr: int, nbytes: int, device: str) -> None:
    """Migrate managed pages to ``device`` in bulk (``cudaMemPrefetchAsync``) rather than one
    fault at a time on the kernel's first touch; a no-op where the call is not available."""
    try:
        import cupy

        dev = int(device.split(":")[1]) if ":" in device else 0
        cupy.cuda.runtime.memPrefetchAsync(ptr, nbytes, dev, cupy.cuda.get_current_stream().ptr)
    except Exception as exc:  # e.g. a device without concurrent managed access: pages fault in
        log.debug("managed prefetch to %s skipped: %s", device, exc)


# ---- the buffer -------------------------------------------------------------------------------
class Buffer:
    """An array with valid copies in one or more locations (see the module docstring).

    ``Buffer(x)`` wraps ``x`` where it lives (no copy); ``managed=True`` (CUDA, needs CuPy) copies
    it once into managed memory that host and device share."""

    __slots__ = ("shape", "dtype", "nbytes", "_copies", "newest", "_managed", "_lock", "__weakref__")

    def __init__(self, data: Any, *, managed: bool = False, device: str = "cuda:0") -> None:
        if isinstance(data, Buffer):
            raise InputError("Buffer: data is already a Buffer; pass it as is")
        where = location_of(data)
        x = _normalize(data)
        self.shape = tuple(int(d) for d in x.shape)
        self.dtype = np.dtype(str(x.dtype).removeprefix("torch."))
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._copies: dict[str, Any] = {where: x}
        self.newest = where
        self._managed: Any = None
        self._lock = threading.Lock()
        if managed:
            self._to_managed(device)

    def _to_managed(self, device: str) -> None:
        import cupy
        import torch

        host = self.to("host")
        with cupy.cuda.Device(int(device.split(":")[1]) if ":" in device else 0):
            mem = cupy.cuda.malloc_managed(max(self.nbytes, 1))
            dev = cupy.ndarray(self.shape, dtype=self.dtype, memptr=mem)
        view = np.ctypeslib.as_array((ctypes.c_byte * max(self.nbytes, 1)).from_address(mem.ptr))
        view = view[: self.nbytes].view(self.dtype).reshape(self.shape)
        view[...] = host  # written by the CPU
        _prefetch(mem.ptr, self.nbytes, device)
        self._managed = mem
        # through the CUDA array interface, zero-copy: CuPy exports managed memory to DLPack as
        # kDLCUDAManaged, which torch's from_dlpack refuses ("Unsupported device_type: 13", H200)
        self._copies = {"host": view, device: torch.as_tensor(dev, device=device)}
        self.newest = device

    @property
    def managed(self) -> bool:
        return self._managed is not None

    @property
    def locations(self) -> tuple[str, ...]:
        """Where valid copies are, the newest first."""
        return (self.newest, *(w for w in self._copies if w != self.newest))

    def has(self, where: str) -> bool:
        return where in self._copies

    def to(self, where: str) -> Any:
        """The array at ``where`` (numpy for ``host``, a torch tensor for ``cuda:N``, a pyopencl
        array for ``opencl``, an IREE array for ``iree``), copied from the newest copy only if
        no valid copy is there. Do not write to it without :meth:`mark_written`."""
        x = self._copies.get(where)
        if x is not None:
            if self._managed is not None and where == "host":
                _sync(self.newest)  # the GPU may still be writing the shared pages
            return x
        with self._lock:
            x = self._copies.get(where)
            if x is None:
                src = self.newest
                _sync(src)
                t0 = time.perf_counter()
                x = _copy(self._copies[src], src, where)
                _sync(where)
                if where == "opencl":
                    x.queue.finish()
                hops = [(src, where)] if "host" in (src, where) or src[:4] == where[:4] == "cuda" else [(src, "host"), ("host", where)]
                dt = (time.perf_counter() - t0) / len(hops)
                for s, d in hops:
                    TRANSFERS.record(s, d, self.nbytes, dt)
                self._copies[where] = x
        return x

    def numpy(self) -> np.ndarray:
        return self.to("host")

    def torch(self, device: str = "cpu") -> Any:
        import torch

        return torch.from_numpy(self.to("host")) if device == "cpu" else self.to(str(torch.device(device)))

    def opencl(self) -> Any:
        return self.to("opencl")

    def mark_written(self, where: str) -> None:
        """The copy at ``where`` was changed in place: it becomes the only valid copy."""
        if where not in self._copies:
            raise InputError(f"Buffer.mark_written: where={where!r} holds no copy; valid: {', '.join(self._copies)}")
        with self._lock:
            if self._managed is not None:  # one allocation, two views: both stay valid
                self.newest = where
                return
            self._copies = {where: self._copies[where]}
            self.newest = where

    def _dlpack_source(self) -> str:
        """The newest copy if its library speaks DLPack (numpy, torch), else the host."""
        return self.newest if self.newest == "host" or self.newest.startswith("cuda") else "host"

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.to(self._dlpack_source()).__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        where = self._dlpack_source()
        return (1, 0) if where == "host" else self._copies[where].__dlpack_device__()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.to("host")
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"Buffer(shape={self.shape}, dtype={self.dtype}, at={list(self.locations)}{', managed' if self.managed else ''})"


# ---- placement --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Where an op runs and why: ``estimates`` maps each candidate location to seconds."""

    where: str
    reason: str
    estimates: Mapping[str, float]


_peaks: dict[tuple[str, str], tuple[float, float]] = {}


def _peak(device: str, dtype: str) -> tuple[float, float]:
    """(FLOP/s, bytes/s) of ``device`` from its hardware manifest; modest defaults if unknown."""
    key = (device, dtype)
    if key not in _peaks:
        flops, bw = (1e11, 2e10) if device == "cpu" else (2e13, 1e12)
        try:
            from uhop.hardware import get_capabilities

            caps = get_capabilities(device=device)
            flops, bw = caps.peak_flops(dtype) or flops, caps.peak_bandwidth() or bw
        except Exception:  # no manifest for this device: the defaults only order host vs GPU
            pass
        _peaks[key] = (flops, bw)
    return _peaks[key]


def _cuda_available() -> bool:
    if "torch" not in sys.modules:  # never import torch just to decide that the host is fine
        return False
    import torch

    return bool(torch.cuda.is_available())


def place(inputs: Sequence[Buffer], *, flops: float, nbytes: float, dtype: str = "float32") -> Placement:
    """The location where moving the missing inputs plus computing costs least (module docstring)."""
    cands = ["host"]
    cands += [w for b in inputs for w in b.locations if w.startswith("cuda") and w not in cands]
    if _cuda_available() and "cuda:0" not in cands:
        cands.append("cuda:0")
    if inputs and all(b.has("opencl") for b in inputs):
        cands.append("opencl")
    link = TRANSFERS.link_bps()
    est: dict[str, float] = {}
    for w in cands:
        missing = [b.nbytes for b in inputs if not b.has(w)]
        move = sum(missing) / link + LATENCY_S * len(missing)
        f, bw = _peak("cpu" if w in ("host", "opencl", "iree") else w, dtype)
        est[w] = move + max(flops / f, nbytes / bw) + (LATENCY_S if w != "host" else 0.0)
    resident = [w for w in cands if inputs and all(b.has(w) for b in inputs)]
    if resident and est[resident[0]] <= min(est.values()) * 1.0001:
        where = resident[0]
        return Placement(where, f"every input is already on {where}", est)
    if "opencl" in resident:  # all inputs there: run there rather than move them
        return Placement("opencl", "every input is already in the OpenCL context", est)
    where = min(est, key=est.__getitem__)
    return Placement(where, f"least estimated move + compute time ({est[where] * 1e3:.3f} ms)", est)


# ---- dispatch on buffers ------------------------------------------------------------------------
_opencl_kernels: dict[str, Any] = {}


def _stand_in(b: Buffer) -> np.ndarray:
    return np.broadcast_to(np.zeros((), dtype=b.dtype), b.shape)


def apply(
    args: Sequence[Any], run: Callable[[Sequence[Any]], Any], *, op: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> Any:  # fmt: skip
    """Run ``run(arrays)`` on the inputs' copies at the placed location and wrap an array result
    in a :class:`Buffer` there. ``args`` may mix Buffers, arrays (taken as buffers where they
    live) and ``None``. With ``op`` (``uhop.ops`` calls), sizes feed the placement and inputs
    already in OpenCL run UHOP's OpenCL kernel there; without it (``@uhop.optimize``) the op
    runs where the inputs' newest copies are (host if they disagree)."""
    bufs = [a if a is None or isinstance(a, Buffer) else Buffer(a) for a in args]
    present = [b for b in bufs if b is not None]
    if not present:
        raise InputError("no array inputs")
    where = present[0].newest if all(b.newest == present[0].newest for b in present) else "host"
    spec = problem = None
    if op is not None:
        from uhop.ops import get as get_op

        spec = get_op(op)
        try:
            p = spec.normalize_params(params or {})
            dims = spec.check([None if b is None else _stand_in(b) for b in bufs], p)
            dtype = spec.check_dtypes([None if b is None else _stand_in(b) for b in bufs])
            where = place(present, flops=spec.flops(dims, p), nbytes=spec.bytes(dims, dtype, p), dtype=dtype).where
            if where == "opencl":
                from uhop.problem import Problem

                problem = Problem.make(spec.name, dims, dtype, p, len(bufs), "contiguous", "cpu", "numpy")
        except InputError:
            raise
        except Exception:  # ops whose sizes cannot be read from shapes alone: run where the data is
            pass
    if where == "iree":  # no UHOP kernels take IREE arrays: run on the host
        where = "host"
    if where == "opencl" and problem is None:
        where = "host"
    arrays = [None if b is None else b.to(where) for b in bufs]
    if where == "opencl":
        out = _opencl_kernel(problem).on_device(*arrays)
    else:
        out = run(arrays)
    try:
        return Buffer(out)
    except InputError:  # the user's function returned something that is not an array
        return out


def _opencl_kernel(problem: Any) -> Any:
    """UHOP's OpenCL kernel for ``problem``: tuned among the OpenCL candidates (stored like any
    tuning), cached in-process."""
    key = problem.key("exact")
    k = _opencl_kernels.get(key)
    if k is None:
        from uhop.tune.tuner import tune

        k = _opencl_kernels[key] = tune(problem=problem, backends=("opencl",)).kernel
    return k


__all__ = ["Buffer", "LINK_BPS", "Placement", "TRANSFERS", "TransferLog", "apply", "location_of", "place"]
