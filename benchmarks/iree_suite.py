"""IREE llvm-cpu benchmarks: UHOP's tuned IREE candidates vs IREE's untuned default pipeline vs
numpy (OpenBLAS for GEMM, the eager formulas for softmax / layernorm), ratios in one run.

    python benchmarks/iree_suite.py                      # full suite -> benchmarks/results/iree_cpu.json
    python benchmarks/iree_suite.py --quick --out /tmp/q.json

Every entry is compiled, validated against the float64 reference (``check_kernel``) and timed with
``uhop.measure.bench.benchmark`` on the same rotating inputs. The machine may be shared: entries are
timed in ``--rounds`` interleaved rounds and each keeps its best round median, so a burst of load
from another process hurts one round, not one entry. Load averages are recorded with the results.

* ``iree untuned``: the emitted module compiled with only the target flags (IREE's default
  pipeline, no UHOP pass or tile size);
* ``iree <candidate>``: each of the iree backend's candidates (the tuning space's seeds);
* ``numpy``: ``np.matmul`` (OpenBLAS) for matmul, the plain eager formula otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

if "--threads" in sys.argv:  # before numpy loads OpenBLAS: its thread count is read at load time
    _n = sys.argv[sys.argv.index("--threads") + 1]
    if _n != "0":
        for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[_var] = _n

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uhop import backends as bk  # noqa: E402
from uhop.backends.base import Candidate  # noqa: E402
from uhop.measure.bench import benchmark  # noqa: E402
from uhop.measure.validate import ValidationSet, check_kernel  # noqa: E402
from uhop.problem import Problem  # noqa: E402

FULL = [
    ("matmul", {"B": 1, "M": 256, "N": 256, "K": 256}, {}, 2),
    ("matmul", {"B": 1, "M": 512, "N": 512, "K": 512}, {}, 2),
    ("matmul", {"B": 1, "M": 1024, "N": 1024, "K": 1024}, {}, 2),
    ("matmul", {"B": 1, "M": 2048, "N": 1024, "K": 768}, {"activation": "gelu"}, 3),
    ("softmax", {"R": 8192, "N": 1024}, {}, 1),
    ("layernorm", {"R": 8192, "N": 1024}, {}, 3),
    ("elementwise", {"N": 1 << 22}, {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"}, 1),
]
QUICK = [
    ("matmul", {"B": 1, "M": 256, "N": 256, "K": 256}, {}, 2),
    ("softmax", {"R": 1024, "N": 1024}, {}, 1),
]


def numpy_eager(problem: Problem):
    """The numpy path a user would write (OpenBLAS for GEMM)."""
    p = problem.param
    if problem.op == "matmul":
        npb = bk.get("numpy")
        return npb.compile(Candidate.of("numpy", "blas"), problem)
    if problem.op == "softmax":

        def softmax(x):
            e = np.exp(x - x.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)

        return softmax
    if problem.op == "layernorm":
        eps = p["eps"]

        def layernorm(x, w, b):
            mu = x.mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b

        return layernorm
    npb = bk.get("numpy")
    return npb.compile(Candidate.of("numpy", "eager", block=0), problem)


def untuned(problem: Problem):
    """IREE's default pipeline on the emitted module: no UHOP passes, flags or tile sizes."""
    from uhop.backends.iree import _load, _wrap
    from uhop.mlir.compile import compile_module
    from uhop.mlir.emit import emit

    e = emit(problem.op, problem.dim, problem.dtype, problem.param, problem.arity)
    vmfb, _ = compile_module(e.text, "llvm-cpu", [], op=problem.op)
    return _wrap(problem, _load(vmfb), e.input_shapes, e.output_shape)


