"""Which row count to pack MKL's GEMM weights for (``torch.ops.mkl._mkl_reorder_linear_weight(w,
batch_size)``, seventeenth session): each op alone, float32, GPT-2's d768 -> 3072 linear, the
packed GEMM (``torch.ops.mkl._mkl_linear``) for packs made for 16-8192 rows, as a ratio of
``F.linear``'s time at row counts 32-8192 (< 1: the packed GEMM is faster); medians over 15 calls
after 2 warm-up calls, every variant in one process. Times the ops directly (not the product path).

    python3 benchmarks/diagnosis/seventeenth_pack_batch.py [--out FILE]
"""
import argparse
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from uhop.measure.bench import benchmark  # noqa: E402


def ms(f):  # median of 15 single calls after two warm-up calls
    return benchmark(f, [()], warmup=2, repeat=15, min_time_s=0).median_s * 1e3

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="benchmarks/results/diagnosis_seventeenth_pack_batch_cpu.json")
a = ap.parse_args()
torch.manual_seed(0)
K, N = 768, 3072
w, b = torch.randn(N, K), torch.randn(N)
packs = {bs: torch.ops.mkl._mkl_reorder_linear_weight(w, bs) for bs in (16, 64, 128, 256, 512, 1024, 2048, 8192)}
rows = []
for M in (32, 128, 256, 1024, 8192):
    x = torch.randn(M, K)
    base = ms(lambda: torch.nn.functional.linear(x, w, b))
    r = {str(bs): round(ms(lambda p=p: torch.ops.mkl._mkl_linear(x, p, w, b, M)) / base, 3) for bs, p in packs.items()}
    print(M, "F.linear", round(base, 3), "ms; packed / F.linear by pack batch:", r, flush=True)
    rows.append({"rows": M, "linear_ms": round(base, 3), "packed_over_linear": r})
meta = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "shape": f"{K}->{N}", "command": "python3 benchmarks/diagnosis/seventeenth_pack_batch.py"}
json.dump({"meta": meta, "rows": rows}, open(a.out, "w"), indent=1)
