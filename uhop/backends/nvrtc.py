"""CUDA C++ compiled at run time with NVRTC, loaded and launched through the CUDA driver API
(ctypes: no toolkit, no build step, nothing beyond what a CUDA PyTorch install ships).

This is how UHOP reaches what Triton 3.6 does not expose: thread-block clusters and distributed
shared memory on Hopper (:mod:`uhop.backends.cuda_rows`). Compiled cubins are cached on disk under
``$UHOP_HOME/cuda`` keyed by the source, the target architecture, the options and the NVRTC
version, so a new process loads instead of compiling. Modules are loaded once per (cubin,
device) into the device's primary context, the one PyTorch uses.

Compiling needs only NVRTC (``libnvrtc.so``, shipped with CUDA PyTorch wheels, or the
``nvidia-cuda-nvrtc`` wheel on a machine without a GPU: CI compiles every template that way);
loading and launching need a GPU and its driver.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import struct
import sys
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()


class CudaError(RuntimeError):
    """NVRTC or the CUDA driver refused: the message says which call and why (compile log included)."""


def _candidates(stem: str) -> list[str]:
    """Where a CUDA library may live: the loader's path, pip's nvidia-* wheels, CUDA_HOME."""
    majors = ["13", "12"]
    torch = sys.modules.get("torch")  # the NVRTC of torch's CUDA first: its driver runs what it emits
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    if cuda:
        majors.insert(0, cuda.split(".")[0])
    names = [f"{stem}.so.{m}" for m in dict.fromkeys(majors)] + [f"{stem}.so"]
    paths: list[str] = list(names)
    for base in sys.path:
        if base and os.path.isdir(os.path.join(base, "nvidia")):
            paths += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", f"{stem}.so*")), reverse=True)
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    paths += sorted(glob.glob(os.path.join(home, "lib64", f"{stem}.so*")), reverse=True)
    return paths


def _load(stem: str, what: str) -> ctypes.CDLL:
    errors = []
    for path in _candidates(stem):
        try:
            return ctypes.CDLL(path)
        except OSError as exc:
            errors.append(str(exc))
    raise CudaError(f"{what} not found ({stem}.so): {errors[-1] if errors else 'no candidates'}")


_nvrtc: ctypes.CDLL | None = None
_cuda: ctypes.CDLL | None = None


def nvrtc() -> ctypes.CDLL:
    global _nvrtc
    if _nvrtc is None:
        _nvrtc = _load("libnvrtc", "NVRTC (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")
    return _nvrtc


def driver() -> ctypes.CDLL:
    global _cuda
    if _cuda is None:
        try:
            _cuda = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise CudaError(f"the CUDA driver (libcuda.so.1) is not loadable: {exc}") from exc
    return _cuda


def nvrtc_version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _nv_check(nvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def available() -> tuple[bool, str]:
    """(NVRTC loadable, one line: its version or why not)."""
    try:
        major, minor = nvrtc_version()
        return True, f"NVRTC {major}.{minor}"
    except CudaError as exc:
        return False, str(exc)


def _nv_check(code: int, call: str, log: str = "") -> None:
    if code != 0:
        lib = nvrtc()
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        msg = lib.nvrtcGetErrorString(code).decode()
        raise CudaError(f"{call}: {msg}" + (f"\n{log}" if log else ""))


def _cu_check(code: int, call: str) -> None:
    if code != 0:
        s = ctypes.c_char_p()
        driver().cuGetErrorString(code, ctypes.byref(s))
        raise CudaError(f"{call}: CUDA error {code} ({s.value.decode() if s.value else 'unknown'})")


def _cache_dir() -> Path:
    from uhop.config import settings

    d = Path(settings().home) / "cuda"
    d.mkdir(parents=True, exist_ok=True)
    return d


def compile_cubin(source: str, name: str, arch: str, options: tuple[str, ...] = (),
                  cache: bool = True) -> tuple[bytes, str]:  # fmt: skip
    """(cubin, compile log) of ``source`` for ``arch`` ("sm_90"); ``name`` is the kernel's
    (``extern "C"``) name, checked to be in the cubin. Raises :class:`CudaError` with NVRTC's log on a
    compile error. Cached on disk (a cache entry is written whole, by rename, or not at all)."""
    opts = (f"--gpu-architecture={arch}", "--std=c++17", *options)
    version = ".".join(map(str, nvrtc_version()))
    key = hashlib.sha256("\0".join((source, name, *opts, version)).encode()).hexdigest()[:32]
    path = _cache_dir() / f"{name}-{key}.cubin" if cache else None
    if path is not None and path.exists():
        return path.read_bytes(), ""
    lib = nvrtc()
    prog = ctypes.c_void_p()
    _nv_check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None),
              "nvrtcCreateProgram")  # fmt: skip
    try:
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        code = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        _nv_check(code, f"compiling {name} for {arch}", log)
        _nv_check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        out = ctypes.create_string_buffer(size.value)
        _nv_check(lib.nvrtcGetCUBIN(prog, out), "nvrtcGetCUBIN")
        cubin = out.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    if name.encode() not in cubin:
        raise CudaError(f'kernel {name!r} is not in the compiled module (is it extern "C" __global__?)')
    if path is not None:
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(cubin)
        os.replace(tmp, path)
    return cubin, log


#: CU_FUNC_ATTRIBUTE_* (cuda.h)
_ATTR = {"max_dynamic_shared": 8, "num_regs": 4, "local_bytes": 3, "max_threads": 0, "non_portable_cluster": 14}


#: kernel parameter kinds -> struct codes (native alignment: a kernel's parameter block is laid out
#: as a C struct of them): a pointer, int32, int64, float32
_KINDS = {"p": "P", "i": "i", "q": "q", "f": "f"}
#: cuLaunchKernel's ``extra`` keys (cuda.h CU_LAUNCH_PARAM_*_AS_INT)
_PARAM_END, _PARAM_BUFFER_POINTER, _PARAM_BUFFER_SIZE = 0, 1, 2


class _Slots:
    """One thread's packed launch: the parameters as one buffer (handed to the driver through
    ``extra``, filled by one ``struct.pack_into``) and the launch config, built once and refilled
    per launch: a launch costs one pack, a few attribute sets and one driver call."""

    def __init__(self, signature: str) -> None:
        self.fmt = struct.Struct("@" + "".join(_KINDS[k] for k in signature))
        self.buf = ctypes.create_string_buffer(max(8, self.fmt.size))
        self.size = ctypes.c_size_t(self.fmt.size)
        self.extra = (ctypes.c_void_p * 5)(_PARAM_BUFFER_POINTER, ctypes.addressof(self.buf), _PARAM_BUFFER_SIZE,
                                           ctypes.addressof(self.size), _PARAM_END)  # fmt: skip
        self.attr = _LaunchAttribute(id=_CLUSTER_DIMENSION)
        self.cfg = _LaunchConfig()
        self.cfg.gridDimY = self.cfg.gridDimZ = self.cfg.blockDimY = self.cfg.blockDimZ = 1
        self.cfg.attrs = ctypes.pointer(self.attr)
        self.cfg_ref = ctypes.byref(self.cfg)
        self.ctx = False  # this thread has had the kernel's context made current once


class Kernel:
    """One ``extern "C"`` kernel of a loaded module, on one device, with its parameter kinds
    (``signature``: one letter per parameter, see ``_KINDS``). :meth:`launch` takes plain Python
    ints and floats (pointers as ``tensor.data_ptr()``)."""

    def __init__(self, func: ctypes.c_void_p, device: int, name: str, signature: str) -> None:
        self.func, self.device, self.name, self.signature = func, device, name, signature
        self._smem = 0
        self._big_clusters = False
        self._local = threading.local()

    def attribute(self, what: str) -> int:
        v = ctypes.c_int()
        _cu_check(driver().cuFuncGetAttribute(ctypes.byref(v), _ATTR[what], self.func), "cuFuncGetAttribute")
        return v.value

    @property
    def n_regs(self) -> int:
        """Registers per thread (as Triton's compiled kernels report them)."""
        return self.attribute("num_regs")

    @property
    def n_spills(self) -> int:
        """Local memory per thread in bytes: spills (0 when everything fits in registers)."""
        return self.attribute("local_bytes")

    def launch(self, grid: int, block: int, smem: int, stream: int, args: Any, cluster: int = 1) -> None:
        """``grid`` CTAs of ``block`` threads with ``smem`` bytes of dynamic shared memory on
        ``stream`` (a raw ``cudaStream_t``), in clusters of ``cluster`` CTAs (a launch attribute of
        ``cuLaunchKernelEx``: Hopper; ``grid`` must be a multiple of it)."""
        if len(args) != len(self.signature):
            raise ValueError(f"{self.name}: {len(self.signature)} arguments ({self.signature}), got {len(args)}")
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = _Slots(self.signature)
        if not slots.ctx:
            _current_context(self.device)
            slots.ctx = True
        if (smem > 48 * 1024 and smem > self._smem) or (cluster > 8 and not self._big_clusters):
            self._allow(smem, cluster)
        slots.fmt.pack_into(slots.buf, 0, *args)
        code = self._submit(slots, grid, block, smem, stream, cluster)
        if code:  # another context current on this thread since (or none): ours, and once more
            _current_context(self.device)
            code = self._submit(slots, grid, block, smem, stream, cluster)
        _cu_check(code, f"launching {self.name}" + (f" in clusters of {cluster}" if cluster > 1 else ""))

    def resident(self, block: int, smem: int, cluster: int = 1) -> int:
        """How many CTAs of ``block`` threads with ``smem`` bytes of dynamic shared memory (in
        clusters of ``cluster``) the whole device holds at once: one wave of a launch. The driver's
        occupancy calculator (``cuOccupancyMaxActiveClusters`` for clusters, which counts how they
        pack into GPCs; per-SM blocks times SMs otherwise)."""
        _current_context(self.device)
        self._allow(smem, cluster)
        n = ctypes.c_int()
        if cluster == 1:
            _cu_check(driver().cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(n), self.func, ctypes.c_int(block),
                                                                         ctypes.c_size_t(smem)),
                      "cuOccupancyMaxActiveBlocksPerMultiprocessor")  # fmt: skip
            sms = ctypes.c_int()
            _cu_check(driver().cuDeviceGetAttribute(ctypes.byref(sms), ctypes.c_int(_SM_COUNT), ctypes.c_int(self.device)),
                      "cuDeviceGetAttribute")  # fmt: skip
            return n.value * sms.value
        slots = _Slots(self.signature)
        cfg = slots.cfg
        cfg.gridDimX, cfg.blockDimX, cfg.sharedMemBytes, cfg.hStream = cluster, block, smem, None
        v = slots.attr.value.cluster
        v[0], v[1], v[2] = cluster, 1, 1
        cfg.numAttrs = 1
        _cu_check(driver().cuOccupancyMaxActiveClusters(ctypes.byref(n), self.func, slots.cfg_ref),
                  "cuOccupancyMaxActiveClusters")  # fmt: skip
        return n.value * cluster

    def _allow(self, smem: int, cluster: int) -> None:
        """Opt the kernel in to ``smem`` bytes of dynamic shared memory (past 48 KB) and to clusters
        of 16 (a non-portable size the H100 and H200 allow, per kernel)."""
        if smem > 48 * 1024 and smem > self._smem:
            _cu_check(driver().cuFuncSetAttribute(self.func, _ATTR["max_dynamic_shared"], ctypes.c_int(smem)),
                      f"{self.name}: {smem} bytes of dynamic shared memory")  # fmt: skip
            self._smem = smem
        if cluster > 8 and not self._big_clusters:
            _cu_check(driver().cuFuncSetAttribute(self.func, _ATTR["non_portable_cluster"], ctypes.c_int(1)),
                      f"{self.name}: clusters of {cluster}")  # fmt: skip
            self._big_clusters = True

    def _submit(self, slots: _Slots, grid: int, block: int, smem: int, stream: int, cluster: int) -> int:
        if cluster == 1:
            return driver().cuLaunchKernel(self.func, grid, 1, 1, block, 1, 1, smem, ctypes.c_void_p(stream), None,
                                           slots.extra)  # fmt: skip
        cfg = slots.cfg
        cfg.gridDimX, cfg.blockDimX, cfg.sharedMemBytes, cfg.hStream = grid, block, smem, stream
        v = slots.attr.value.cluster
        v[0], v[1], v[2] = cluster, 1, 1
        cfg.numAttrs = 1
        return driver().cuLaunchKernelEx(slots.cfg_ref, self.func, None, slots.extra)


