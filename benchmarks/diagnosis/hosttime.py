"""The GPU helpers the diagnosis scripts share: microseconds of host time per call of ``fn``
on a CUDA device (``warm`` calls first; the device drained before and after the timed loop, so
the figure is the host's cost while the GPU keeps up, not the kernels')."""
import time

import torch


def host_us(fn, n: int = 3000, warm: int = 50) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return us


def event_gbps(fn, args, nbytes: int, n: int = 10) -> float:
    """GB/s of ``fn(*args)`` moving ``nbytes`` per call: CUDA events around ``n`` calls."""
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn(*args)
    e.record()
    torch.cuda.synchronize()
    return nbytes / (s.elapsed_time(e) / n * 1e-3) / 1e9


def row_case(op: str, R: int, N: int):
    """A row op's bf16 inputs on cuda:0, seeded (x, then layernorm's weight and bias or rmsnorm's
    weight), and the bytes one call moves (x read, y written, the weights read once)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(R, N, device="cuda", dtype=torch.bfloat16, generator=g)
    nw = {"layernorm": 2, "rmsnorm": 1}.get(op, 0)
    args = [x] + [torch.randn(N, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(nw)]
    return args, 2 * x.numel() * 2 + nw * N * 2


def interleaved_gbps(kernels: dict, args, nbytes: int, rounds: int = 5) -> dict:
    """Median GB/s per named kernel over ``rounds`` rounds, each timing every kernel once."""
    import statistics

    t = {c: [] for c in kernels}
    for _ in range(rounds):
        for c, k in kernels.items():
            t[c].append(event_gbps(k, args, nbytes))
    return {c: round(statistics.median(v), 1) for c, v in t.items()}


def best_by(med: dict, field: str, values) -> dict:
    """For each value of config ``field`` (keys of ``med`` are JSON configs): the fastest (config, GB/s)."""
    import json

    return {v: max(((c, m) for c, m in med.items() if json.loads(c)[field] == v), key=lambda p: p[1], default=None)
            for v in values}
