"""Find the running device and build its manifest: match a shipped manifest, then lay what the
device reports over the datasheet figures.

Sources, cheapest first: ``/proc/cpuinfo`` and sysfs (py-cpuinfo where those are missing) for
the CPU; ``torch.cuda`` (CUDA and ROCm builds), ``torch.xpu``, NVML (``nvidia-ml-py``) and
``pyopencl`` for GPUs, each only if installed. On Linux torch is imported only when a GPU driver
node exists (``/dev/nvidiactl``, ``/dev/kfd``, ``/dev/dri``), so CPU-only detection stays fast.

Matching levels (recorded in ``Manifest.detection``):

- ``exact``: a manifest's ``match`` regex finds the device name (``NVIDIA H100 80GB HBM3``);
- ``arch``: no SKU matched but a manifest shares the architecture (``sm_90`` for an H100 PCIe):
  architecture limits are kept, SKU figures (peaks, memory, clocks, L2) dropped;
- ``generic``: nothing matched; the generic manifest's conservative limits, with a note.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from uhop.hardware.schema import Manifest

# reported values: dotted manifest path -> number, or (number, note); lists/str set as they are
Reported = Mapping[str, Any]

# CPU flags worth carrying into ``cpu.extensions`` (they change what code a backend may emit)
_EXTENSIONS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512cd", "avx512dq",
    "avx512vl", "avx512_vnni", "avx512vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
    "amx_bf16", "amx_int8", "amx_fp16", "asimd", "asimdhp", "asimddp", "fphp", "bf16", "i8mm", "sve",
    "sve2", "sme",
)  # fmt: skip


@dataclass(frozen=True)
class DeviceInfo:
    """One device as the system reports it. ``reported`` maps manifest paths to figures."""

    kind: Literal["cpu", "gpu"]
    name: str
    api: str
    arch: str | None = None
    vendor: str | None = None
    index: int = 0
    reported: Reported = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """File-name-safe identity, used to store probe results (``gpu-nvidia-h100-80gb-hbm3``)."""
        return re.sub(r"[^a-z0-9]+", "-", f"{self.kind}-{self.name}".lower()).strip("-")


# ---------------------------------------------------------------------------------------------
# CPU
def parse_proc_cpuinfo(text: str) -> dict[str, Any]:
    """Parse ``/proc/cpuinfo`` (x86 or ARM) into name, vendor, flags, logical and physical cores,
    and the clock in Hz where listed."""
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    first: dict[str, str] = {}
    cores: set[tuple[str, str]] = set()
    logical = 0
    for i, block in enumerate(blocks):
        kv = {}
        for line in block.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                kv[k.strip().lower()] = v.strip()
        if "processor" in kv and kv["processor"].isdigit():
            logical += 1
        if "core id" in kv:
            cores.add((kv.get("physical id", "0"), kv["core id"]))
        if i == 0 or not first.get("flags") and not first.get("features"):
            first = {**kv, **first}
    flags = frozenset((first.get("flags") or first.get("features") or "").split())
    name = first.get("model name") or first.get("hardware") or ""
    implementer = first.get("cpu implementer", "").lower()
    if not name and implementer:
        name = f"ARM64 CPU (implementer {implementer}, part {first.get('cpu part', '?')})"
    vendor = {"genuineintel": "intel", "authenticamd": "amd", "0x41": "arm", "0x61": "apple"}.get(
        (first.get("vendor_id") or implementer).lower()
    )
    mhz = first.get("cpu mhz")
    return {
        "name": name,
        "vendor": vendor,
        "flags": flags,
        "logical": logical or os.cpu_count() or 1,
        "physical": len(cores) or None,
        "hz": float(mhz) * 1e6 if mhz and _is_number(mhz) else None,
    }


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _size(text: str) -> int | None:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)B?", text.strip(), re.IGNORECASE)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]


def sysfs_caches(cpu_dir: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> dict[int, int]:
    """Data/unified cache sizes in bytes by level from sysfs (L1 data, L2 and L3 as seen by cpu0)."""
    out: dict[int, int] = {}
    for idx in sorted(Path(cpu_dir).glob("index*")) if Path(cpu_dir).is_dir() else []:
        level, ctype, size = (_read(idx / f) for f in ("level", "type", "size"))
        if level and level.isdigit() and ctype in ("Data", "Unified") and size and _size(size):
            out[int(level)] = _size(size)  # type: ignore[assignment]
    return out


def _machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


def cpu_device() -> DeviceInfo:
    """The host CPU: name, flags, physical cores, caches, clock, memory."""
    arch = _machine()
    text = _read("/proc/cpuinfo")
    api = "/proc/cpuinfo"
    info = parse_proc_cpuinfo(text) if text else {}
    caches = sysfs_caches()
    if not info.get("name") or not info.get("flags") and arch == "x86_64":
        info, api = _py_cpuinfo(info), "py-cpuinfo"
        caches = caches or info.pop("caches", {})
    info.pop("caches", None)
    notes: list[str] = []
    rep: dict[str, Any] = {}
    logical = info.get("logical") or os.cpu_count() or 1
    physical = info.get("physical") or logical
    rep["compute_units"] = (physical, f"physical cores ({logical} logical CPUs)")
    rep["cpu.threads_per_core"] = max(1, logical // physical)
    for level, key in ((1, "l1_bytes"), (2, "l2_bytes"), (3, "l3_bytes")):
        if caches.get(level):
            rep[f"caches.{key}"] = (caches[level], "per core" if level < 3 else "as seen by cpu0")
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_khz and max_khz.isdigit():
        rep["clocks.boost_hz"] = (int(max_khz) * 1e3, "cpufreq maximum")
    elif info.get("hz"):
        rep["clocks.boost_hz"] = (info["hz"], "current clock from /proc/cpuinfo")
    try:
        rep["memory.size_bytes"] = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "system RAM")
    except (ValueError, OSError, AttributeError):
        pass
    flags = frozenset(info.get("flags") or ())
    ext = [f for f in _EXTENSIONS if f in flags]
    if ext:
        rep["cpu.extensions"] = ext
    simd = _simd(arch, flags)
    if simd:
        rep["cpu.simd"] = simd
    if simd in ("sve", "sve2"):
        vl = _read("/proc/sys/abi/sve_default_vector_length")
        if vl and vl.isdigit():
            rep["cpu.vector_width_bits"] = (int(vl) * 8, "SVE default vector length")
    return DeviceInfo(
        kind="cpu", name=info.get("name") or platform.processor() or arch, api=api, arch=arch,
        vendor=info.get("vendor"), reported=rep, flags=flags, notes=tuple(notes),
    )  # fmt: skip


def _py_cpuinfo(partial: dict[str, Any]) -> dict[str, Any]:
    try:
        import cpuinfo

        ci = cpuinfo.get_cpu_info()
    except Exception:  # py-cpuinfo is a core dependency, but never let detection crash
        return partial
    hz = (ci.get("hz_advertised") or [0])[0] or None
    vendor = {"genuineintel": "intel", "authenticamd": "amd"}.get(str(ci.get("vendor_id_raw", "")).lower())
    if not vendor and str(ci.get("brand_raw", "")).lower().startswith("apple"):
        vendor = "apple"
    return {
        "name": ci.get("brand_raw") or partial.get("name"),
        "vendor": vendor or partial.get("vendor"),
        "flags": frozenset(ci.get("flags") or ()) | partial.get("flags", frozenset()),
        "logical": ci.get("count") or partial.get("logical"),
        "physical": partial.get("physical"),
        "hz": hz or partial.get("hz"),
        "caches": {lv: ci[k] for lv, k in ((1, "l1_data_cache_size"), (2, "l2_cache_size"), (3, "l3_cache_size"))
                   if isinstance(ci.get(k), int) and ci[k] > 0},
    }  # fmt: skip


def _simd(arch: str, flags: frozenset[str]) -> str | None:
    if arch == "x86_64":
        if "avx512f" in flags:
            return "avx512"
        if "avx2" in flags and "fma" in flags:
            return "avx2"
        return "sse4.2" if "sse4_2" in flags else "scalar"
    if arch == "aarch64":
        return "sve2" if "sve2" in flags else "sve" if "sve" in flags else "neon"
    return None


def match_cpu(info: DeviceInfo) -> tuple[str, str]:
    """Name of the CPU manifest for ``info`` and the match level (``exact`` or ``generic``)."""
    simd = _simd(info.arch or "", info.flags)
    if simd == "avx512":
        return "x86-64-avx512", "exact"
    if simd == "avx2":
        return "x86-64-avx2", "exact"
    if info.arch == "aarch64":
        return "arm64", "exact"
    return "generic", "generic"


# ---------------------------------------------------------------------------------------------
# GPU
def _may_have_gpu() -> bool:
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dri"))


def _torch_devices() -> list[DeviceInfo]:
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    out: list[DeviceInfo] = []
    try:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        n = 0
    hip = getattr(torch.version, "hip", None)
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        gcn = getattr(p, "gcnArchName", "") or ""
        arch = gcn.split(":")[0] if hip and gcn else f"sm_{p.major}{p.minor}"
        rep: dict[str, Any] = {"compute_units": p.multi_processor_count, "memory.size_bytes": p.total_memory}
        for attr, path in (
            ("L2_cache_size", "caches.l2_bytes"), ("warp_size", "gpu.warp_size"),
            ("regs_per_multiprocessor", "gpu.registers_per_sm"),
            ("max_threads_per_multi_processor", "gpu.max_threads_per_sm"),
            ("max_threads_per_block", "gpu.max_threads_per_block"),
            ("shared_memory_per_block", "gpu.max_shared_mem_per_block"),
            ("shared_memory_per_block_optin", "gpu.max_shared_mem_per_block_optin"),
            ("shared_memory_per_multiprocessor", "gpu.shared_mem_per_sm"),
        ):  # fmt: skip
            v = getattr(p, attr, None)
            if isinstance(v, int) and v > 0:
                rep[path] = v
        clock = getattr(p, "clock_rate", None)  # kHz, newer torch only
        if isinstance(clock, int) and clock > 0:
            rep["clocks.boost_hz"] = clock * 1e3
        bw = _bandwidth(getattr(p, "memory_clock_rate", None), getattr(p, "memory_bus_width", None))
        if bw:
            rep["~memory.bandwidth_bytes_per_s"] = bw
        rep.update(_nvml_extra(i, p.name) if not hip else {})
        out.append(DeviceInfo(kind="gpu", name=p.name, api="torch.hip" if hip else "torch.cuda", arch=arch,
                              vendor="amd" if hip else "nvidia", index=i, reported=rep))  # fmt: skip
    xpu = getattr(torch, "xpu", None)
    try:
        nx = xpu.device_count() if xpu is not None and xpu.is_available() else 0
    except Exception:
        nx = 0
    for i in range(nx):
        p = xpu.get_device_properties(i)
        rep = {}
        for attr, path in (("total_memory", "memory.size_bytes"), ("gpu_subslice_count", "compute_units"),
                           ("max_work_group_size", "gpu.max_threads_per_block")):  # fmt: skip
            v = getattr(p, attr, None)
            if isinstance(v, int) and v > 0:
                rep[path] = v
        out.append(DeviceInfo(kind="gpu", name=p.name, api="torch.xpu", arch=None, vendor="intel", index=i, reported=rep))
    return out


def _bandwidth(mem_clock_khz: Any, bus_bits: Any) -> float | None:
    """Theoretical DRAM bandwidth: clock x 2 (double data rate) x bus width, as deviceQuery does."""
    if isinstance(mem_clock_khz, int) and isinstance(bus_bits, int) and mem_clock_khz > 0 and bus_bits > 0:
        return mem_clock_khz * 1e3 * 2 * bus_bits / 8
    return None


def _nvml():
    if importlib.util.find_spec("pynvml") is None:
        return None
    import pynvml

    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def _nvml_extra(index: int, name: str) -> dict[str, Any]:
    """Clocks and memory bus from NVML for the same device (only when the names agree: NVML's
    order is PCI order, CUDA's may differ)."""
    nv = _nvml()
    if nv is None:
        return {}
    try:
        h = nv.nvmlDeviceGetHandleByIndex(index)
        nvname = nv.nvmlDeviceGetName(h)
        nvname = nvname.decode() if isinstance(nvname, bytes) else nvname
        if nvname != name:
            return {}
        rep: dict[str, Any] = {"clocks.boost_hz": (nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM) * 1e6, "NVML max SM clock")}
        bw = _bandwidth(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM) * 1000, nv.nvmlDeviceGetMemoryBusWidth(h))
        if bw:
            rep["~memory.bandwidth_bytes_per_s"] = bw
        return rep
    except Exception:
        return {}


