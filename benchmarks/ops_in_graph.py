"""uhop.ops calls inside torch.compile (one custom op node each, uhop/ops/in_graph.py) next to the
same calls in eager code and to torch's own ops compiled by Inductor, in one process, interleaved.
A small block (rmsnorm -> matmul+GELU -> softmax) at a few sizes; inference (no_grad). Describes the
product path: uhop.ops with default settings on an empty store, after uhop.wait().

    python benchmarks/ops_in_graph.py --device cuda:0 --dtype bfloat16 --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import uhop  # first, as the README asks: UHOP's thread policy then reaches torch's and numpy's pools  # isort: skip
import torch


def block_uhop(x, w, g):
    return uhop.ops.softmax(uhop.ops.matmul(uhop.ops.rmsnorm(x, g), w, activation="gelu_tanh"))


def block_torch(x, w, g):
    h = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * g
    return torch.softmax(torch.nn.functional.gelu(h @ w, approximate="tanh"), -1)


def timed(f, args, sync, n=50):
    sync()
    t = time.perf_counter()
    for _ in range(n):
        f(*args)
    sync()
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sizes", default="512x1024x1024,4096x4096x4096")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out")
    a = ap.parse_args()
    dt = getattr(torch, a.dtype)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    rows = []
    for size in a.sizes.split(","):
        m, k, n = (int(v) for v in size.split("x"))
        x = torch.randn(m, k, device=a.device, dtype=dt)
        w = (torch.randn(k, n, device=a.device) / k**0.5).to(dt)
        g = torch.rand(k, device=a.device, dtype=dt) + 0.5
        torch._dynamo.reset()
        variants = {"uhop eager": block_uhop, "uhop in torch.compile": torch.compile(block_uhop),
                    "torch.compile (torch ops)": torch.compile(block_torch), "torch eager": block_torch}  # fmt: skip
        with torch.no_grad():
            for f in variants.values():
                f(x, w, g)
            uhop.wait(300)
            for f in variants.values():
                f(x, w, g)
            times = {k_: [] for k_ in variants}
            for _ in range(a.rounds):
                for name, f in variants.items():
                    times[name].append(timed(f, (x, w, g), sync))
        med = {k_: statistics.median(v) * 1e3 for k_, v in times.items()}
        row = {"size": size, "ms": med, "uhop_compiled_vs_torch_compile": med["torch.compile (torch ops)"] / med["uhop in torch.compile"],
               "uhop_compiled_vs_uhop_eager": med["uhop eager"] / med["uhop in torch.compile"]}  # fmt: skip
        rows.append(row)
        print(size, {k_: round(v, 4) for k_, v in med.items()}, flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.machine())
    out = {"device": torch.cuda.get_device_name() if a.device.startswith("cuda") else cpu,
           "dtype": a.dtype, "torch": torch.__version__, "rows": rows, "unit": "ms per call, median of rounds"}  # fmt: skip
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
