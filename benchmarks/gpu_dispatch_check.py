"""GPU check of the core runtime path: cache-hit dispatch overhead on CUDA tensors, CuPy arrays
through DLPack, and tuning on CUDA with event timing.

Reproduce on a CUDA machine (from the repo root):

    PYTHONPATH=. python3 benchmarks/gpu_dispatch_check.py --out benchmarks/results/gpu_dispatch_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def overhead(fn, kernel, args, n=20000, rounds=7):
    """Per-call host time through ``fn`` minus through ``kernel`` (interleaved rounds, median)."""
    diffs, direct = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            kernel(*args)
        t1 = time.perf_counter()
        for _ in range(n):
            fn(*args)
        t2 = time.perf_counter()
        direct.append((t1 - t0) / n)
        diffs.append(((t2 - t1) - (t1 - t0)) / n)
    return statistics.median(diffs), statistics.median(direct)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.environ["UHOP_HOME"] = tempfile.mkdtemp()
    import torch

    import uhop
    from uhop.problem import Problem
    from uhop.tune.tuner import tune

    res: dict = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "command": "PYTHONPATH=. python3 benchmarks/gpu_dispatch_check.py",
    }  # fmt: skip

    @uhop.optimize("matmul")
    def mm(a, b):
        return a @ b

    a = torch.randn(64, 64, device="cuda")
    b = torch.randn(64, 64, device="cuda")
    mm(a, b)
    kernel = next(iter(mm._kernels.values()))
    ov, direct = overhead(mm, kernel, (a, b))
    res["dispatch_overhead_us"] = ov * 1e6
    res["kernel_host_us"] = direct * 1e6
    res["dispatch_chosen"] = next(iter(uhop.dispatch._resolved.values()))[2].id

    try:
        import cupy as cp

        x = cp.random.standard_normal((256, 1000), dtype=cp.float32)
        y = uhop.ops.softmax(x)
        ref = torch.softmax(torch.from_dlpack(x).double(), -1)
        res["cupy"] = {"type": type(y).__module__ + "." + type(y).__name__,
                       "max_err": float((torch.from_dlpack(y).double() - ref).abs().max())}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        res["cupy"] = {"error": f"{type(exc).__name__}: {exc}"}

    t0 = time.perf_counter()
    r = tune(problem=Problem.make("softmax", {"R": 32768, "N": 4096}, "bfloat16", device="cuda:0", array="torch"))
    res["tune_softmax_bf16"] = {
        "seconds": time.perf_counter() - t0, "chosen": r.best.candidate.id, "ms": r.best.median_s * 1e3,
        "gbps": r.problem.bytes() / r.best.median_s / 1e9,
        "measured": [[m.candidate.id, m.status, m.median_s * 1e3] for m in r.measurements[:12]],
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "tune_softmax_bf16"}, indent=1))
    print(res["tune_softmax_bf16"]["chosen"], res["tune_softmax_bf16"]["gbps"])


if __name__ == "__main__":
    main()