def _nvml_devices() -> list[DeviceInfo]:
    nv = _nvml()
    if nv is None:
        return []
    out = []
    try:
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = nv.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            major, minor = nv.nvmlDeviceGetCudaComputeCapability(h)
            rep = {"memory.size_bytes": nv.nvmlDeviceGetMemoryInfo(h).total, **_nvml_extra(i, name)}
            out.append(DeviceInfo(kind="gpu", name=name, api="nvml", arch=f"sm_{major}{minor}", vendor="nvidia",
                                  index=i, reported=rep))  # fmt: skip
    except Exception:
        return out
    return out


def _opencl_devices() -> list[DeviceInfo]:
    if importlib.util.find_spec("pyopencl") is None:
        return []
    try:
        import pyopencl as cl

        devs = [d for p in cl.get_platforms() for d in p.get_devices(device_type=cl.device_type.GPU)]
    except Exception:
        return []
    out = []
    for i, d in enumerate(devs):
        board = getattr(d, "board_name_amd", None) if "amd" in d.vendor.lower() else None
        arch = d.name.split(":")[0] if d.name.startswith("gfx") else None
        rep = {"compute_units": d.max_compute_units, "memory.size_bytes": d.global_mem_size,
               "gpu.max_shared_mem_per_block": d.local_mem_size, "gpu.max_threads_per_block": d.max_work_group_size,
               "clocks.boost_hz": d.max_clock_frequency * 1e6}  # fmt: skip
        vendor = next((v for v in ("nvidia", "amd", "intel", "apple") if v in d.vendor.lower()), None)
        out.append(DeviceInfo(kind="gpu", name=board or d.name, api="opencl", arch=arch, vendor=vendor, index=i,
                              reported={k: v for k, v in rep.items() if v}))  # fmt: skip
    return out


