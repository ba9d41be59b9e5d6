"""The kernels behind the two missed H100 targets, for Nsight Compute: the misaligned GEMM
(``triton/padmm``: two pad passes + cuBLAS) and the generated flash attention against SDPA.

Everything is compiled and warmed first; only the profiled calls run between
``cudaProfilerStart``/``Stop``. Reproduce on a CUDA machine (from the repo root):

    ncu --profile-from-start off --clock-control none --section SpeedOfLight --csv \\
        python3 benchmarks/ncu_targets.py > benchmarks/results/ncu_targets_h100.csv
"""

from __future__ import annotations

import torch

from uhop.backends.triton import _family
from uhop.problem import Problem


def main() -> None:
    dev = "cuda:0"
    mis = Problem.make("matmul", {"B": 1, "M": 4095, "N": 4097, "K": 4093}, "bfloat16", device=dev, array="torch")
    padmm = _family("matmul").build("padmm", {"to": 16}, mis)
    a = torch.randn(4095, 4093, device=dev, dtype=torch.bfloat16)
    b = torch.randn(4093, 4097, device=dev, dtype=torch.bfloat16)
    att = Problem.make("attention", {"B": 128, "S": 2048, "L": 2048, "D": 128, "E": 128}, "bfloat16",
                       {"causal": False}, device=dev, array="torch")  # fmt: skip
    flash = _family("attention").build("flash_tma", {"BM": 128, "BN": 128, "stages": 3, "warps": 8, "ws": False}, att)
    q, k, v = (torch.randn(8, 16, 2048, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for _ in range(3):  # compile, autotune caches, cuBLAS heuristics
        padmm(a, b)
        flash(q, k, v)
        sdpa(q, k, v)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    padmm(a, b)
    flash(q, k, v)
    sdpa(q, k, v)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
