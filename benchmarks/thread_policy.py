"""A chain of different ops, each served by a different library's thread pool, under each thread
policy, in fresh processes, interleaved (A B C A B C ...).

    python benchmarks/thread_policy.py [--cores 2] [--reps 3] [--rows 4096,64] [--out benchmarks/results/thread_policy.json]

The chain (float32, ROWS x 1024): UHOP layernorm -> numpy matmul (OpenBLAS threads) -> UHOP
softmax -> torch matmul (torch's OpenMP threads) -> UHOP elementwise chain, 20 times (200 at 64
rows), then, in the same process, torch alone: layer_norm, matmul, gelu and softmax on 64x64
tensors, torch imported after UHOP as a script that starts with ``import uhop`` does. Timing starts
once the stored entries' re-validation (in the background, once per process) is over. UHOP's kernels
come from a store tuned once beforehand (under the default policy, ``brief``; numba's OpenMP pool for the
row ops and chains on most CPUs). Policies (``UHOP_THREADS``): ``default`` (whatever the libraries
do: GNU OpenMP threads spin a millisecond or more after each parallel region), ``passive`` (OpenMP
pools started after ``import uhop`` sleep at once when idle), ``brief`` (they spin some tens of microseconds,
then sleep).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHAIN = r"""
import os, sys, time, json
import uhop  # first: the policy reaches the pools of numpy's OpenBLAS and torch only if they load after it
import numpy as np
import torch
rows = int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.standard_normal((rows, 1024)).astype(np.float32)
w = rng.standard_normal((1024, 1024)).astype(np.float32) / 32
g, b = np.ones(1024, np.float32), np.zeros(1024, np.float32)
wt = torch.from_numpy(w)
def chain(x):
    h = uhop.ops.layernorm(x, g, b)
    h = h @ w
    h = uhop.ops.softmax(h)
    h = (torch.from_numpy(h) @ wt).numpy()
    return uhop.ops.elementwise("sigmoid(x0*1.5+0.5)*x0-0.25", h)
chain(x)
uhop.wait()  # tuning ("tune"), or the once-per-process re-validation of the stored entries ("time")
if sys.argv[1] == "tune":
    print(json.dumps({"tuned": True}))
    sys.exit(0)
time.sleep(0.2)  # the idle tuning thread ends (uhop.tune.background.IDLE_S)
for _ in range(3):
    chain(x)
n = 20 if rows >= 1024 else 200
t = time.perf_counter()
for _ in range(n):
    chain(x)
s_chain = (time.perf_counter() - t) / n
import torch.nn.functional as F
y = torch.randn(64, 64)
def small():
    h = F.layer_norm(y, (64,))
    h = h @ y
    h = F.gelu(h)
    return torch.softmax(h, -1)
for _ in range(20):
    small()
t = time.perf_counter()
for _ in range(500):
    small()
print(json.dumps({"s_per_chain": s_chain, "s_torch_small": (time.perf_counter() - t) / 500}))
"""


POLICIES = ("default", "passive", "brief")


def run(policy: str, home: str, cores: int, mode: str, rows: int) -> dict:
    env = {**os.environ, "UHOP_HOME": home, "UHOP_THREADS": policy, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OPENBLAS_THREAD_TIMEOUT"):
        env.pop(k, None)
    cmd = [sys.executable, "-c", CHAIN, mode, str(rows)]
    if cores and hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:cores]
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=0, help="pin to this many cores (0: all)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows", default="4096,64", help="chain sizes (rows of 1024 float32), comma-separated")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    result: dict = {"cores": args.cores or os.cpu_count(), "policies": list(POLICIES), "chains": {}}
    for rows in [int(r) for r in args.rows.split(",")]:
        with tempfile.TemporaryDirectory() as home:
            run("brief", home, args.cores, "tune", rows)  # the product default tunes the store
            reps: dict[str, list[dict]] = {p: [] for p in POLICIES}
            for _ in range(args.reps):
                for policy in POLICIES:
                    reps[policy].append(run(policy, home, args.cores, "time", rows))
        med = {p: {k: statistics.median(r[k] for r in v) for k in v[0]} for p, v in reps.items()}
        result["chains"][f"{rows}x1024"] = {"reps": reps, "median_s": med}
        print(json.dumps({f"{rows}x1024": med}))
    result |= {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": "python benchmarks/thread_policy.py " + " ".join(sys.argv[1:])}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