def _apple_devices() -> list[DeviceInfo]:
    if sys.platform != "darwin" or _machine() != "aarch64":
        return []
    name = cpu_device().name  # "Apple M2 Pro": the GPU is on the same chip
    return [DeviceInfo(kind="gpu", name=name, api="metal", arch="apple7+", vendor="apple")]


@functools.cache
def gpu_devices() -> tuple[DeviceInfo, ...]:
    """Every GPU found, from the first source that sees any (cached for the process)."""
    if not _may_have_gpu():
        return ()
    for source in (_torch_devices, _nvml_devices, _opencl_devices, _apple_devices):
        try:
            devs = source()
        except Exception:  # a broken driver stack must not take detection down
            devs = []
        if devs:
            return tuple(devs)
    return ()


@functools.cache
def _cpu() -> DeviceInfo:
    return cpu_device()


def detect(device: str | None = None) -> DeviceInfo:
    """The device named by ``device``: ``None`` (first GPU, else the CPU), ``"cpu"``, or a GPU as
    ``"cuda"``, ``"cuda:1"``, ``"gpu:0"``, ``"xpu:0"``, ``"mps"``. Raises ``ValueError`` naming
    ``device`` when it is malformed or no such GPU exists."""
    if device is None:
        gpus = gpu_devices()
        return gpus[0] if gpus else _cpu()
    d = device.strip().lower()
    if d == "cpu":
        return _cpu()
    m = re.fullmatch(r"(cuda|gpu|xpu|mps|hip|rocm|opencl)(?::(\d+))?", d)
    if not m:
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N', 'gpu:N', 'xpu:N' or 'mps', got {device!r}")
    idx = int(m.group(2) or 0)
    gpus = gpu_devices()
    if idx >= len(gpus):
        seen = ", ".join(f"{g.index}: {g.name} ({g.api})" for g in gpus) or "none"
        raise ValueError(f"device: no GPU {device!r} on this machine (GPUs found: {seen})")
    return gpus[idx]


