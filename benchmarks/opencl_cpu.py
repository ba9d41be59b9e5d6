"""The OpenCL backend's rate next to numpy on this CPU, in one run, interleaved.

    python benchmarks/opencl_cpu.py [--json benchmarks/results/opencl_cpu.json]

Measures the OpenCL backend (its candidates, compiled by the OpenCL driver found here: Debian's
PoCL on CI and the dev machines) against the numpy eager formula of each op, on the same rotating
inputs, with ``uhop.measure.bench.benchmark`` (the tuner's timing function), in interleaved rounds
(each kernel keeps its best median, so a burst of other work on the shared cores hits all kernels
alike). Every OpenCL candidate is validated against the float64 reference first. Reported: median
time per call, GFLOP/s and GB/s (the op's own FLOP and byte counts), and numpy time / OpenCL time.
The OpenCL time includes what the backend contract costs on this device (numpy in, numpy out:
PoCL's CPU device wraps host memory, so no copy).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np

from uhop import backends as bk
from uhop.backends import numpy as numpy_backend
from uhop.measure.bench import benchmark
from uhop.measure.validate import ValidationSet, check_kernel
from uhop.problem import Problem


def eager_chain(x):
    return (1 / (1 + np.exp(-(x * 1.5 + 0.5)))) * x - 0.25


def eager_softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def eager_layernorm(x):
    mu = np.mean(x, axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(np.mean((x - mu) ** 2, axis=-1, keepdims=True) + 1e-5)


def eager_rmsnorm(x):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def eager_matmul(a, b):
    return a @ b


def eager_matmul_gelu(a, b, bias):
    return numpy_backend.matmul_kernel("gelu", "float32")(a, b, bias)


# (op, dims, params, arity, numpy eager formula)
CASES = [
    ("elementwise", {"N": 1 << 22}, {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"}, 1, eager_chain),
    ("softmax", {"R": 4096, "N": 1024}, {}, 1, eager_softmax),
    ("layernorm", {"R": 4096, "N": 1024}, {}, 1, eager_layernorm),
    ("rmsnorm", {"R": 4096, "N": 1024}, {}, 1, eager_rmsnorm),
    ("matmul", {"B": 1, "M": 512, "N": 512, "K": 512}, {}, 2, eager_matmul),
    ("matmul", {"B": 1, "M": 512, "N": 1024, "K": 512}, {"activation": "gelu"}, 3, eager_matmul_gelu),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds of timed calls per kernel and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each kernel keeps its best")
    args = ap.parse_args()
    ocl = bk.get("opencl")
    if not ocl.available:
        raise SystemExit(ocl.availability[1])
    print(ocl.availability[1])
    results = []
    for op, dims, params, arity, eager in CASES:
        problem = Problem.make(op, dims, "float32", params, arity=arity)
        spec = problem.spec
        rng = np.random.default_rng(0)
        arg_sets = [spec.make_inputs(problem.dim, problem.param, rng, "float32", arity) for _ in range(3)]
        vset = ValidationSet(problem, trials=1)
        kernels = {"numpy-eager": eager}
        status = {"numpy-eager": "ok"}
        for cand in ocl.candidates(problem):
            t0 = time.perf_counter()
            kernel = ocl.compile(cand, problem)
            status[cand.id] = check_kernel(kernel, vset, "numpy", "cpu").status
            print(f"  {cand.id}: built and checked in {time.perf_counter() - t0:.2f} s ({status[cand.id]})")
            kernels[cand.id] = kernel
        best_s = {name: math.inf for name in kernels}
        for _ in range(args.rounds):
            for name, kernel in kernels.items():
                if status[name] == "ok":
                    best_s[name] = min(best_s[name], benchmark(kernel, arg_sets, min_time_s=args.min_time).median_s)
        flops = spec.flops(problem.dim, problem.param)
        nbytes = spec.bytes(problem.dim, "float32", problem.param)
        rows = [{"kernel": n, "status": status[n], "median_s": t, "gflops": flops / t / 1e9, "gbytes_s": nbytes / t / 1e9}
                for n, t in best_s.items()]  # fmt: skip
        t_np = best_s["numpy-eager"]
        ocl_rows = [r for r in rows if r["kernel"] != "numpy-eager" and r["status"] == "ok"]
        best = min(ocl_rows, key=lambda r: r["median_s"]) if ocl_rows else None
        ratio = t_np / best["median_s"] if best else float("nan")
        print(f"{problem.describe()}: numpy {t_np * 1e3:.2f} ms, OpenCL {best['median_s'] * 1e3 if best else math.nan:.2f} ms "
              f"[{best['kernel'] if best else '-'}] -> {ratio:.2f}x numpy")  # fmt: skip
        for r in rows:
            print(f"    {r['kernel']:<44} {r['status']:<12} {r['median_s'] * 1e3:9.3f} ms "
                  f"{r['gflops']:8.2f} GFLOP/s {r['gbytes_s']:7.2f} GB/s")  # fmt: skip
        results.append({"problem": problem.to_json(), "numpy_s": t_np, "kernels": rows, "opencl_vs_numpy": ratio})
    if args.json:
        import pyopencl

        meta = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores (shared)",
            "cpu": _cpu_name(),
            "opencl": ocl.availability[1],
            "versions": {"python": platform.python_version(), "numpy": np.__version__, "pyopencl": pyopencl.VERSION_TEXT},
            "command": "python benchmarks/opencl_cpu.py --json benchmarks/results/opencl_cpu.json",
            "min_time_s": args.min_time,
            "rounds": args.rounds,
        }
        with open(args.json, "w") as f:
            json.dump({**meta, "results": results}, f, indent=1)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
