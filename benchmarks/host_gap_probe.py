"""Diagnostic (not a product figure): is a compiled model launch-bound or GPU-bound, and does
backend="uhop" cost host time over Inductor's own? For each variant, interleaved rounds of:
host ms per call (``n`` calls launched back to back, timed before the synchronize), GPU-side ms
per call (CUDA events around the same ``n`` calls) and wall ms per call (synchronized).

    python benchmarks/host_gap_probe.py --model llama-block --out /tmp/gap.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import uhop
import uhop.compile  # noqa: F401 - registers backend="uhop" for a source checkout
from uhop.benchsuite import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "compile"))
from zoo import GPT2Block, LlamaBlock  # noqa: E402

VARIANTS = {
    "compile": lambda m: torch.compile(m),
    "uhop": lambda m: torch.compile(m, backend="uhop"),
    "uhop-no-cudagraphs": lambda m: torch.compile(m, backend="uhop", options={"cudagraphs": False}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-block", choices=["llama-block", "gpt2-block"])
    ap.add_argument("--variants", nargs="+", default=["compile", "uhop-no-cudagraphs", "uhop"], choices=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cprofile", metavar="FILE", help="also write cProfile's top functions of each variant's calls")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.model == "llama-block":
        m, x = LlamaBlock().eval().cuda().bfloat16(), torch.randn(1, 2048, 4096, device="cuda", dtype=torch.bfloat16)
    else:
        m, x = GPT2Block().eval().cuda().bfloat16(), torch.randn(8, 1024, 768, device="cuda", dtype=torch.bfloat16)
    res: dict = {"meta": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "model": a.model,
                          "note": "diagnostic: host vs GPU time per call of each compiled variant", "command": " ".join(["python", *sys.argv]), "machine": machine_info()}}
    fns = {}
    with torch.inference_mode():
        for v in a.variants:
            fns[v] = VARIANTS[v](m)
            for _ in range(3):
                fns[v](x)
            uhop.wait()
            for _ in range(3):
                fns[v](x)
        samples = {v: {"host": [], "gpu": [], "wall": []} for v in fns}
        names = list(fns)
        for r in range(a.rounds):
            for j in range(len(names)):
                v = names[(j + r) % len(names)]
                f = fns[v]
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                s.record()
                for _ in range(a.calls):
                    f(x)
                e.record()
                t1 = time.perf_counter()
                torch.cuda.synchronize()
                t2 = time.perf_counter()
                samples[v]["host"].append((t1 - t0) * 1e3 / a.calls)
                samples[v]["gpu"].append(s.elapsed_time(e) / a.calls)
                samples[v]["wall"].append((t2 - t0) * 1e3 / a.calls)
        if a.cprofile:  # where each variant's host time goes, Python side
            import cProfile
            import io
            import pstats

            text = io.StringIO()
            for v, f in fns.items():
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(a.calls):
                    f(x)
                prof.disable()
                torch.cuda.synchronize()
                text.write(f"==== {v}: {a.calls} calls\n")
                pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
            Path(a.cprofile).write_text(text.getvalue())
    res["ms_per_call"] = {v: {k: round(statistics.median(x), 4) for k, x in d.items()} for v, d in samples.items()}
    for v, d in res["ms_per_call"].items():
        print(f"{v:<20} host {d['host']:.3f}  gpu {d['gpu']:.3f}  wall {d['wall']:.3f} ms/call", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
