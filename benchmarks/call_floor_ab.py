"""The tuner's call floor, A/B: ``uhop tune`` (the CLI, default settings) on a sequence of growing
problems, one fresh store per arm, with this checkout's code and with an older one (a git worktree
of the commit before the floor: ``git worktree add /tmp/old f7e44a3~1``). Reports each run's
tuning time (the tuner's own total), its pick and the pick's time, and how many candidates the
floor and the budget skipped. Describes the tuner, not a kernel.

    python benchmarks/call_floor_ab.py --old /tmp/old --out benchmarks/results/call_floor_ab_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def run(code: Path, home: str, op: str, shape: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "UHOP_HOME": home}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "uhop", "tune", op, "--shape", shape, "--json", out.name],
                           env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            return {"shape": shape, "error": p.stderr[-500:], "wall_s": wall}
        d = json.loads(Path(out.name).read_text())
    ms = d["measurements"]
    ok = [m for m in ms if m["status"] == "ok" and m.get("median_s")]
    c = d["chosen"]
    chosen = next((m["median_s"] for m in ok if m["candidate"] == c), None)
    return {
        "shape": shape, "wall_s": round(wall, 2), "tuning_s": round(d["overhead_s"].get("total", 0.0), 2),
        "pick": f"{c['backend']}/{c['template']}", "pick_us": chosen and round(chosen * 1e6, 2),
        "evaluated": sum(m["status"] != "skipped" for m in ms),
        "floor_skipped": sum(m["status"] == "skipped" and m["reason"].startswith("call floor") for m in ms),
        "budget_skipped": sum(m["status"] == "skipped" and m["reason"].startswith("budget") for m in ms),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="a checkout of the code before the call floor")
    ap.add_argument("--op", default="matmul")
    ap.add_argument("--shapes", default="4x4x4,8x8x8,16x16x16,32x32x32,64x64x64,128x128x128")
    ap.add_argument("--out")
    a = ap.parse_args()
    arms = {"before": Path(a.old).resolve(), "after": HERE}
    homes = {arm: tempfile.mkdtemp(prefix=f"uhop-floor-{arm}-") for arm in arms}
    rows: dict[str, list[dict]] = {arm: [] for arm in arms}
    for shape in a.shapes.split(","):  # interleaved: each shape in both arms before the next
        for arm, code in arms.items():
            r = run(code, homes[arm], a.op, shape)
            rows[arm].append(r)
            print(arm, json.dumps(r), flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.machine())
    out = {"machine": f"{cpu}, {os.cpu_count()} cores", "python": platform.python_version(), "op": a.op,
           "command": " ".join(sys.argv), "rows": rows,
           "note": "uhop tune, default settings, a fresh store per arm; tuning_s is the tuner's own total"}  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
