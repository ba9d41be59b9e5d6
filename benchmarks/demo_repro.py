"""``uhop demo`` N times, each in a fresh process with an empty store: are the picks the same
run to run, and is any op slower than numpy beyond 5% (the tuner issue's reproducibility target)?

    python benchmarks/demo_repro.py --runs 3 --out benchmarks/results/demo_repro_cpu.json

This runs the product (the README's main command, default settings); the per-op times are the
demo's own interleaved numpy-vs-UHOP timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROW = re.compile(r"^│\s*(?P<fn>[a-z_]+): (?P<shapes>[^│]+?)\s*│\s*(?P<pick>[^│]+?)\s*│\s*(?P<numpy>[\d.]+)\s*│"
                 r"\s*(?P<uhop>[\d.]+)\s*│\s*(?P<x>[\d.]+)x\s*│$")  # fmt: skip
BLOCK = re.compile(r"whole block: numpy ([\d.]+) ms, UHOP ([\d.]+) ms -> ([\d.]+)x")


def one_run() -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "UHOP_HOME": home, "COLUMNS": "250", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "uhop", "demo"], env=env, capture_output=True, text=True, timeout=1800)
        wall = time.monotonic() - t0
    if p.returncode != 0:
        return {"error": p.stderr[-2000:], "wall_s": wall}
    rows = [m.groupdict() for m in map(ROW.match, p.stdout.splitlines()) if m]
    block = BLOCK.search(p.stdout.replace("\n", " "))
    return {
        "wall_s": wall,
        "ops": [{"fn": r["fn"], "shapes": r["shapes"], "pick": r["pick"], "numpy_ms": float(r["numpy"]),
                 "uhop_ms": float(r["uhop"]), "speedup": float(r["x"])} for r in rows],  # fmt: skip
        "block_speedup": float(block.group(3)) if block else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/demo_repro_cpu.json")
    args = ap.parse_args()
    runs = []
    for _ in range(args.runs):
        runs.append(one_run())
        print(json.dumps(runs[-1]), flush=True)
    ok = [r for r in runs if "error" not in r]
    by_op: dict[str, set[str]] = {}
    for r in ok:
        for o in r["ops"]:
            by_op.setdefault(f"{o['fn']}: {o['shapes']}", set()).add(o["pick"])
    summary = {
        "runs": len(runs), "failed": len(runs) - len(ok),
        "same_picks_every_run": {k: len(v) == 1 for k, v in by_op.items()},
        "picks": {k: sorted(v) for k, v in by_op.items()},
        "slower_than_numpy_beyond_5pct": [f"run {i + 1}: {o['fn']} {o['speedup']}x" for i, r in enumerate(ok)
                                          for o in r["ops"] if o["speedup"] < 0.95],  # fmt: skip
        "block_speedups": [r["block_speedup"] for r in ok],
    }
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    out = {"env": {"python": platform.python_version(), "machine": platform.machine(), "nproc": os.cpu_count(),
                   "loadavg_at_end": load, "command": "python benchmarks/demo_repro.py " + " ".join(sys.argv[1:]),
                   "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())},  # fmt: skip
           "summary": summary, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
