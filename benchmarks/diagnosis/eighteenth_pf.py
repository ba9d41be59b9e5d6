"""PF A/B for the CUDA cluster row kernels (eighteenth session, ran at a2a7c9a: PF was removed after
it: its best config per case 0.97-1.00x the old best; later commits ignore PF): the write phase as it was (per
16-byte vector: shared-memory x, L2 weight and bias loads, then the store; ptxas keeps every
global load after the previous store, so a thread has one vector's loads in flight: LDG LDG LDS
STG x U in the SASS) against PF 1 (all U vectors' loads issued before the first store: 2U LDG
and U LDS, then U STG). Every fitting cluster size and CTA shape, interleaved rounds in one
process; GB/s from CUDA events over 10 calls; outputs checked against the PF 0 kernel. Times the
kernels directly (a candidate study, not the product path).

    OUT=/tmp python3 benchmarks/diagnosis/eighteenth_pf.py
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
import torch  # noqa: E402
from width_sweep import copy_gbps, environment  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hosttime import best_by, interleaved_gbps, row_case  # noqa: E402

from uhop.backends import cuda_rows  # noqa: E402
from uhop.backends.triton_kernels import limits  # noqa: E402
from uhop.backends.triton_kernels.rowops import OPS  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CASES = [("layernorm", 2670, 50257), ("rmsnorm", 883, 151936), ("layernorm", 1024, 65536), ("rmsnorm", 64, 262144),
         ("layernorm", 8192, 16400), ("rmsnorm", 4096, 32768), ("softmax", 8192, 50257), ("softmax", 132, 262144)]
smax = limits("cuda:0").shared_mem_bytes - 1024


res = {"env": environment(), "copy_gbps": copy_gbps(), "cases": []}
for op, R, N in CASES:
    args, nbytes = row_case(op, R, N)
    ks, wrong = {}, []
    for CL in (1, 2, 4, 8):
        if cuda_rows.layout(N, 2, CL)[1] > smax:
            continue
        for NT, U in ((512, 4), (512, 2), (256, 4), (256, 8)):
            ref = None
            for PF in (0, 1):
                cfg = {"CL": CL, "threads": NT, "U": U, "PF": PF}
                k = cuda_rows.launcher(cfg, OPS[op], 1e-5, "cuda:0")
                y = k(*args)
                if ref is None:
                    ref = y.clone()
                elif not torch.equal(y, ref):
                    wrong.append(cfg)
                ks[json.dumps(cfg)] = k
    med = interleaved_gbps(ks, args, nbytes)
    best = best_by(med, "PF", (0, 1))
    pairs = [(round(med[c.replace('"PF": 0', '"PF": 1')] / m, 3)) for c, m in med.items() if json.loads(c)["PF"] == 0]
    print(f"{op} {R}x{N}: best PF0 {best[0]}  best PF1 {best[1]}  PF1/PF0 per config {pairs}  differ: {wrong}", flush=True)
    res["cases"].append({"op": op, "R": R, "N": N, "gbps": med, "best": best, "pf1_over_pf0": pairs, "outputs_differ": wrong})
    json.dump(res, open(f"{OUT}/diagnosis_eighteenth_pf.json", "w"), indent=1)
