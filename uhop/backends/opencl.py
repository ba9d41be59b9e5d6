"""OpenCL backend (pyopencl): portable kernels for any OpenCL device, CPU (PoCL) or GPU.

* matmul: tiled, local-memory tiles of TS x TS with WPT rows per work-item in registers, and the
  bias/activation epilogue fused (``MATMUL`` in :mod:`uhop.backends.opencl_kernels`);
* softmax / layernorm / rmsnorm: one work-group of WG work-items per row, tree reductions in
  local memory;
* elementwise: OpenCL C generated from the expression IR, one pass, every intermediate in a
  register.

Kernels follow the backend contract (numpy in, new numpy out): inputs are copied to the device
(or wrapped in place, ``USE_HOST_PTR``, where the device shares host memory, as PoCL's CPU device
does), and the output is read back. :meth:`ClKernel.on_device` runs the same launch on
``pyopencl.array.Array`` s already on the device, which is how chained calls on
:class:`uhop.Buffer` s avoid host round trips.

Platform choice: ``UHOP_OPENCL_PLATFORM`` (a case-insensitive substring of the platform's name and
version, e.g. ``debian`` or ``nvidia``), else the first platform with a device. CI points the ICD
loader at Debian's PoCL only (``OCL_ICD_VENDORS=/etc/OpenCL/vendors``): the PoCL that pip can
bundle with pyopencl fails to compile kernels on some CPUs. Work-group sizes and local memory are
pruned against the device's own limits (:func:`device_manifest`, checked by
:func:`uhop.hardware.constraints.fits`) before anything compiles.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from uhop.backends import opencl_kernels as K
from uhop.backends.base import Backend, Candidate, Kernel
from uhop.errors import InputError
from uhop.ops import expr as ex
from uhop.problem import Problem

_INSTALL_HINT = "pyopencl not installed: pip install 'uhop[opencl]' (and an OpenCL driver, e.g. Debian's pocl-opencl-icd)"


class ClDevice:
    """One OpenCL context + in-order queue on one device, with a cache of built programs."""

    def __init__(self) -> None:
        import pyopencl as cl

        from uhop.config import settings

        want = settings().opencl_platform
        platforms = [p for p in cl.get_platforms() if p.get_devices()]
        if want:
            platforms = [p for p in platforms if want in f"{p.name} {p.version}".lower()]
        if not platforms:
            raise RuntimeError(
                "no OpenCL platform with a device" + (f" matching UHOP_OPENCL_PLATFORM={want!r}" if want else "")
                + " (install an ICD, e.g. apt-get install pocl-opencl-icd)"
            )
        self.platform = platforms[0]
        self.device = self.platform.get_devices()[0]
        self.context = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.context)
        d = self.device
        self.is_cpu = bool(d.type & cl.device_type.CPU)
        self.host_unified = bool(getattr(d, "host_unified_memory", False)) or self.is_cpu
        self.fp64 = "cl_khr_fp64" in d.extensions or d.double_fp_config != 0
        self.compute_units = int(d.max_compute_units)
        self.max_work_group = int(d.max_work_group_size)
        self.local_mem = int(d.local_mem_size)
        self._programs: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.device.name.strip()} on {self.platform.version.strip()}"

    def build(self, source: str, options: Sequence[str]) -> Any:
        """The built program for ``source`` with ``-D`` ``options``, cached in-process."""
        import pyopencl as cl

        key = (source, " ".join(options))
        prog = self._programs.get(key)
        if prog is None:
            with self._lock:
                prog = self._programs.get(key)
                if prog is None:
                    with warnings.catch_warnings():  # PoCL's notes on vector casts: not errors
                        warnings.simplefilter("ignore", cl.CompilerWarning)
                        prog = cl.Program(self.context, source).build(options=list(options))
                    self._programs[key] = prog
        return prog


_PROBE = K.PREAMBLE + "__kernel void probe(__global float* x) { x[0] = 1; }"


@functools.cache
def cl_device() -> ClDevice:
    return ClDevice()


@functools.cache
def device_manifest(dev: ClDevice | None = None) -> Any:
    """A hardware :class:`~uhop.hardware.Manifest` built from the OpenCL device query: work-group
    size, local memory and the preferred work-group multiple as per-block limits (``reported``),
    so :func:`uhop.hardware.constraints.fits` prunes OpenCL launches like CUDA ones."""
    import pyopencl as cl

    from uhop.hardware.schema import parse_manifest

    dev = dev or cl_device()
    d = dev.device
    multiple = 1
    try:  # a kernel-level query: needs a built kernel
        k = cl.Kernel(dev.build(_PROBE, ()), "probe")
        multiple = int(k.get_work_group_info(cl.kernel_work_group_info.PREFERRED_WORK_GROUP_SIZE_MULTIPLE, d))
    except Exception:  # not every driver answers; 1 constrains nothing
        pass
    rep = {"source": "reported"}
    vendor = next((v for v in ("nvidia", "amd", "intel", "apple", "arm") if v in d.vendor.lower()), "generic")
    width = max(1, int(d.preferred_vector_width_float)) * 32
    data: dict[str, Any] = {
        "schema_version": 1,
        "name": "opencl-" + (re.sub(r"[^a-z0-9._-]+", "-", d.name.strip().lower()).strip("-") or "device"),
        "display_name": f"{d.name.strip()} (OpenCL)",
        "kind": "generic" if dev.is_cpu else "gpu",
        "vendor": vendor,
        "family": "opencl",
        "arch": d.version.strip() or "opencl",
        "compute_units": {"value": dev.compute_units, **rep},
        "gpu": {
            "warp_size": {"value": max(1, multiple), **rep},
            "max_threads_per_block": {"value": dev.max_work_group, **rep},
            "max_shared_mem_per_block": {"value": max(1, dev.local_mem), **rep},
            "async_copy": False,
            "tma": False,
        },
        "notes": [f"from the OpenCL device query of {dev.describe()}"],
    }
    if dev.is_cpu:
        simd = "avx512" if width >= 512 else "avx2" if width >= 256 else "sse4.2" if width >= 128 else "scalar"
        data["cpu"] = {"simd": simd, "vector_width_bits": {"value": width, **rep}}
    return parse_manifest(data, "opencl device query")


# ---- kernels --------------------------------------------------------------------------------
#: plan(shapes) -> (output shape, launch(queue, input buffers, output buffer) -> event)
Plan = Callable[[list[tuple[int, ...]]], tuple[tuple[int, ...], Callable[..., Any]]]


class ClKernel:
    """A compiled UHOP kernel on an OpenCL device.

    ``kernel(*numpy arrays) -> numpy array`` is the backend contract (a new C-contiguous array);
    ``kernel.on_device(*pyopencl arrays) -> pyopencl array`` runs on device-resident data (same
    context) and returns a new device array, with no host transfer."""

    def __init__(self, dev: ClDevice, dtype: str, plan: Plan) -> None:
        self.dev, self.dtype, self.plan = dev, np.dtype(dtype), plan

    def __call__(self, *xs: np.ndarray | None) -> np.ndarray:
        import pyopencl as cl

        dev = self.dev
        mf = cl.mem_flags
        arrays = [None if x is None else np.ascontiguousarray(x, dtype=self.dtype) for x in xs]
        out_shape, launch = self.plan([() if a is None else a.shape for a in arrays])
        out = np.empty(out_shape, dtype=self.dtype)
        # Where the device reads host memory directly (PoCL on the CPU) wrapping the arrays is a
        # zero-copy; elsewhere COPY_HOST_PTR is one host-to-device copy each.
        flag = mf.USE_HOST_PTR if dev.host_unified else mf.COPY_HOST_PTR
        bufs = [None if a is None else cl.Buffer(dev.context, mf.READ_ONLY | flag, hostbuf=a) for a in arrays]
        if dev.host_unified:
            obuf = cl.Buffer(dev.context, mf.WRITE_ONLY | mf.USE_HOST_PTR, hostbuf=out)
        else:
            obuf = cl.Buffer(dev.context, mf.WRITE_ONLY, size=max(out.nbytes, 1))
        launch(dev.queue, bufs, obuf)
        if dev.host_unified:  # map to make the device's writes visible in ``out`` (no copy on PoCL)
            view, _ = cl.enqueue_map_buffer(dev.queue, obuf, cl.map_flags.READ, 0, out.shape, out.dtype, wait_for=None,
                                            is_blocking=True)  # fmt: skip
            del view  # unmapped when the view is released
        else:
            cl.enqueue_copy(dev.queue, out, obuf)
        dev.queue.finish()
        return out

    def on_device(self, *xs: Any) -> Any:
        import pyopencl.array as cla

        for i, x in enumerate(xs):
            if x is not None and (x.dtype != self.dtype or not x.flags.c_contiguous):
                raise InputError(f"input {i}: expected a C-contiguous {self.dtype} device array, got {x.dtype}")
        out_shape, launch = self.plan([() if x is None else tuple(x.shape) for x in xs])
        out = cla.empty(self.dev.queue, out_shape, self.dtype)
        launch(self.dev.queue, [None if x is None else x.data for x in xs], out.data)
        return out


def _options(dtype: str, **defines: Any) -> list[str]:
    opts = [f"-DT={'double' if dtype == 'float64' else 'float'}"]
    if dtype == "float64":
        opts.append("-DUHOP_FP64")
    opts += [f"-D{k}" if v is True else f"-D{k}={v}" for k, v in defines.items() if v is not False]
    return opts


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def matmul_kernel(dev: ClDevice, dtype: str, activation: str, arity: int, ts: int, wpt: int) -> ClKernel:
    import pyopencl as cl

    has_bias = arity >= 3
    source = f"#define ACT(v) {K.ACTIVATIONS[activation]}\n" + K.MATMUL  # a function-like macro: in the text
    prog = dev.build(source, _options(dtype, TS=ts, WPT=wpt, HAS_BIAS=has_bias))
    krn = cl.Kernel(prog, "matmul")
    dummy = cl.Buffer(dev.context, cl.mem_flags.READ_ONLY, size=8)

    def plan(shapes: list[tuple[int, ...]]) -> tuple[tuple[int, ...], Callable[..., Any]]:
        a, b = shapes[0], shapes[1]
        if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
            raise InputError(f"matmul: a {a} and b {b} do not chain (a (...,M,K), b (...,K,N))")
        M, Kd, N = a[-2], a[-1], b[-1]
        batch = math.prod(a[:-2])
        if len(b) > 2 and math.prod(b[:-2]) != batch:
            raise InputError(f"matmul: b's batch dims {b[:-2]} do not match a's {a[:-2]}")
        if has_bias and shapes[2] != (N,):
            raise InputError(f"matmul: bias must have shape ({N},), got {shapes[2]}")
        stride_b = Kd * N if len(b) > 2 else 0
        gsize = (_round_up(N, ts), _round_up(M, ts) // wpt, batch)

        def launch(queue: Any, bufs: list[Any], out: Any) -> Any:
            bias = bufs[2] if has_bias else dummy
            return krn(queue, gsize, (ts, ts // wpt, 1), np.int32(M), np.int32(N), np.int32(Kd), bufs[0], bufs[1],
                       bias, out, np.int64(M * Kd), np.int64(stride_b))  # fmt: skip

        return (*a[:-2], M, N), launch

    return ClKernel(dev, dtype, plan)


def rows_kernel(dev: ClDevice, op: str, dtype: str, arity: int, eps: float, wg: int, vw: int = 0) -> ClKernel:
    """``wg`` work-items per row (``ROWS``), or with ``vw`` one work-item per row in ``vw``-wide
    vectors (``ROWS_VEC``, CPU devices; ``wg`` is then the rows per work-group)."""
    import pyopencl as cl

    has_w, has_b = arity >= 2, arity >= 3 and op == "layernorm"
    if vw:
        prog = dev.build(K.ROWS_VEC, _options(dtype, VW=vw, HAS_WEIGHT=has_w, HAS_BIAS=has_b))
    else:
        prog = dev.build(K.ROWS, _options(dtype, WG=wg, HAS_WEIGHT=has_w, HAS_BIAS=has_b))
    krn = cl.Kernel(prog, op)
    dummy = cl.Buffer(dev.context, cl.mem_flags.READ_ONLY, size=8)
    scalar = np.dtype(dtype).type

    def plan(shapes: list[tuple[int, ...]]) -> tuple[tuple[int, ...], Callable[..., Any]]:
        x = shapes[0]
        N = x[-1]
        R = math.prod(x[:-1])
        for name, s in zip(("weight", "bias"), shapes[1:], strict=False):
            if s != () and s != (N,):
                raise InputError(f"{op}: {name} must have shape ({N},), got {s}")

        gsize, lsize = ((R,), None) if vw else ((R * wg,), (wg,))

        def launch(queue: Any, bufs: list[Any], out: Any) -> Any:
            if op == "softmax":
                return krn(queue, gsize, lsize, np.int32(N), bufs[0], out)
            w = bufs[1] if has_w else dummy
            b = bufs[2] if has_b else dummy
            return krn(queue, gsize, lsize, np.int32(N), scalar(eps), bufs[0], w, b, out)

        return x, launch

    return ClKernel(dev, dtype, plan)


def elementwise_kernel(dev: ClDevice, expr_text: str, dtype: str, arity: int, wg: int, items: int) -> ClKernel:
    import pyopencl as cl

    prog = dev.build(K.elementwise_source(ex.parse(expr_text), arity, dtype), _options(dtype, ITEMS=items))
    krn = cl.Kernel(prog, "elementwise")

    def plan(shapes: list[tuple[int, ...]]) -> tuple[tuple[int, ...], Callable[..., Any]]:
        if len(shapes) != arity or any(s != shapes[0] for s in shapes):
            raise InputError(f"elementwise: expected {arity} inputs of one shape, got {shapes}")
        n = math.prod(shapes[0])
        gsize = _round_up(max(1, -(-n // items)), wg)

        def launch(queue: Any, bufs: list[Any], out: Any) -> Any:
            return krn(queue, (gsize,), (wg,), np.int64(n), *bufs, out)

        return shapes[0], launch

    return ClKernel(dev, dtype, plan)


# ---- the backend ----------------------------------------------------------------------------
#: (TS, WPT) tiles, best guess first for GPUs; CPUs (PoCL runs a work-group as one vectorised loop
#: per thread) like larger register blocks
_TILES_GPU = ((16, 4), (32, 8), (16, 1))
_TILES_CPU = ((32, 8), (16, 4), (16, 1))


class OpenCLBackend(Backend):
    name = "opencl"
    crash_prone = True  # a driver compiles native code; a bad build can take the process down
    eval_s = 1.0
    source_modules = ("uhop.backends.opencl_kernels",)
    array = "numpy"
    devices = ("cpu",)
    ops = ("elementwise", "softmax", "layernorm", "rmsnorm", "matmul")
    dtypes = ("float32", "float64")

    def _probe(self) -> tuple[bool, str]:
        if importlib.util.find_spec("pyopencl") is None:
            return False, _INSTALL_HINT
        try:
            dev = cl_device()
            dev.build(_PROBE, ())
        except Exception as exc:  # no ICD, no device, or a driver that cannot compile here
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return False, f"OpenCL unusable: {msg} (Debian: apt-get install pocl-opencl-icd)"
        import pyopencl

        return True, f"pyopencl {pyopencl.VERSION_TEXT}, {dev.describe()}, {dev.compute_units} compute units"

    def supports(self, problem: Problem) -> bool:
        if not super().supports(problem):
            return False
        if problem.op == "elementwise":
            return K.expr_supported(ex.parse(problem.param["expr"]))
        return True

    def candidates(self, problem: Problem) -> list[Candidate]:
        from uhop.hardware.constraints import fits

        dev = cl_device()
        if problem.dtype == "float64" and not dev.fp64:  # here, not in supports(): that must stay cheap
            return []
        caps = device_manifest(dev)
        c = Candidate.of
        item = np.dtype(problem.dtype).itemsize
        if problem.op == "matmul":
            out = []
            for ts, wpt in _TILES_CPU if dev.is_cpu else _TILES_GPU:
                ok, _ = fits(caps, shared_mem_bytes=(ts * ts + ts * (ts + 1)) * item, threads_per_block=ts * ts // wpt)
                if ok:
                    out.append(c("opencl", "tiled", ts=ts, wpt=wpt))
            return out
        if problem.op in ("softmax", "layernorm", "rmsnorm"):
            N = problem.dim["N"]
            first = min(256, 1 << max(0, (N - 1).bit_length()))  # no idle work-items on short rows
            wgs = list(dict.fromkeys((first, 64, 1024) if not dev.is_cpu else (64,)))
            out = [c("opencl", "rows", wg=w) for w in wgs
                   if fits(caps, shared_mem_bytes=w * item, threads_per_block=w)[0]]  # fmt: skip
            if dev.is_cpu:  # a row per work-item in explicit vectors: 3-4x the work-group form here
                out[:0] = [c("opencl", "rows_vec", vw=v) for v in (8, 16) if v <= max(4, N)]
            return out
        if problem.op == "elementwise":
            n = problem.dim["N"]
            # one element per work-item (straight-line code PoCL vectorises across work-items) was
            # 3-6x a grid-stride loop on PoCL; the loop stays as the GPU's third guess
            configs = ((256, 1), (64, 1), (256, 8))
            return [c("opencl", "fused", wg=w, items=i) for w, i in configs
                    if fits(caps, threads_per_block=w)[0] and (i == 1 or (n >= 64 * w * i and not dev.is_cpu))]  # fmt: skip
        return []

    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        if not self.available:
            raise RuntimeError(self.availability[1])
        dev = cl_device()
        cfg, p, dt = candidate.cfg, problem.param, problem.dtype
        if problem.op == "matmul":
            return matmul_kernel(dev, dt, p["activation"], problem.arity, int(cfg["ts"]), int(cfg["wpt"]))
        if problem.op in ("softmax", "layernorm", "rmsnorm"):
            vw = int(cfg.get("vw", 0)) if candidate.template == "rows_vec" else 0
            return rows_kernel(dev, problem.op, dt, problem.arity, float(p.get("eps", 0.0)), int(cfg.get("wg", 1)), vw)
        if problem.op == "elementwise":
            return elementwise_kernel(dev, p["expr"], dt, problem.arity, int(cfg["wg"]), int(cfg["items"]))
        raise ValueError(f"opencl backend has no kernel for op {problem.op!r}")
