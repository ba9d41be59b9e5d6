"""The long-row kernels of issue #20 under Nsight Compute: where the bytes come from (HBM or
L2), registers, spills and occupancy, for the configurations ``row_variants.py`` times.

Everything is compiled and warmed first; only the profiled calls run between
``cudaProfilerStart``/``Stop``. Reproduce on a CUDA machine (from the repo root):

    ncu --profile-from-start off --clock-control none --csv --metrics \\
        gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,\\
launch__registers_per_thread,launch__occupancy_limit_registers,sm__warps_active.avg.pct_of_peak_sustained_active,\\
l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum \\
        python3 benchmarks/ncu_rows.py > benchmarks/results/ncu_rows_h200.csv
"""

from __future__ import annotations

import sys

import torch

from uhop.backends.triton_kernels.rowops import OPS, launcher

CASES = [  # (op, R, N, template, cfg)
    ("softmax", 8192, 50257, "stream", {"BLOCK": 8192, "warps": 8, "stages": 3, "grid": 1}),
    ("softmax", 8192, 50257, "stream", {"BLOCK": 8192, "warps": 16, "stages": 1, "grid": 1}),
    ("softmax", 8192, 50257, "row", {"warps": 32, "ROWS": 1, "grid": "full", "stages": 1, "tiles": 1}),
    ("softmax", 8192, 50257, "split", {"CHUNK": 4096, "warps": 8, "phases": 1}),
    ("softmax", 4096, 32768, "row", {"warps": 32, "ROWS": 1, "grid": "full", "stages": 1, "tiles": 1}),
    ("layernorm", 32768, 5120, "row", {"warps": 8, "ROWS": 1, "grid": "full", "stages": 1, "tiles": 2}),
]


#: ``python3 benchmarks/ncu_rows.py split50257`` (with ``--section WarpStateStats`` etc.): why
#: layernorm at 2670 x 50257 runs at 70% of copy where softmax and rmsnorm of the same width reach
#: 82-83%: the same split config for each op, and layernorm without weights ("layernorm-plain")
SPLIT_50257 = [
    (op, 2670, 50257, "split", {"CHUNK": 8192, "warps": 4, "phases": 1})
    for op in ("softmax", "rmsnorm", "layernorm", "layernorm-plain")
]


#: ``python3 benchmarks/ncu_rows.py cluster50257``: the CUDA backend's cluster kernel (template
#: "cuda") where layernorm stays at 80% of copy and softmax reaches 92% (sixteenth session: staging
#: w and b in shared memory and hoisting their loads did not move it): the served configs for each
#: op, and layernorm without weights
CLUSTER_50257 = [
    (op, 2670, 50257, "cuda", cfg)
    for op in ("softmax", "rmsnorm", "layernorm", "layernorm-plain")
    for cfg in ({"CL": 1, "threads": 512, "U": 4}, {"CL": 2, "threads": 512, "U": 2})
]
SETS = {"split50257": SPLIT_50257, "cluster50257": CLUSTER_50257}


def main() -> None:
    runs = []
    cases = SETS[sys.argv[1]] if sys.argv[1:] else CASES
    for op, R, N, template, cfg in cases:
        x = torch.randn(R, N, device="cuda", dtype=torch.bfloat16)
        n_w = {"layernorm": 2, "rmsnorm": 1}.get(op, 0)
        args = [x] + [torch.randn(N, device="cuda", dtype=torch.bfloat16) for _ in range(n_w)]
        op = op.removesuffix("-plain")
        if template == "cuda":
            from uhop.backends.cuda_rows import launcher as cuda_launcher

            k = cuda_launcher(cfg, OPS[op], 1e-5, "cuda:0")
        else:
            k = launcher(template, cfg, OPS[op], 1e-5, "cuda:0")
        for _ in range(2):
            k(*args)
        runs.append((k, args))
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for k, args in runs:
        k(*args)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
