"""The host-time helper the diagnosis scripts share: microseconds of host time per call of ``fn``
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
