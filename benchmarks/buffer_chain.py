"""Transfers saved by uhop.Buffer on a chain of 5 ops on a CUDA GPU, and CUDA managed memory
against explicit copies.

    PYTHONPATH=. python3 benchmarks/buffer_chain.py [--n 4096] [--json out.json]

The chain, all through ``uhop.ops`` (float32, n x n):
``matmul(x, w) -> elementwise silu(y)*1.5-0.25 -> layernorm -> softmax -> rmsnorm``.

Three ways to run it, each timed end to end (fresh host input -> result on the host), the same
UHOP kernels underneath (resolved in a warm-up pass first):

* ``host round trips`` (before): what code that moves data per call does: each op's inputs go
  host -> GPU and its output GPU -> host (``torch.from_numpy(a).cuda()`` / ``.cpu().numpy()``);
* ``buffers, explicit copies`` (after): ``uhop.Buffer(x)`` in, Buffers between ops: the inputs
  go to the GPU once (where the placement policy puts the matmul), the result comes back once
  when read;
* ``buffers, managed memory``: ``uhop.Buffer(x, managed=True)``: inputs in ``cudaMallocManaged``
  memory written by the CPU, pages migrate on the GPU's first touch; the result is read back
  with one explicit copy.

Every copy is counted by ``uhop.buffer.TRANSFERS`` (count, bytes, seconds); times are the
median of ``--iters`` iterations after one warm-up, with ``torch.cuda.synchronize`` at the end
of each. The three results are checked against a float64 evaluation of the chain on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

import uhop
from uhop.buffer import TRANSFERS, Buffer

EXPR = "silu(x0)*1.5-0.25"
CHAIN = (
    ("matmul", lambda y, w: uhop.ops.matmul(y, w)),
    ("elementwise", lambda y, w: uhop.ops.elementwise(EXPR, y)),
    ("layernorm", lambda y, w: uhop.ops.layernorm(y)),
    ("softmax", lambda y, w: uhop.ops.softmax(y)),
    ("rmsnorm", lambda y, w: uhop.ops.rmsnorm(y)),
)


def round_trips(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Before: every op's inputs to the GPU, its output back to the host (copies counted)."""
    y = x
    for name, op in CHAIN:
        ins = [Buffer(y).to("cuda:0")] + ([Buffer(w).to("cuda:0")] if name == "matmul" else [None])
        y = Buffer(op(*ins)).numpy()
    return y


def buffers(x: np.ndarray, w: np.ndarray, managed: bool) -> tuple[np.ndarray, list[list[str]]]:
    """After: Buffers in, Buffers between ops, the result read once. Returns where each op ran."""
    y, bw = Buffer(x, managed=managed), Buffer(w, managed=managed)
    where = []
    for _, op in CHAIN:
        y = op(y, bw)
        where.append(list(y.locations))
    return y.numpy(), where


def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The chain in float64 on the GPU."""
    y = torch.from_numpy(x).cuda().double() @ torch.from_numpy(w).cuda().double()
    y = torch.nn.functional.silu(y) * 1.5 - 0.25
    y = torch.nn.functional.layer_norm(y, y.shape[-1:], eps=1e-5)
    y = torch.softmax(y, -1)
    y = y / torch.sqrt((y * y).mean(-1, keepdim=True) + 1e-6)
    return y.cpu().numpy()


def run(name: str, fn, x_sets, w, iters: int) -> dict:
    fn(x_sets[0], w)  # warm-up (kernels resolved, managed pools touched)
    torch.cuda.synchronize()
    times, transfers, out, where = [], [], None, None
    for i in range(iters):
        TRANSFERS.reset()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = fn(x_sets[i % len(x_sets)], w)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        transfers.append(TRANSFERS.snapshot())
        out, where = res if isinstance(res, tuple) else (res, None)
    print(f"{name:<26} {statistics.median(times) * 1e3:8.2f} ms  copies {transfers[-1]['count']:3d}  "
          f"{transfers[-1]['bytes'] / 2**20:8.1f} MiB  {transfers[-1]['seconds'] * 1e3:7.2f} ms copying")  # fmt: skip
    return {"scenario": name, "median_s": statistics.median(times), "times_s": times,
            "transfers": transfers[-1], "where": where, "_out": out}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (torch.cuda.is_available() is False)")
    rng = np.random.default_rng(0)
    n = args.n
    x_sets = [rng.standard_normal((n, n), dtype=np.float32) for _ in range(2)]
    w = (rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)).astype(np.float32)
    t0 = time.perf_counter()
    round_trips(x_sets[0], w)  # first use: UHOP resolves (tunes or loads) each op's kernel
    uhop.wait(60)  # background tuning (the default policy) done: its winners are in service
    print(f"first pass (kernel resolution) {time.perf_counter() - t0:.1f} s")
    scenarios = [
        run("host round trips", round_trips, x_sets, w, args.iters),
        run("buffers, explicit copies", lambda x, w: buffers(x, w, False), x_sets, w, args.iters),
    ]
    try:
        import cupy  # noqa: F401

        scenarios.append(run("buffers, managed memory", lambda x, w: buffers(x, w, True), x_sets, w, args.iters))
    except ImportError as exc:
        print(f"managed memory skipped: {exc}")
    ref = reference(x_sets[(args.iters - 1) % len(x_sets)], w)
    for s in scenarios:
        out = s.pop("_out")
        s["max_abs_err_vs_f64"] = float(np.max(np.abs(out - ref)))
        s["ok"] = bool(np.allclose(out, ref, rtol=1e-3, atol=1e-4))
    base = scenarios[0]
    for s in scenarios[1:]:
        s["copies_saved"] = base["transfers"]["count"] - s["transfers"]["count"]
        s["bytes_saved"] = base["transfers"]["bytes"] - s["transfers"]["bytes"]
        s["speedup_vs_round_trips"] = base["median_s"] / s["median_s"]
    for s in scenarios:
        print(f"{s['scenario']:<26} max |err| vs float64 {s['max_abs_err_vs_f64']:.2e} ok={s['ok']}"
              + (f"  saved {s['copies_saved']} copies / {s['bytes_saved'] / 2**20:.0f} MiB, "
                 f"{s['speedup_vs_round_trips']:.2f}x" if "copies_saved" in s else ""))  # fmt: skip
    from uhop.dispatch import _resolved

    chosen = sorted({c.id for _, _, c in _resolved.values()})
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpu": torch.cuda.get_device_name(0),
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "numpy": np.__version__, "cupy": _version("cupy"), "uhop": uhop.__version__},  # fmt: skip
        "settings": {k: v for k, v in os.environ.items() if k.startswith("UHOP_")},
        "chain": [op for op, _ in CHAIN], "n": n, "dtype": "float32", "iters": args.iters,
        "command": "PYTHONPATH=. python3 benchmarks/buffer_chain.py --json benchmarks/results/buffer_chain_h200.json",
        "kernels": chosen,
    }  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**meta, "scenarios": scenarios}, f, indent=1)


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
