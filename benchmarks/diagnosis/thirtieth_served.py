"""Whether the product serves the kernel it stored, at its tuned speed: for softmax and
log_softmax at 8192 x 50257 bf16 (the sweep on the H100, 2026-12-07: log_softmax's product call
at 0.669 ms while the tuner timed its stored pick, cuda/cluster CL1 U4, at 0.582 ms; softmax's
product call matched its pick). After ``uhop.ops.<op>(x)`` and ``uhop.wait()``: the product call,
the call-site kernel, dispatch's resolved kernel, the same candidate compiled afresh, and torch,
timed interleaved by do_bench (median of 5 rounds each). Prints one JSON line per op.

    PYTHONPATH=. python3 benchmarks/diagnosis/thirtieth_served.py
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile

os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())


def main() -> None:
    import torch
    from triton.testing import do_bench

    import uhop
    from uhop import dispatch
    from uhop.config import settings

    for op in ("log_softmax", "softmax", "log_softmax"):
        x = torch.randn(8192, 50257, device="cuda", dtype=torch.bfloat16)
        f = getattr(uhop.ops, op)
        f(x)
        uhop.wait()
        f(x)
        spec = uhop.ops.get(op)
        problem = dispatch.make_problem(spec, (x,), {})
        key = problem.key(settings().shape_buckets)
        kernel, backend, cand = dispatch._resolved[key]
        sig = dispatch.call_sig(op, (x,), {})
        site = dispatch._direct_cache.get(sig)
        fresh = backend.compile(cand, problem)
        ref = getattr(torch, op)
        fns = {"product": lambda: f(x), "site": lambda: site(x), "resolved": lambda: kernel(x),
               "fresh": lambda: fresh(x), "torch": lambda: ref(x, -1)}  # fmt: skip
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(5):
            for k, fn in fns.items():
                times[k].append(do_bench(fn, warmup=5, rep=25, return_mode="median"))
        med = {k: round(statistics.median(v), 4) for k, v in times.items()}
        print(json.dumps({"op": op, "pick": cand.id, "ms": med, "gbps": {k: round(2 * x.numel() * 2 / v / 1e6)
              for k, v in med.items()}, "interim": list(dispatch._interim), "sites_left": len(dispatch._sites),
              "site_is_resolved": site is kernel, "guarded": {k: len(v) for k, v in dispatch._direct_cache.guarded.items()}}),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
