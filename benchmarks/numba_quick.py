"""Quick check of the numba backend's targets against numpy eager, in one run on this machine.

    python benchmarks/numba_quick.py [--json out.json]

Each numba candidate is compiled, validated against the float64 reference and timed with
``uhop.measure.bench.benchmark`` next to the numpy eager formula, on the same rotating inputs, in
interleaved rounds (each kernel keeps its best median); ratios are eager time / best numba
candidate time.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from uhop import backends as bk
from uhop.backends import numpy as numpy_backend
from uhop.measure.bench import benchmark
from uhop.measure.validate import ValidationSet, check_kernel
from uhop.problem import Problem


def eager_chain(x):
    return (1 / (1 + np.exp(-(x * 1.5 + 0.5)))) * x - 0.25


def eager_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def eager_layernorm(x):
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5)


def eager_rmsnorm(x):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def eager_matmul_gelu(a, b, bias):
    return numpy_backend.matmul_kernel("gelu", "float32")(a, b, bias)  # BLAS + numpy's multi-pass epilogue


def eager_attention(q, k, v):
    return numpy_backend.attention_kernel(True)(q, k, v)


# (op, dims, params, arity, numpy eager baseline, target speedup or None)
CASES = [
    ("elementwise", {"N": 16 * 1024 * 1024}, {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"}, 1, eager_chain, 8.0),
    ("softmax", {"R": 8192, "N": 1024}, {}, 1, eager_softmax, 3.0),
    ("layernorm", {"R": 8192, "N": 1024}, {}, 1, eager_layernorm, 3.0),
    ("rmsnorm", {"R": 8192, "N": 1024}, {}, 1, eager_rmsnorm, None),
    ("matmul", {"B": 1, "M": 2048, "N": 1024, "K": 256}, {"activation": "gelu"}, 3, eager_matmul_gelu, None),
    ("attention", {"B": 8, "S": 1024, "L": 1024, "D": 64, "E": 64}, {"causal": True}, 3, eager_attention, None),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of timed calls per kernel and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each kernel keeps its best")
    ap.add_argument("--only", nargs="*", help="ops to run (default: all)")
    args = ap.parse_args()
    nb = bk.get("numba")
    if not nb.available:
        raise SystemExit(nb.availability[1])
    print(nb.availability[1])
    results = []
    for op, dims, params, arity, eager, target in CASES:
        if args.only and op not in args.only:
            continue
        problem = Problem.make(op, dims, "float32", params, arity=arity)
        rng = np.random.default_rng(0)
        arg_sets = [problem.spec.make_inputs(problem.dim, problem.param, rng, "float32", arity) for _ in range(3)]
        vset = ValidationSet(problem, trials=1)
        kernels = {"numpy-eager": eager}
        status = {"numpy-eager": "ok"}
        for cand in nb.candidates(problem):
            kernel = nb.compile(cand, problem)
            status[cand.id] = check_kernel(kernel, vset, "numpy", "cpu").status
            kernels[cand.id] = kernel
        # Interleaved rounds, best median per kernel: on a shared machine a burst of other work
        # then hits every kernel alike instead of whichever happened to run during it.
        best_s = {name: math.inf for name in kernels}
        for _ in range(args.rounds):
            for name, kernel in kernels.items():
                if status[name] == "ok":
                    t = benchmark(kernel, arg_sets, min_time_s=args.min_time).median_s
                    best_s[name] = min(best_s[name], t)
        t_eager = best_s.pop("numpy-eager")
        rows = [{"candidate": n, "status": status[n], "median_s": t} for n, t in best_s.items()]
        best = min(rows, key=lambda r: r["median_s"])
        ratio = t_eager / best["median_s"]
        flag = "" if target is None else f" (target {target:.0f}x: {'met' if ratio >= target else 'MISSED'})"
        print(f"{problem.describe()}: numpy eager {t_eager * 1e3:.1f} ms, "
              f"numba {best['median_s'] * 1e3:.2f} ms [{best['candidate']}] -> {ratio:.1f}x{flag}")
        for r in rows:
            print(f"    {r['candidate']:<60} {r['status']:<12} {r['median_s'] * 1e3:8.2f} ms")
        results.append({"problem": problem.to_json(), "eager_s": t_eager, "candidates": rows,
                        "speedup": ratio, "target": target})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": nb.availability[1], "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
