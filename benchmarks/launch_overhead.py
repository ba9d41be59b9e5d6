"""Host time per call of small GPU row ops: torch eager, the Triton row launchers (direct launches
of the compiled kernel, and through Triton's JIT for comparison), the CUDA cluster
launcher (rows past 16K), and the product
path (``uhop.ops.softmax`` with its pick stored), each run back to back N times with one
synchronize at the end, so a host-bound call shows its host cost; GPU time per call from CUDA
events for comparison. A candidate/product overhead study, GPU only.

    python benchmarks/launch_overhead.py [--out launch_overhead_h100.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def per_call_us(fn, n: int = 300) -> tuple[float, float]:
    """(host us per call over n back-to-back calls, GPU us per call by events)."""
    import torch

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t = time.perf_counter()
    e0.record()
    for _ in range(n):
        fn()
    e1.record()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return round(host, 2), round(e0.elapsed_time(e1) / n * 1e3, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/launch_overhead.json")
    a = ap.parse_args(argv)
    os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
    import torch
    from width_sweep import environment

    import uhop
    from uhop.backends import cuda_rows
    from uhop.backends.triton_kernels.rowops import OPS, launcher

    rows = []
    for R, N in ((16, 262144), (64, 4096), (132, 262144)):
        x = torch.randn(R, N, device="cuda", dtype=torch.bfloat16)
        split = launcher("split", {"CHUNK": 8192 if N > 16384 else 2048, "warps": 4, "phases": 1}, OPS["softmax"], 0.0,
                         "cuda:0")  # fmt: skip
        row = launcher("row", {"warps": 4, "ROWS": 1, "grid": "full", "stages": 1, "tiles": 1}, 0, 0.0, "cuda:0") \
            if N <= 16384 else None  # fmt: skip
        uhop.ops.softmax(x)
        uhop.wait()
        r = {"R": R, "N": N, "eager": per_call_us(lambda: torch.softmax(x, -1)), "split": per_call_us(lambda: split(x)),
             "empty+zeros": per_call_us(lambda: (torch.empty(R * 24, device="cuda"),
                                                  torch.zeros(R * 32, device="cuda", dtype=torch.int32))),
             "uhop.ops": per_call_us(lambda: uhop.ops.softmax(x))}  # fmt: skip
        # the Triton launchers as served (direct launches of the compiled kernel) and through the JIT
        from uhop.backends.triton_kernels import rowops, rows_long

        for name, lk in (("split", rows_long.split), ("row", rowops._row)):
            if name == "row" and row is None:
                continue
            lk._direct = False
            r[f"{name}_jit"] = per_call_us(lambda name=name: (split if name == "split" else row)(x))
            lk._direct = None
        if row is not None:
            r["row"] = per_call_us(lambda: row(x))
        else:  # the CUDA backend's cluster kernel (launched through ctypes, no Triton launch path)
            cl = cuda_rows.launcher({"CL": 8, "threads": 512, "U": 4}, OPS["softmax"], 0.0, "cuda:0")
            r["cluster"] = per_call_us(lambda: cl(x))
        print(r, flush=True)
        rows.append(r)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": environment(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