#: CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT (cuda.h)
_CLUSTER_DIMENSION, _SM_COUNT = 4, 16


class _LaunchValue(ctypes.Union):  # CUlaunchAttributeValue: a 64-byte union
    _fields_ = [("pad", ctypes.c_char * 64), ("cluster", ctypes.c_uint * 3)]


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: id, padding to 8 bytes, value
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", _LaunchValue)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_LaunchAttribute)), ("numAttrs", ctypes.c_uint)]  # fmt: skip


_modules: dict[tuple[str, int], Kernel] = {}


def current_stream(index: int) -> int:
    """The current CUDA stream of device ``index`` as a raw handle (what Inductor's launchers call;
    ``torch.cuda.current_stream().cuda_stream`` where that private entry point is missing)."""
    import torch

    get = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return int(get(index)) if get is not None else torch.cuda.current_stream(index).cuda_stream


_primary: dict[int, int] = {}


def _current_context(device: int) -> int:
    """Make ``device``'s primary context (PyTorch's) current on this thread: module loads and
    launches need one, and a thread that has not touched the CUDA runtime yet has none. Two
    driver calls when it is current already (each launch checks)."""
    lib = driver()
    ctx = _primary.get(device)
    if ctx is None:
        import torch

        torch.cuda.init()
        h = ctypes.c_void_p()
        _cu_check(
            lib.cuDevicePrimaryCtxRetain(ctypes.byref(h), ctypes.c_int(device)), "cuDevicePrimaryCtxRetain"
        )
        ctx = _primary[device] = h.value  # kept retained for the process's life, as the runtime does
    cur = ctypes.c_void_p()
    lib.cuCtxGetCurrent(ctypes.byref(cur))
    if cur.value != ctx:
        _cu_check(lib.cuCtxSetCurrent(ctypes.c_void_p(ctx)), "cuCtxSetCurrent")
    return ctx


def kernel(source: str, name: str, device: int, signature: str, options: tuple[str, ...] = ()) -> Kernel:
    """``name`` from ``source`` compiled for ``device``'s architecture and loaded on it (cached per
    process and on disk); ``signature``: its parameters' kinds (``"ppif"``: two pointers, an int32,
    a float32)."""
    if any(k not in _KINDS for k in signature):
        raise ValueError(f"signature: letters of {''.join(_KINDS)} (pointer, int32, int64, float32), got {signature!r}")
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    arch = f"sm_{major}{minor}"
    key = (hashlib.sha256("\0".join((source, name, signature, *options)).encode()).hexdigest(), device)
    got = _modules.get(key)
    if got is not None:
        return got
    cubin, _ = compile_cubin(source, name, arch, options)
    with _lock:
        got = _modules.get(key)
        if got is None:
            _current_context(device)
            mod, func = ctypes.c_void_p(), ctypes.c_void_p()
            _cu_check(driver().cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(cubin)), f"loading {name}")
            _cu_check(driver().cuModuleGetFunction(ctypes.byref(func), mod, name.encode()), f"finding {name}")
            got = _modules[key] = Kernel(func, device, name, signature)
    return got