# ---------------------------------------------------------------------------------------------
# matching and overlay
def match_gpu(name: str, arch: str | None, manifests: Iterable[Manifest]) -> tuple[Manifest | None, str]:
    """The GPU manifest for a device name/arch and the level: ``exact`` (SKU regex), ``arch``
    (same architecture) or ``generic`` (``None``)."""
    gpus = sorted((m for m in manifests if m.kind == "gpu"), key=lambda m: m.name)
    for m in gpus:
        if any(re.search(p, name, re.IGNORECASE) for p in m.match):
            return m, "exact"
    for m in gpus:
        if arch and m.arch == arch:
            return m, "arch"
    return None, "generic"


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def _get(d: Mapping[str, Any], path: str) -> Any:
    for p in path.split("."):
        if not isinstance(d, Mapping) or p not in d:
            return None
        d = d[p]
    return d


def _figure(value: Any, source: str, note: str | None = None) -> dict[str, Any]:
    fig: dict[str, Any] = {"value": value, "source": source}
    if note:
        fig["note"] = note
    return fig


def resolve(info: DeviceInfo, manifests: Mapping[str, Manifest]) -> Manifest:
    """Build the manifest of a detected device: matched manifest + reported figures (+ derived
    figures where the datasheet has none)."""
    notes = list(info.notes)
    if info.kind == "cpu":
        name, level = match_cpu(info)
        base = manifests[name]
    else:
        found, level = match_gpu(info.name, info.arch, manifests.values())
        base = found or manifests["generic"]
    d = base.model_dump(exclude_none=True, exclude={"measured", "detection"})
    if level == "arch":
        for key in ("compute_units", "clocks", "memory", "flops"):
            d.pop(key, None)
        d.get("caches", {}).pop("l2_bytes", None)
        d.get("caches", {}).pop("l3_bytes", None)
        notes.append(f"no manifest for {info.name!r}; using {base.name}'s {base.arch} architecture limits "
                     "without its SKU figures (peaks, memory, clocks)")  # fmt: skip
    elif level == "generic":
        notes.append(f"no manifest matches {info.name!r} ({info.arch or 'unknown arch'}); using generic limits")
        d["kind"] = info.kind
        d.pop("cpu" if info.kind == "gpu" else "gpu", None)
        d["arch"] = info.arch or d["arch"]
        d["display_name"] = info.name or d["display_name"]
    elif info.kind == "gpu" and info.arch and base.arch != info.arch and info.arch.startswith(("sm_", "gfx")):
        notes.append(f"device reports {info.arch}, manifest {base.name} says {base.arch}")
    if info.vendor and d["vendor"] == "generic" and info.vendor in ("nvidia", "amd", "intel", "apple", "arm"):
        d["vendor"] = info.vendor
    for path, raw in info.reported.items():
        derived = path.startswith("~")  # fill only where nothing better exists
        path = path.lstrip("~")
        value, note = raw if isinstance(raw, tuple) else (raw, None)
        if derived and _get(d, path) is not None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not value > 0:  # a driver reporting 0 means "unknown", not a limit of zero
                continue
            v = int(value) if path in _INT_PATHS else float(value)
            _set(d, path, _figure(v, "derived" if derived else "reported", note))
        else:
            _set(d, path, value)
    if info.kind == "cpu":
        _derive_cpu(d, info.flags)
    d["detection"] = {"device": info.name, "api": info.api, "level": level, "notes": notes}
    return Manifest.model_validate(d)


