"""RW A/B for the CUDA cluster row kernels (seventeenth session): one row per cluster (RW 1) vs
rows r and r + 8 per cluster sharing each weight / bias load (RW 2), every fitting cluster size
and CTA shape, interleaved rounds in one process; GB/s from CUDA events over 10 calls. Times the
kernels directly (a candidate study, not the product path).

Ran at commit 761bd18, where ``uhop.backends.cuda_rows`` took ``RW``; RW 2 was slower on every case
(``benchmarks/results/diagnosis_seventeenth_rw2_h100.json``) and was removed, so at later commits
the RW 2 configs run the RW 1 kernel.

    OUT=/tmp python3 benchmarks/diagnosis/seventeenth_rw2.py
"""
import json, os, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
import torch
from uhop.backends import cuda_rows
from uhop.backends.triton_kernels import limits
from uhop.backends.triton_kernels.rowops import OPS
from width_sweep import copy_gbps, environment  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hosttime import best_by, interleaved_gbps, row_case  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CASES = [("layernorm", 2670, 50257), ("layernorm", 8192, 16400), ("rmsnorm", 883, 151936),
         ("rmsnorm", 4096, 32768), ("layernorm", 1024, 65536), ("rmsnorm", 64, 262144), ("softmax", 8192, 50257)]
smax = limits("cuda:0").shared_mem_bytes - 1024


res = {"env": environment(), "copy_gbps": copy_gbps(), "cases": []}
for op, R, N in CASES:
    args, nbytes = row_case(op, R, N)
    ref = cuda_rows.launcher({"CL": 8, "threads": 512, "U": 4}, OPS[op], 1e-5, "cuda:0")(*args).float()
    ks = {}
    for RW in (1, 2):
        for CL in (1, 2, 4, 8):
            if cuda_rows.layout(N, 2, CL, RW)[1] > smax:
                continue
            for NT, U in ((512, 4), (512, 2), (256, 4)):
                cfg = {"CL": CL, "threads": NT, "U": U, "RW": RW}
                k = cuda_rows.launcher(cfg, OPS[op], 1e-5, "cuda:0")
                err = ((k(*args).float() - ref).abs() / (1 + ref.abs())).max().item()
                if err > 2e-2:
                    print(op, R, N, cfg, "WRONG", err, flush=True)
                    continue
                ks[json.dumps(cfg)] = k
    med = interleaved_gbps(ks, args, nbytes)
    best = best_by(med, "RW", (1, 2))
    print(f"{op} {R}x{N}: best RW1 {best[1]}  best RW2 {best[2]}", flush=True)
    res["cases"].append({"op": op, "R": R, "N": N, "gbps": med, "best": best})
    json.dump(res, open(f"{OUT}/diagnosis_seventeenth_rw2.json", "w"), indent=1)
