"""Candidate study (times the candidates itself, not UHOP's product path): what horizontal GEMM
fusion buys on a GPU. Linears that read the same activation (a Llama block's q/k/v projections,
its gate/up pair) run as one GEMM over concatenated weights, the outputs taken as column views.

    python benchmarks/hfuse_probe.py --out /tmp/hfuse.json

GEMM level: separate ``F.linear`` calls vs one over the concatenated weight (bf16, CUDA events).
Block level: ``LlamaBlock`` vs the same block with concatenated weights, eager / torch.compile
default / reduce-overhead (CUDA graphs). Interleaved rounds, medians, in ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from uhop.benchsuite import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "compile"))
from zoo import LlamaBlock  # noqa: E402


def _ms(fn, iters: int = 20) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _rounds(fns: dict, rounds: int) -> dict:
    samples = {k: [] for k in fns}
    keys = list(fns)
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            samples[k].append(_ms(fns[k]))
    return {k: round(statistics.median(v), 4) for k, v in samples.items()}


class FusedLlama(torch.nn.Module):
    def __init__(self, blk: LlamaBlock) -> None:
        super().__init__()
        self.b = blk
        self.wqkv = torch.nn.Parameter(torch.cat([blk.wq.weight, blk.wk.weight, blk.wv.weight]).detach())
        self.wgu = torch.nn.Parameter(torch.cat([blk.gate.weight, blk.up.weight]).detach())

    def forward(self, x):
        b = self.b
        B, T, C = x.shape
        h = b.norm_1(x)
        qkv = F.linear(h, self.wqkv)
        q, k, v = (t.view(B, T, b.h, C // b.h).transpose(1, 2) for t in qkv.split(C, -1))
        y = F.scaled_dot_product_attention(b._rope(q), b._rope(k), v, is_causal=True)
        x = x + b.wo(y.transpose(1, 2).reshape(B, T, C))
        h = b.norm_2(x)
        g, u = F.linear(h, self.wgu).split(b.gate.out_features, -1)
        return x + b.down(F.silu(g) * u)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(0)
    dt, dev = torch.bfloat16, "cuda"
    res = {"meta": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
                    "note": "candidate study: times candidates directly, not the product path", "command": " ".join(["python", *sys.argv]), "machine": machine_info()}}
    with torch.inference_mode():
        gemm = {}
        for name, M, K, Ns in (("qkv", 2048, 4096, (4096, 4096, 4096)), ("gate_up", 2048, 4096, (11008, 11008)),
                               ("gpt2_qkv_b8", 8192, 768, (768, 768, 768)), ("qkv_b4", 8192, 4096, (4096, 4096, 4096))):
            x = torch.randn(M, K, device=dev, dtype=dt)
            ws = [torch.randn(n, K, device=dev, dtype=dt) / K**0.5 for n in Ns]
            wc = torch.cat(ws)
            fns = {"separate": lambda x=x, ws=ws: [F.linear(x, w) for w in ws], "fused": lambda x=x, wc=wc: F.linear(x, wc)}
            gemm[name] = _rounds(fns, a.rounds)
            gemm[name]["fused_over_separate"] = round(gemm[name]["fused"] / gemm[name]["separate"], 4)
            print(name, gemm[name], flush=True)
        res["gemm"] = gemm
        blk = LlamaBlock().eval().to(dev, dt)
        fused = FusedLlama(blk).eval().to(dev, dt)
        x = torch.randn(1, 2048, 4096, device=dev, dtype=dt)
        err = (blk(x).float() - fused(x).float()).abs().max().item()
        fns = {"eager": lambda: blk(x), "eager_fused": lambda: fused(x)}
        for mode in ("default", "reduce-overhead"):
            for tag, m in (("", blk), ("_fused", fused)):
                c = torch.compile(m, mode=mode)
                for _ in range(3):
                    c(x)
                fns[f"{mode}{tag}"] = (lambda c=c: c(x))
        res["block"] = _rounds(fns, a.rounds)
        res["block"]["max_abs_diff"] = err
        print(res["block"], flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