_INT_PATHS = {
    "compute_units", "memory.size_bytes", "caches.l1_bytes", "caches.l2_bytes", "caches.l3_bytes",
    "cpu.threads_per_core", "cpu.vector_width_bits",
} | {f"gpu.{k}" for k in ("warp_size", "max_threads_per_block", "max_shared_mem_per_block",
                          "max_shared_mem_per_block_optin", "shared_mem_per_sm", "registers_per_sm",
                          "max_registers_per_thread", "max_threads_per_sm", "max_blocks_per_sm")}  # fmt: skip


def _derive_cpu(d: dict[str, Any], flags: frozenset[str]) -> None:
    """CPU peak FLOP/s upper bound = cores x clock x FMA units x 2 (multiply + add) x lanes."""
    cores, hz = _get(d, "compute_units.value"), _get(d, "clocks.boost_hz.value")
    width, fma = _get(d, "cpu.vector_width_bits.value"), _get(d, "cpu.fma_units_per_core.value")
    if cores and hz and width and fma:
        for dtype, bits in (("fp32", 32), ("fp64", 64)):
            if dtype not in d.setdefault("flops", {}):
                note = f"{cores} cores x {hz / 1e9:.2f} GHz x {fma} FMA x 2 x {width // bits} lanes"
                d["flops"][dtype] = _figure(cores * hz * fma * 2 * (width // bits), "derived", note)
    if {"amx_tile", "amx_bf16"} <= flags:
        engines = d.setdefault("tensor_engines", [])
        if not any(e["kind"] == "amx" for e in engines):
            engines.append({"kind": "amx", "dtypes": ["bf16", "int8"] + (["fp16"] if "amx_fp16" in flags else []),
                            "mma_shapes": ["m16n16k32", "m16n16k64"],
                            "note": "tiles of 16 rows x 64 bytes: TDPBF16PS m16n16k32, TDPBSSD m16n16k64"})  # fmt: skip
