"""log_softmax 8192 x 50257 bf16: the CUDA backend's candidates compiled in this process and timed
interleaved (do_bench medians, 5 rounds), the cluster kernel the product stored in the H100 sweep
(CL 1, U 4, 512 threads; served at 0.669 ms there, timed at 0.582 ms by the tuner) next to the pipe
kernel and torch. Describes candidates, not the product.

    PYTHONPATH=. python3 benchmarks/diagnosis/thirtieth_cluster_ls.py
"""

from __future__ import annotations

import json
import statistics


def main() -> None:
    import torch
    from triton.testing import do_bench

    from uhop import backends as bk
    from uhop.problem import Problem
    from uhop.backends.base import Candidate

    be = bk.get("cuda")
    out = []
    for op in ("log_softmax", "softmax"):
        p = Problem.make(op, {"R": 8192, "N": 50257}, "bfloat16", {}, device="cuda:0", array="torch")
        cands = {c.id: c for c in be.candidates(p)}
        pick = [Candidate.of("cuda", "cluster", CL=1, U=4, threads=512), Candidate.of("cuda", "cluster", CL=2, U=4, threads=512),
                Candidate.of("cuda", "pipe", S=2, ctas=1, threads=256)]  # fmt: skip
        x = torch.randn(8192, 50257, device="cuda", dtype=torch.bfloat16)
        fns = {c.id: be.compile(c, p) for c in pick if c.id in cands}
        fns["torch"] = lambda t, _op=op: getattr(torch, _op)(t, -1)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(5):
            for k, f in fns.items():
                times[k].append(do_bench(lambda f=f: f(x), warmup=5, rep=25, return_mode="median"))
        r = {"op": op, "offered": list(cands), "ms": {k: round(statistics.median(v), 4) for k, v in times.items()},
             "spread_ms": {k: [round(min(v), 4), round(max(v), 4)] for k, v in times.items()}}  # fmt: skip
        out.append(r)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
