"""The one benchmark function, used by the tuner, the CLI and ``benchmarks/`` alike."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Bound at import, before any candidate code runs: a candidate that patches time.perf_counter
# in this process cannot change what the tuner reads (untrusted code runs in the sandbox anyway).
_perf_counter = time.perf_counter


@dataclass(frozen=True)
class Timing:
    """Per-call times in seconds: median, min and max over ``n`` samples, each sample the mean of
    ``calls`` back-to-back calls over rotating input sets. ``spread`` = (p90 - p10) / median."""

    median_s: float
    min_s: float
    max_s: float
    spread: float
    n: int
    calls: int

    @classmethod
    def failed(cls) -> Timing:
        return cls(math.inf, math.inf, math.inf, math.inf, 0, 0)


def benchmark(
    fn: Callable[..., Any],
    arg_sets: Sequence[Sequence[Any]],
    *,
    sync: Callable[[], None] | None = None,
    warmup: int = 1,
    repeat: int = 7,
    min_time_s: float = 0.05,
    cutoff_s: float = math.inf,
    timer: Callable[[], float] = _perf_counter,
    cuda_events: bool = False,
    max_time_s: float = math.inf,
) -> Timing:
    """Time ``fn(*args)`` cycling through ``arg_sets`` (rotating input buffers, so a kernel is not
    flattered by inputs that stay in cache from the previous call).

    ``sync`` waits for the device (GPU backends); it runs before each sample starts and before it
    ends, so asynchronous launches are counted. Samples are sized so that ``repeat`` of them take
    about ``min_time_s``. If the first measured call is already slower than ``cutoff_s`` (e.g. 3x
    the best candidate so far) timing stops there and that single time is returned. Calls so slow
    that ``repeat`` samples would pass ``max_time_s`` take fewer samples, three at least.

    ``cuda_events``: time each sample with a pair of CUDA events (device time of the whole
    sample, recorded on the current stream after synchronizing the whole device) instead of the
    host clock; ``sync`` is still called around samples.
    """
    if not arg_sets:
        raise ValueError("arg_sets must hold at least one set of inputs")
    sync = sync or (lambda: None)
    k = len(arg_sets)
    for i in range(max(warmup, 1)):
        fn(*arg_sets[i % k])
    sync()
    t0 = timer()
    fn(*arg_sets[0])
    sync()
    first = timer() - t0
    if first > cutoff_s:
        return Timing(first, first, first, 0.0, 1, 1)
    if first * repeat > max_time_s:
        repeat = max(3, min(repeat, int(max_time_s / first)))
    per_sample = max(min_time_s / max(repeat, 1), 1e-9)
    calls = max(1, min(10_000, int(per_sample / max(first, 1e-7))))
    samples = []
    j = 0
    if cuda_events:
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(max(repeat, 1)):
        sync()
        if cuda_events:
            torch.cuda.synchronize()
            start.record()
        t0 = timer()
        for _ in range(calls):
            fn(*arg_sets[j % k])
            j += 1
        if cuda_events:
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / calls)
            continue
        sync()
        samples.append((timer() - t0) / calls)
    samples.sort()
    med = statistics.median(samples)
    lo = samples[max(0, int(0.1 * (len(samples) - 1)))]
    hi = samples[min(len(samples) - 1, math.ceil(0.9 * (len(samples) - 1)))]
    return Timing(med, samples[0], samples[-1], (hi - lo) / med if med > 0 else 0.0, len(samples), calls)
