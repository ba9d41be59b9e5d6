"""Candidate study (times the candidates itself, not UHOP's product path): the gated MLP
projection ``silu(x @ Wg.T) * (x @ Wu.T)`` as UHOP's one-kernel dual GEMM
(:mod:`uhop.backends.triton_kernels.swiglu`, every config) against what Inductor makes of it
(two cuBLAS GEMMs + one fused elementwise kernel) and cuBLAS on concatenated weights.

    python benchmarks/swiglu_probe.py --out /tmp/swiglu.json

bf16, CUDA events around back-to-back calls, interleaved rounds, medians in ms; each candidate is
checked against a float32 computation of the same product first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from hfuse_probe import _ms  # the same CUDA-event timer (benchmarks/, the script directory, is on sys.path)

from uhop.backends.triton_kernels import limits, swiglu
from uhop.benchsuite import machine_info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["2048x4096x11008", "8192x4096x11008", "8192x768x3072"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    lim = limits("cuda:0")
    res: dict = {"meta": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                          "note": "candidate study: every candidate timed directly, not the product path", "command": " ".join(["python", *sys.argv]), "machine": machine_info()}, "shapes": {}}
    with torch.inference_mode():
        for spec in a.shapes:
            M, K, N = map(int, spec.split("x"))
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            wg, wu = (torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5 for _ in range(2))
            wgu = torch.cat([wg, wu])
            want = F.silu(x.float() @ wg.float().T) * (x.float() @ wu.float().T)
            fns = {
                "inductor": torch.compile(lambda x, wg=wg, wu=wu: F.silu(F.linear(x, wg)) * F.linear(x, wu)),
                "cublas_concat": torch.compile(lambda x, wgu=wgu, N=N: (lambda gu: F.silu(gu[:, :N]) * gu[:, N:])(F.linear(x, wgu))),
            }
            errors = {}
            for t, cfg in swiglu.tiles(M, N, K, 2, lim.hopper, lim.fits):
                name = t + "{" + ",".join(f"{k}={v}" for k, v in cfg.items()) + "}"
                try:
                    run = swiglu.make(t, cfg, "silu", lim.sm_count)
                    got = run(x, wg, wu)
                    torch.cuda.synchronize()
                    err = float((got.float() - want).abs().max() / want.abs().max())
                    if err > 2e-2:
                        errors[name] = f"wrong: max rel err {err:.3g}"
                        continue
                    fns[name] = (lambda run=run, x=x, wg=wg, wu=wu: run(x, wg, wu))
                except Exception as exc:  # noqa: BLE001 - a candidate that fails is reported, not fatal
                    errors[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            for f in list(fns.values())[:2]:
                f(x)
            calls = {k: (lambda f=f, x=x: f(x)) if k in ("inductor", "cublas_concat") else f for k, f in fns.items()}
            samples = {k: [] for k in calls}
            names = list(calls)
            for r in range(a.rounds):
                for j in range(len(names)):
                    k = names[(j + r) % len(names)]
                    samples[k].append(_ms(calls[k]))
            ms = {k: round(statistics.median(v), 4) for k, v in samples.items()}
            best = min((v, k) for k, v in ms.items() if k not in ("inductor", "cublas_concat"))
            res["shapes"][spec] = {"ms": ms, "errors": errors, "best_uhop": best[1],
                                   "best_uhop_over_inductor": round(best[0] / ms["inductor"], 4),
                                   "tflops_best": round(2 * 2 * M * N * K / best[0] / 1e9, 1)}
            print(spec, {k: ms[k] for k in ("inductor", "cublas_concat")}, "best", best, "ratio",
                  res["shapes"][spec]["best_uhop_over_inductor"], "errors", len(errors), flush=True)
            for k, e in errors.items():
                print("   ", k, e, flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
