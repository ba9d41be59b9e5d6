"""A chain of different ops, each served by a different library's thread pool, under each thread
policy, in fresh processes, interleaved (A B A B ...).

    python benchmarks/thread_policy.py [--cores 2] [--reps 3] [--out benchmarks/results/thread_policy.json]

The chain (float32, 4096x1024): UHOP layernorm -> numpy matmul (OpenBLAS threads) -> UHOP
softmax -> torch matmul (torch's OpenMP threads) -> UHOP elementwise chain, 20 times. UHOP's kernels
come from a store tuned once beforehand (the default policy's picks; numba's OpenMP pool for the
row ops and chains on most CPUs). Policies: ``default`` (whatever the libraries do: OpenMP threads
spin after each parallel region), ``passive`` (``UHOP_THREADS=passive``: OpenMP pools started after
``import uhop`` sleep when idle, so the next library's threads get the cores).
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
import numpy as np
import uhop
import torch
rng = np.random.default_rng(0)
x = rng.standard_normal((4096, 1024)).astype(np.float32)
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
if sys.argv[1] == "tune":
    uhop.wait()
    print(json.dumps({"tuned": True}))
    sys.exit(0)
for _ in range(3):
    chain(x)
t = time.perf_counter()
for _ in range(20):
    chain(x)
print(json.dumps({"s_per_chain": (time.perf_counter() - t) / 20}))
"""


def run(policy: str, home: str, cores: int, mode: str) -> dict:
    env = {**os.environ, "UHOP_HOME": home, "UHOP_THREADS": policy, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("OMP_WAIT_POLICY", None)
    cmd = [sys.executable, "-c", CHAIN, mode]
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
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        run("default", home, args.cores, "tune")
        times: dict[str, list[float]] = {"default": [], "passive": []}
        for _ in range(args.reps):
            for policy in times:
                times[policy].append(run(policy, home, args.cores, "time")["s_per_chain"])
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"cores": args.cores or os.cpu_count(), "reps": times, "median_s": med,
              "passive_speedup": med["default"] / med["passive"], "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "python benchmarks/thread_policy.py " + " ".join(sys.argv[1:])}  # fmt: skip
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
