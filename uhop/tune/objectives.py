"""Objectives beyond latency: energy per call and peak memory per call, for multi-objective tuning.

Energy (joules per call), from the best source available, named in the result's ``energy_method``:

1. NVIDIA GPUs: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, Volta and
   newer), read around a window of back-to-back calls of at least ``ENERGY_WINDOW_S``.
2. Intel/AMD CPUs with readable RAPL (``/sys/class/powercap/intel-rapl:0/energy_uj``): the package
   counter around the same window (it includes everything else running on the package).
3. Elsewhere an **estimate**: ``latency x nominal power``, nominal power being the hardware
   manifest's ``tdp_w`` when known, else ``DEFAULT_POWER_W`` for the device kind. An estimate is
   proportional to latency, so it only separates candidates that differ in where they run.

Memory (bytes): the peak extra memory one call needs (output included). CUDA: the caching
allocator's peak (``torch.cuda.max_memory_allocated``) over the call. CPU: the larger of the
traced Python/numpy allocation peak (``tracemalloc``) and the growth of the resident-set
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` on Linux).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

ENERGY_WINDOW_S = 0.3
DEFAULT_POWER_W = {"cpu": 65.0, "cuda": 300.0}
_RAPL = "/sys/class/powercap/intel-rapl:0/energy_uj"


def _repeat(fn: Callable[[], Any], sync: Callable[[], None], median_s: float) -> int:
    calls = max(1, int(ENERGY_WINDOW_S / max(median_s, 1e-7)))
    sync()
    for _ in range(calls):
        fn()
    sync()
    return calls


def _nvml_handle(device: str) -> Any:
    import pynvml  # nvidia-ml-py

    pynvml.nvmlInit()
    idx = int(device.split(":")[1]) if ":" in device else 0
    try:  # map torch's ordinal (which respects CUDA_VISIBLE_DEVICES) to NVML's physical index by UUID
        import torch

        uuid = str(torch.cuda.get_device_properties(idx).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else "GPU-" + uuid)
    except Exception:
        return pynvml.nvmlDeviceGetHandleByIndex(idx)


def energy_per_call(fn: Callable[[], Any], sync: Callable[[], None], device: str, median_s: float) -> tuple[float, str]:
    """(joules per call, method). ``fn()`` runs one call; ``median_s`` its measured time."""
    if not math.isfinite(median_s):
        return math.inf, "failed"
    if device.startswith("cuda"):
        try:
            import pynvml

            h = _nvml_handle(device)
            e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            t0 = time.perf_counter()
            calls = _repeat(fn, sync, median_s)
            e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            if e1 > e0:
                return (e1 - e0) / 1e3 / calls, f"nvml ({calls} calls, {time.perf_counter() - t0:.2f} s)"
        except Exception:
            pass
    elif os.access(_RAPL, os.R_OK):
        try:
            with open(_RAPL) as f:
                e0 = int(f.read())
            calls = _repeat(fn, sync, median_s)
            with open(_RAPL) as f:
                e1 = int(f.read())
            if e1 > e0:
                return (e1 - e0) / 1e6 / calls, f"rapl ({calls} calls)"
        except (OSError, ValueError):
            pass
    kind = "cuda" if device.startswith("cuda") else "cpu"
    power = DEFAULT_POWER_W[kind]
    src = "default"
    try:
        from uhop.space import manifest_limit

        p = manifest_limit(("tdp_w", "power_w", "tdp"), None, device)
        if p:
            power, src = p, "manifest"
    except Exception:
        pass
    return median_s * power, f"estimate: latency x {power:g} W ({src})"


def _hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory(fn: Callable[[], Any], sync: Callable[[], None], device: str) -> tuple[float, str]:
    """(peak extra bytes of one call, method)."""
    if device.startswith("cuda"):
        import torch

        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return float(max(peak, 0)), "torch.cuda.max_memory_allocated"
    import tracemalloc

    hwm = None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        hwm = _rss_kib()
    except OSError:
        pass
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = fn()
    traced = tracemalloc.get_traced_memory()[1] - base
    if started:
        tracemalloc.stop()
    floor = _nbytes(out)
    del out
    grown = None
    after = _hwm_kib()
    if hwm is not None and after is not None:
        grown = max(0, after - hwm) * 1024
    best, how = max((float(max(traced, 0)), "tracemalloc"), (float(grown or 0), "rss high-water mark"))
    if floor > best:  # allocators that neither trace nor grow RSS (torch reusing freed pages): the output at least
        return float(floor), "output size (allocator not traced)"
    return best, how


def _nbytes(x: Any) -> int:
    if hasattr(x, "nbytes"):
        return int(x.nbytes)
    if hasattr(x, "element_size") and hasattr(x, "numel"):
        return int(x.element_size() * x.numel())
    return 0
