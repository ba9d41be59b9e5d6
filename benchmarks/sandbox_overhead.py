"""Sandbox overhead per candidate with a warm worker (issue 14): ``uhop.sandbox.check.check`` on
the honest ``softmax`` kernel file at the two validation shapes, a spare worker ready each time.
Prints the median of 7 of the whole check and of its start + calibrate + load part, without and
with timing. Usage: ``PYTHONPATH=$PWD python benchmarks/sandbox_overhead.py [auto|seccomp]``."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from uhop.sandbox.check import check, problems_for
from uhop.sandbox.kernelfile import load
from uhop.sandbox.worker import pool


def main(isolation: str = "auto") -> None:
    kf = load(Path(__file__).parent.parent / "tests" / "sandbox" / "honest" / "softmax_numpy.py")
    probs = problems_for(kf)
    workers = pool(isolation)
    check(kf, probs, time_it=False, isolation=isolation, workers=workers)  # warm the pool
    for time_it in (False, True):
        rows = []
        for _ in range(7):
            time.sleep(0.5)  # the spare worker is ready again
            t0 = time.perf_counter()
            r = check(kf, probs, time_it=time_it, isolation=isolation, workers=workers)
            rows.append((time.perf_counter() - t0, r.details["start_load_s"]))
        total = statistics.median(t for t, _ in rows)
        start = statistics.median(s for _, s in rows)
        print(f"{isolation} time_it={time_it}: check {total * 1e3:.0f} ms, start+calibrate+load {start * 1e3:.0f} ms")


if __name__ == "__main__":
    main(*sys.argv[1:])
