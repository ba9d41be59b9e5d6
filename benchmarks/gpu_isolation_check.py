"""GPU check of crash containment at first use: what isolated tuning (the default for CUDA
problems) costs against in-process tuning, side by side, and what it buys.

For each GEMM shape and each ``UHOP_ISOLATE`` mode, a fresh process with an empty UHOP store and
an empty Triton cache calls ``uhop.ops.matmul`` on CUDA tensors once (first use: tune, store,
dispatch) and reports the wall time of that call, the pick and its rate. Then the faulty
candidates of ``tests/gpu/faulty_cuda_backend.py`` (an illegal address, a kernel that never ends)
are tuned with and without isolation: isolated, the caller's CUDA context stays usable;
in-process, the illegal address poisons it.

Reproduce on a CUDA machine (from the repo root):

    PYTHONPATH=. python3 benchmarks/gpu_isolation_check.py --out benchmarks/results/gpu_isolation_h100.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(4096, 4096, 4096), (3000, 5000, 2000)]


def first_use(mode: str, m: int, n: int, k: int) -> dict:
    import torch

    import uhop
    from uhop.dispatch import _resolved

    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    tuner = importlib.import_module("uhop.tune.tuner")

    inner, spans = tuner.tune, {}

    def timed_tune(*args, **kw):  # how much of the first call is tune() itself
        t = time.perf_counter()
        try:
            return inner(*args, **kw)
        finally:
            spans["tune_s"] = time.perf_counter() - t

    isolated = importlib.import_module("uhop.tune.isolated")

    evals: list = []
    in_proc, in_worker = tuner.evaluate, isolated.IsolatedEvaluator.evaluate

    def timed(fn):
        def run(*args, **kw):
            t = time.perf_counter()
            r = fn(*args, **kw)
            m = r[0] if isinstance(r, tuple) else r
            evals.append([m.candidate.id, m.status, round(time.perf_counter() - t, 3)])
            return r

        return run

    tuner.evaluate, isolated.IsolatedEvaluator.evaluate = timed(in_proc), timed(in_worker)
    spans["evals"] = evals
    tuner.tune = timed_tune
    t0 = time.perf_counter()
    out = uhop.ops.matmul(a, b)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    tuner.tune, tuner.evaluate, isolated.IsolatedEvaluator.evaluate = inner, in_proc, in_worker
    err = float((out.float() - (a.float() @ b.float())).abs().max())
    kernel, _, cand = next(iter(_resolved.values()))
    ms = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(5):
        kernel(a, b)
    ms[0].record()
    for _ in range(50):
        kernel(a, b)
    ms[1].record()
    torch.cuda.synchronize()
    t = ms[0].elapsed_time(ms[1]) / 50 / 1e3
    from uhop.store import open_store

    (entry,) = open_store().entries("matmul")
    statuses: dict[str, int] = {}
    for x in open_store().measurements(entry.key):
        statuses[x["status"]] = statuses.get(x["status"], 0) + 1
    return {"mode": mode, "shape": [m, n, k], "first_call_s": first, **spans, "statuses": statuses,
            "pick": cand.id, "ms": t * 1e3,
            "tflops": 2 * m * n * k / t / 1e12, "max_abs_err_vs_fp32": err}  # fmt: skip


def faults(mode: str) -> dict:
    import torch

    from uhop import backends as bk
    from uhop import config
    from uhop.problem import Problem
    from uhop.tune.tuner import tune

    sys.path.insert(0, str(ROOT / "tests" / "gpu"))
    bk.register("faulty_cuda", "faulty_cuda_backend:FaultyCudaBackend")
    p = Problem.make("softmax", {"R": 512, "N": 1000}, "float32", device="cuda:0", array="torch")
    candidates = ["illegal-address", "honest"] if mode == "never" else ["illegal-address", "hang", "honest"]
    bk.get("faulty_cuda").candidates = lambda problem: [bk.Candidate.of("faulty_cuda", c) for c in candidates]
    t0 = time.perf_counter()
    try:
        with config.override(isolate=mode, isolate_timeout_s=15, tune_budget_s=120, backends=("torch", "faulty_cuda")):
            res = tune(problem=p)
        outcome = {"pick": res.best.candidate.id if res.best else None,
                   "measured": [[x.candidate.id, x.status, x.reason[:160]] for x in res.measurements]}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the point of the in-process run
        outcome = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        torch.ones(1, device="cuda").add_(1).item()
        torch.cuda.synchronize()
        healthy = True
    except Exception as exc:  # noqa: BLE001
        healthy, outcome["after"] = False, f"{type(exc).__name__}: {exc}"[:200]
    return {"mode": mode, "seconds": time.perf_counter() - t0, "caller_context_usable": healthy, **outcome}


def child(argv: list[str]) -> None:
    what, mode = argv[0], argv[1]
    os.environ["UHOP_ISOLATE"] = mode
    row = first_use(mode, *map(int, argv[2:5])) if what == "gemm" else faults(mode)
    print("RESULT " + json.dumps(row), flush=True)


def run_child(*args: str) -> dict:
    env = dict(os.environ, UHOP_HOME=tempfile.mkdtemp(), TRITON_CACHE_DIR=tempfile.mkdtemp(),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env,
                       timeout=600)  # fmt: skip
    rows = [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if not rows:
        return {"args": list(args), "error": (p.stderr or p.stdout)[-1500:], "returncode": p.returncode}
    return {**rows[0], "process_s": time.perf_counter() - t0}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch

    res: dict = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "budget_s": float(os.environ.get("UHOP_TUNE_BUDGET_S", "10")),
        "command": "PYTHONPATH=. python3 benchmarks/gpu_isolation_check.py --out ...", "gemm": [], "faults": [],
    }  # fmt: skip
    try:
        import triton

        res["triton"] = triton.__version__
    except ImportError:
        pass
    for m, n, k in SHAPES if not os.environ.get("ONLY_SHAPE") else [SHAPES[int(os.environ["ONLY_SHAPE"])]]:
        for mode in ("never", "auto"):  # side by side, same fresh state for each
            row = run_child("gemm", mode, str(m), str(n), str(k))
            res["gemm"].append(row)
            print(json.dumps(row), flush=True)
    for mode in () if os.environ.get("SKIP_FAULTS") else ("auto", "never"):
        row = run_child("faults", mode)
        res["faults"].append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