def run_problem(op: str, dims: dict, params: dict, arity: int, rounds: int, min_time_s: float) -> dict[str, Any]:
    iree = bk.get("iree")
    problem = Problem.make(op, dims, "float32", params, arity)
    entries: dict[str, Any] = {}
    status: dict[str, str] = {}
    build_s: dict[str, float] = {}
    makers = [("iree untuned", lambda: untuned(problem))]
    makers += [(f"iree {c.template}{{{','.join(f'{k}={v}' for k, v in c.config)}}}",
                lambda c=c: iree.compile(c, problem)) for c in iree.candidates(problem)]  # fmt: skip
    makers.append(("numpy", lambda: numpy_eager(problem)))
    check = ValidationSet(problem, trials=1)
    for label, make in makers:
        t0 = time.perf_counter()
        try:
            kernel = make()
        except Exception as exc:  # e.g. the register-pressure guard: recorded, not fatal
            status[label] = f"compile-error: {type(exc).__name__}: {str(exc)[:200]}"
            continue
        build_s[label] = time.perf_counter() - t0
        v = check_kernel(kernel, check, "numpy", "cpu")
        if not v.ok:
            status[label] = f"{v.status}: {v.reason}"
            continue
        status[label] = "ok"
        entries[label] = kernel
    timing_set = ValidationSet(problem, trials=2)
    arg_sets = [t.inputs for t in timing_set.trials]
    best: dict[str, float] = {k: math.inf for k in entries}
    rounds_ms: dict[str, list[float]] = {k: [] for k in entries}
    for _ in range(rounds):
        for label, kernel in entries.items():
            t = benchmark(kernel, arg_sets, repeat=5, min_time_s=min_time_s)
            best[label] = min(best[label], t.median_s)
            rounds_ms[label].append(round(t.median_s * 1e3, 4))
    tuned = {k: v for k, v in best.items() if k.startswith("iree ") and k != "iree untuned"}
    best_label = min(tuned, key=tuned.get) if tuned else None
    out = {
        "problem": problem.describe(),
        "op": op, "dims": dims, "params": params, "arity": arity,
        "ms": {k: round(v * 1e3, 4) for k, v in best.items()},
        "round_medians_ms": rounds_ms,
        "load_average": os.getloadavg(),
        "status": status,
        "build_s": {k: round(v, 2) for k, v in build_s.items()},
        "best_iree": best_label,
    }  # fmt: skip
    if best_label:
        b = best[best_label]
        if "iree untuned" in best:
            out["untuned_over_tuned"] = round(best["iree untuned"] / b, 3)
        if "numpy" in best:
            out["tuned_over_numpy"] = round(b / best["numpy"], 3)
            out["numpy_over_tuned"] = round(best["numpy"] / b, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two small problems (CI smoke run)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best round kept)")
    ap.add_argument("--min-time", type=float, default=0.25, help="seconds per benchmark call")
    ap.add_argument("--only", default="", help="comma-separated ops to run (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="threads for numpy and IREE (0: each library's default)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "iree_cpu.json")
    args = ap.parse_args()
    from uhop.mlir.compile import compiler_version
    from uhop.mlir.passes import host_target
    from uhop.problem import cpu_model

    if args.threads:
        import iree.runtime as rt

        rt.flags.parse_flags(f"--task_topology_group_count={args.threads}")
    load_start = os.getloadavg()
    results = []
    only = {o for o in args.only.split(",") if o}
    for op, dims, params, arity in QUICK if args.quick else FULL:
        if only and op not in only:
            continue
        r = run_problem(op, dims, params, arity, args.rounds, args.min_time)
        results.append(r)
        shown = sorted(r["ms"].items(), key=lambda kv: kv[1])
        print(r["problem"], flush=True)
        for k, v in shown:
            print(f"    {v:10.3f} ms  {k}", flush=True)
        for k, v in r["status"].items():
            if v != "ok":
                print(f"    {'-':>10}     {k}: {v}", flush=True)
        print("    " + ", ".join(f"{k}={r[k]}" for k in ("untuned_over_tuned", "tuned_over_numpy", "numpy_over_tuned")
                                 if k in r), flush=True)  # fmt: skip
    hw = host_target()
    doc = {
        "command": "python benchmarks/iree_suite.py" + (" --quick" if args.quick else "")
        + f" --rounds {args.rounds} --threads {args.threads}" + (f" --only {args.only}" if args.only else ""),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "iree": compiler_version(), "simd_bytes": hw.simd_bytes,
                    "l2_bytes": hw.l2_bytes, "hw_source": hw.source},
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }  # fmt: skip
    mm = [r for r in results if r["op"] == "matmul" and "untuned_over_tuned" in r]
    if mm:
        doc["targets"] = {
            "max_untuned_over_tuned_matmul (>= 2)": max(r["untuned_over_tuned"] for r in mm),
            "matmul_1024_tuned_over_numpy (<= 1.5)": next(
                (r.get("tuned_over_numpy") for r in mm if r["dims"].get("M") == 1024 and r["dims"].get("K") == 1024), None
            ),
            "softmax_numpy_over_iree (>= 3)": next((r.get("numpy_over_tuned") for r in results if r["op"] == "softmax"), None),
            "layernorm_numpy_over_iree (>= 3)": next(
                (r.get("numpy_over_tuned") for r in results if r["op"] == "layernorm"), None
            ),
        }
        print(json.dumps(doc["targets"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
