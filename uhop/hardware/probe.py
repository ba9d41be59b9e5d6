"""``uhop hw probe``: measure memory bandwidth and peak FLOP/s on this machine and store them as
``measured`` figures under ``UHOP_HOME/hardware/<device key>.json``, where
:func:`uhop.hardware.get_capabilities` picks them up (measured beats datasheet).

Micro-benchmarks, timed by :func:`uhop.measure.bench.benchmark` (the median of timed repeats):

- bandwidth: a STREAM-style copy of a buffer several times the last-level cache, counting bytes
  read plus bytes written (numpy, one chunk per core, on the CPU; ``Tensor.copy_`` on a GPU);
- FLOP/s: a square matrix product, 2 n^3 FLOP per call (``numpy.matmul`` in fp64 and fp32 on the
  CPU; ``torch.mm`` in fp64, fp32, tf32, fp16, bf16, plus fp8 through ``torch._scaled_mm`` and
  int8 through ``torch._int_mm`` where the GPU has them). Random inputs, not zeros: tensor cores
  draw less power, and clock higher, on zeros.

Measured peaks are what the library reaches, the ceiling a roofline percentage should use.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from uhop.hardware.detect import DeviceInfo, detect
from uhop.hardware.schema import Figure, Measured, normalize_dtype

GiB = 1024**3
MiB = 1024**2


def store_dir() -> Path:
    from uhop.config import settings

    return settings().home / "hardware"


def path_for(info: DeviceInfo) -> Path:
    return store_dir() / f"{info.key}.json"


def load(info: DeviceInfo) -> Measured | None:
    """The stored probe results for ``info``'s device, or ``None`` (missing or unreadable: a stale
    or corrupt file must not break capability lookups; ``uhop hw probe`` rewrites it)."""
    p = path_for(info)
    try:
        return Measured.model_validate(json.loads(p.read_text()))
    except (OSError, ValueError):
        return None


def save(measured: Measured, info: DeviceInfo) -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    p = path_for(info)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(measured.model_dump_json(indent=2, exclude_none=True))
    os.replace(tmp, p)
    return p


def _time(fn: Callable[[], Any], sync: Callable[[], None] | None, min_time_s: float) -> float:
    import time

    from uhop.measure.bench import benchmark

    # Run for a while first: an idle GPU sits at a low clock and ramps up over ~100 ms, so a
    # short warm-up times the ramp, not the peak.
    end = time.perf_counter() + min_time_s
    while time.perf_counter() < end:
        fn()
        if sync:
            sync()
    t = benchmark(fn, [()], sync=sync, warmup=1, repeat=5, min_time_s=min_time_s)
    return t.median_s


def _fig(value: float, note: str) -> Figure:
    return Figure(value=float(value), source="measured", note=note)


def probe(
    device: str | None = None,
    *,
    size_bytes: int | None = None,
    matmul_n: int | None = None,
    dtypes: Sequence[str] | None = None,
    min_time_s: float = 0.2,
) -> tuple[Measured, DeviceInfo]:
    """Measure the device (``None``: first GPU, else the CPU). ``size_bytes``: copy buffer size
    (default: 1 GiB, less on small memories); ``matmul_n``: matrix size (CPU 2048, GPU 8192);
    ``dtypes``: which FLOP/s to measure (default: all the device runs)."""
    from uhop.hardware import manifests
    from uhop.hardware.detect import resolve

    for arg, v in (("size_bytes", size_bytes), ("matmul_n", matmul_n)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{arg}: expected a positive int, got {v!r}")
    if dtypes is not None:
        dtypes = [normalize_dtype(d) for d in dtypes]
    info = detect(device)
    caps = resolve(info, manifests())
    if info.kind == "cpu":
        bw, flops, method = _probe_cpu(caps, size_bytes, matmul_n or 2048, dtypes, min_time_s)
    elif info.api in ("torch.cuda", "torch.hip"):
        bw, flops, method = _probe_torch(info, caps, size_bytes, matmul_n or 8192, dtypes, min_time_s)
    else:
        raise ValueError(f"device: probing {info.name!r} through {info.api} is not supported (needs torch CUDA/ROCm)")
    measured = Measured(
        device=info.name, manifest=caps.name, host=platform.node(),
        when=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), method=method,
        bandwidth_bytes_per_s=bw, flops=flops,
    )  # fmt: skip
    return measured, info


def _buffer_bytes(caps: Any, size_bytes: int | None) -> int:
    if size_bytes:
        return size_bytes
    mem = caps.figure("memory.size_bytes")
    return int(min(GiB, mem.value // 16)) if mem else GiB


def _probe_cpu(caps, size_bytes, n, dtypes, min_time_s) -> tuple[Figure, dict[str, Figure], str]:
    import numpy as np

    nbytes = _buffer_bytes(caps, size_bytes)
    threads = max(1, min(os.cpu_count() or 1, caps.compute_units.value if caps.compute_units else 1))
    bw = _fig(_cpu_copy_bandwidth(np, nbytes, threads, min_time_s),
              f"numpy copy of {nbytes / MiB:.0f} MiB on {threads} threads, read + write")  # fmt: skip
    flops: dict[str, Figure] = {}
    rng = np.random.default_rng()
    for name, dt in (("fp64", np.float64), ("fp32", np.float32)):
        if dtypes and name not in dtypes:
            continue
        a, b = rng.standard_normal((n, n)).astype(dt), rng.standard_normal((n, n)).astype(dt)
        c = np.empty((n, n), dt)
        t = _time(lambda a=a, b=b, c=c: np.matmul(a, b, out=c), None, min_time_s)
        flops[name] = _fig(2 * n**3 / t, f"numpy.matmul n={n}")
    method = f"numpy {np.__version__}: STREAM copy ({nbytes / MiB:.0f} MiB), matmul n={n}; median of timed repeats"
    return bw, flops, method


def _cpu_copy_bandwidth(np, nbytes: int, threads: int, min_time_s: float) -> float:
    src = np.ones(max(nbytes // 8, 1))  # written, so the pages are really there
    dst = np.zeros_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL for large copies

        def copy() -> None:
            list(pool.map(lambda ab: np.copyto(dst[ab[0] : ab[1]], src[ab[0] : ab[1]]), chunks))

        return 2 * src.nbytes / _time(copy, None, min_time_s)


def _torch_copy_bandwidth(torch, dev, nbytes: int, min_time_s: float) -> float:
    src = torch.ones(max(nbytes // 4, 1), dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _time(lambda: dst.copy_(src), lambda: torch.cuda.synchronize(dev), min_time_s)


def _probe_torch(info, caps, size_bytes, n, dtypes, min_time_s) -> tuple[Figure, dict[str, Figure], str]:
    import torch

    dev = torch.device("cuda", info.index)
    def sync() -> None:
        torch.cuda.synchronize(dev)

    nbytes = _buffer_bytes(caps, size_bytes)
    bw = _fig(_torch_copy_bandwidth(torch, dev, nbytes, min_time_s), f"Tensor.copy_ of {nbytes / MiB:.0f} MiB, read + write")
    flops: dict[str, Figure] = {}
    skipped: list[str] = []
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name in ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8"):
            if dtypes and name not in dtypes:
                continue
            try:
                fn, note = _torch_mm(torch, name, n, dev)
                torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
                t = _time(fn, sync, min_time_s)
            except Exception as exc:  # dtype not supported on this GPU or torch build
                skipped.append(f"{name} ({type(exc).__name__})")
                continue
            if math.isfinite(t) and t > 0:
                flops[name] = _fig(2 * n**3 / t, note)
            del fn
            torch.cuda.empty_cache()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    method = f"torch {torch.__version__}: copy_ ({nbytes / MiB:.0f} MiB), mm n={n} on random data; median of timed repeats"
    if skipped:
        method += f"; not measured: {', '.join(skipped)}"
    return bw, flops, method


def _torch_mm(torch, name: str, n: int, dev) -> tuple[Callable[[], Any], str]:
    if name == "fp8":
        a = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt wants
        one = torch.ones((), device=dev)
        fn = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
        fn()
        return fn, f"torch._scaled_mm e4m3 n={n}"
    if name == "int8":
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=dev)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=dev).t()  # column-major: cuBLASLt IMMA path
        fn = lambda: torch._int_mm(a, b)  # noqa: E731
        fn()
        return fn, f"torch._int_mm n={n}"
    dt = {"fp64": torch.float64, "fp32": torch.float32, "tf32": torch.float32,
          "fp16": torch.float16, "bf16": torch.bfloat16}[name]  # fmt: skip
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    c = torch.empty(n, n, device=dev, dtype=dt)
    return (lambda: torch.mm(a, b, out=c)), f"torch.mm {name} n={n}"
