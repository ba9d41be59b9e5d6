"""Batched matmul with a batched b (q @ k^T written by hand: 12 heads x (1024 x 64) @ (64 x 1024),
float32) next to another busy process (nineteenth session): numpy as written (``a @ b``, a loop of
all-core BLAS calls, one per head), the numba ``batched`` kernel (heads as tasks, single-threaded
BLAS per task), then the product: ``@uhop.optimize("matmul")`` on the same function with default
settings, tuned on the idle machine in this process on an empty store. Each is timed idle and
while two other processes run multi-threaded numpy GEMMs, interleaved: medians of 7 calls per
round, 3 rounds. The kernel row times the candidate directly (it describes the candidate); the
``uhop`` row is the product path.

    python3 benchmarks/diagnosis/nineteenth_bmm_load.py [--out FILE] [--shape BxMxKxN]
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp(prefix="uhop-bmm-load-"))
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpuload import LOAD, idle_and_loaded  # noqa: E402

import uhop  # noqa: E402
from uhop.backends.numba import batched_matmul_kernel  # noqa: E402
from uhop.demo import _chosen  # noqa: E402

def scores(q, kt):
    return q @ kt


ap = argparse.ArgumentParser()
ap.add_argument("--out", default="benchmarks/results/diagnosis_nineteenth_bmm_load_cpu.json")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--shape", default="12x1024x64x1024")
a = ap.parse_args()
B, M, K, N = (int(x) for x in a.shape.split("x"))
rng = np.random.default_rng(0)
q = rng.standard_normal((B, M, K)).astype(np.float32)
kt = rng.standard_normal((B, K, N)).astype(np.float32)
opt = uhop.optimize("matmul")(scores)
t0 = time.perf_counter()
opt(q, kt)
uhop.wait()  # the background tuning run, on the idle machine
tuned_s = time.perf_counter() - t0
chosen = _chosen(opt, (q, kt))
per = max(1, -(-B // ((os.cpu_count() or 1) * 4)))
kern = batched_matmul_kernel("float32", "none", 2, False, per)
ref = q.astype(np.float64) @ kt.astype(np.float64)
for f in (lambda: kern(q, kt), lambda: opt(q, kt)):
    assert np.abs(f() - ref).max() < 1e-3 * np.abs(ref).max()
fns = {"numpy": lambda: scores(q, kt), f"batched_tasks_{per}": lambda: kern(q, kt), "uhop": lambda: opt(q, kt)}
res, med, summary = idle_and_loaded(fns, a.rounds)
print(json.dumps(summary, indent=1))
meta = {"numpy": np.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "shape": a.shape, "uhop_first_call_and_tuning_s": round(tuned_s, 1),
        "load": LOAD,
        "command": "python3 benchmarks/diagnosis/nineteenth_bmm_load.py" + (f" --shape {a.shape}" if a.shape != "12x1024x64x1024" else "")}
json.dump({"meta": meta, "chosen": str(chosen), "ms_per_round": res, "median_ms": med, "summary": summary},
          open(a.out, "w"), indent=1)
