"""Where the host time of a uhop_ops node goes on a GPU (ops_in_graph_h100.json: 60-75 us a node at
512x1024x1024 against ~24 us an eager uhop.ops call). Times one op called five ways, then profiles
the compiled block. Diagnosis only, not a product figure.

    python benchmarks/diagnosis/ops_in_graph_host.py --device cuda:0 --out host.txt
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import uhop  # isort: skip
import torch

import uhop.ops.in_graph as ig


def per_call_us(f, sync, n=200, rounds=5):
    out = []
    for _ in range(rounds):
        sync()
        t = time.perf_counter()
        for _ in range(n):
            f()
        sync()
        out.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out")
    a = ap.parse_args()
    dt = getattr(torch, a.dtype)
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    lines = []

    def say(*s):
        msg = " ".join(str(v) for v in s)
        print(msg, flush=True)
        lines.append(msg)

    x = torch.randn(512, 1024, device=a.device, dtype=dt)
    w = (torch.randn(1024, 1024, device=a.device) / 32).to(dt)
    g = torch.rand(1024, device=a.device, dtype=dt) + 0.5
    with torch.no_grad():
        uhop.ops.softmax(x)
        uhop.ops.matmul(x, w, activation="gelu_tanh")
        uhop.ops.rmsnorm(x, g)
        uhop.wait(300)
        sm_c = torch.compile(lambda t: uhop.ops.softmax(t))
        sm_c(x)
        blk = torch.compile(lambda x, w, g: uhop.ops.softmax(uhop.ops.matmul(uhop.ops.rmsnorm(x, g), w, activation="gelu_tanh")))
        blk(x, w, g)
        ways = {
            "torch.softmax": lambda: torch.softmax(x, -1),
            "uhop.ops.softmax (eager)": lambda: uhop.ops.softmax(x),
            "in_graph.softmax (python fn)": lambda: ig.softmax(x),
            "torch.ops.uhop_ops.softmax.default": lambda: torch.ops.uhop_ops.softmax.default(x),
            "torch.ops.uhop_ops.softmax": lambda: torch.ops.uhop_ops.softmax(x),
            "compiled softmax": lambda: sm_c(x),
            "uhop.ops.matmul+gelu_tanh (eager)": lambda: uhop.ops.matmul(x, w, activation="gelu_tanh"),
            "torch.ops.uhop_ops.matmul.default": lambda: torch.ops.uhop_ops.matmul.default(x, w, None, "gelu_tanh", False),
            "uhop.ops.rmsnorm (eager)": lambda: uhop.ops.rmsnorm(x, g),
            "torch.ops.uhop_ops.rmsnorm.default": lambda: torch.ops.uhop_ops.rmsnorm.default(x, g, 1e-6),
            "compiled block": lambda: blk(x, w, g),
        }
        for _ in range(2):
            for name, f in ways.items():
                say(f"{name:40s} {per_call_us(f, sync):8.1f} us")
        for name in ("torch.ops.uhop_ops.softmax.default", "compiled block"):
            pr = cProfile.Profile()
            f = ways[name]
            pr.enable()
            for _ in range(300):
                f()
            sync()
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30)
            say(f"---- profile: {name} (300 calls), by tottime")
            say(s.getvalue())
    if a.out:
        open(a.out, "w").write("\n".join(lines))


if __name__ == "__main__":
    main()
