"""The wall-time helper the CPU diagnosis scripts share: the median milliseconds of ``n`` calls of
``fn`` after ``warm`` untimed ones (no GPU, no torch needed)."""
import statistics
import time


def median_ms(fn, n: int = 15, warm: int = 2) -> float:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
