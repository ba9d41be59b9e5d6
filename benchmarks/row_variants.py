"""Row-template configurations at the widths issue #20 names, each timed directly next to torch
eager (a candidate benchmark: it describes the kernels, not the product's pick).

    python benchmarks/row_variants.py [--out row_variants_h200.json] [--deadline-s 200] [--regs | --persist | --cuda | --pipe | --long]

For each case, every configuration in ``VARIANTS`` goes through ``rowops.launcher`` (the same
launcher the Triton backend compiles), is checked against a float64 reference, and is timed with
``triton.testing.do_bench`` (median, L2 cleared); eager is timed before and after the variants and
the mean of the two is reported. Rates count each input read once and the output written once.
This is the search-space study behind ``rowops.configs``: which template and configuration
reaches the copy rate at each width.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from width_sweep import bench, copy_gbps, environment, rel_err, torch_fn  # noqa: E402


def variants(N: int) -> list[tuple[str, dict[str, Any]]]:
    """Configurations worth measuring at width N (the long-row ones the search does not reach)."""
    from uhop.backends.triton_kernels import next_pow2
    from uhop.backends.triton_kernels.rowops import row_tiles

    out: list[tuple[str, dict[str, Any]]] = []
    b1, b2 = row_tiles(N)
    lanes = b1 + b2
    for tiles in ((1, 2) if b2 else (1,)):
        for warps in (4, 8, 16, 32):
            per_thread = (lanes if tiles == 2 else next_pow2(N)) // (32 * warps)
            if 4 <= per_thread <= 128:
                for grid, stages in (("full", 1), (4, 2)):
                    out.append(("row", {"warps": warps, "ROWS": 1, "grid": grid, "stages": stages, "tiles": tiles}))
    if N >= 16384:  # whole rows spread over a cluster of CTAs (num_ctas; cross-CTA reductions)
        for ctas in (2, 4):
            for warps in (8, 16):
                if 8 <= next_pow2(N) // (ctas * 32 * warps) <= 64:
                    out.append(("row", {"warps": warps, "ROWS": 1, "grid": "full", "stages": 1, "tiles": 1, "ctas": ctas}))
    if N >= 4096:
        for chunk in (2048, 4096, 8192, 16384):
            for warps in (4, 8, 16):
                if 8 <= chunk // (32 * warps) <= 64:
                    out.append(("split", {"CHUNK": chunk, "warps": warps, "phases": 1}))
        for block in (4096, 8192, 16384):
            for warps in (8, 16):
                if 8 <= block // (32 * warps) <= 64:
                    for stages, grid in ((1, 1), (1, 2), (3, 1), (3, 2)):
                        out.append(("stream", {"BLOCK": block, "warps": warps, "stages": stages, "grid": grid}))
        out.append(("loop", {"BLOCK": 4096, "warps": 8}))
    return out


CASES = [
    ("softmax", 8192, 50257, "bfloat16"),
    ("layernorm", 32768, 5120, "bfloat16"),
    ("softmax", 4096, 32768, "bfloat16"),
    ("layernorm", 12192, 11008, "bfloat16"),
    ("softmax", 883, 151936, "bfloat16"),
    ("softmax", 2048, 50257, "float32"),
    ("rmsnorm", 12192, 11008, "bfloat16"),
    ("softmax", 132, 262144, "bfloat16"),
]


#: ``--regs``: the search space's own configurations, each also under these register caps (ptxas
#: .maxnreg): fewer registers per thread, more programs resident per SM, more loads in flight
CAPS = (None, 128, 96, 80, 64)
REG_CASES = [
    ("softmax", 8192, 50257, "bfloat16"),
    ("softmax", 883, 151936, "bfloat16"),
    ("rmsnorm", 883, 151936, "bfloat16"),
    ("layernorm", 2670, 50257, "bfloat16"),
    ("softmax", 132, 262144, "bfloat16"),
    ("softmax", 12192, 11008, "bfloat16"),
    ("softmax", 4096, 32768, "bfloat16"),
    ("softmax", 512, 262144, "bfloat16"),
]


def capped_variants(op: str, R: int, N: int, dtype: str) -> list[tuple[str, dict[str, Any]]]:
    """rowops.configs for this problem on this GPU (what the product tries), plus split chunks of
    16384 (8 warps), each with every cap in CAPS."""
    from types import SimpleNamespace

    from uhop.backends.triton_kernels import limits
    from uhop.backends.triton_kernels.rowops import configs

    p = SimpleNamespace(op=op, dim={"R": R, "N": N}, dtype=dtype, device="cuda:0", param={})
    base = configs(p, limits("cuda:0"))
    if N > 16384:
        base.append(("split", {"CHUNK": 16384, "warps": 8, "phases": 1}))
    return [(t, {**c, "maxnreg": cap} if cap else dict(c)) for t, c in base for cap in CAPS]


def persist_variants(op: str, R: int, N: int, dtype: str) -> list[tuple[str, dict[str, Any]]]:
    """``--persist``: the one-launch split next to its persistent form (groups of programs walking
    rows, the next row's chunk loaded while a group waits), ``persist`` programs per SM."""
    base = {"CHUNK": 8192, "warps": 4, "phases": 1}
    out: list[tuple[str, dict[str, Any]]] = [("split", base)]
    # how a program waits: acquire loads (spin 0), volatile loads (1), with a nanosleep (2); each row's
    # counter (int64) in its own 128-byte line or more (sync_stride 16, 32) or packed (1)
    for spin, stride in ((1, 1), (2, 1), (0, 32), (1, 32), (2, 32)):
        out.append(("split", {**base, "spin": spin, "sync_stride": stride}))
    out.append(("split", {**base, "persist": 4}))
    out.append(("split", {**base, "persist": 4, "spin": 2, "sync_stride": 32}))
    out.append(("split", {**base, "CHUNK": 4096, "spin": 2, "sync_stride": 32}))
    return out


#: ``--cuda``: the CUDA cluster kernels (uhop.backends.cuda_rows) next to Triton's split, on the long
#: rows and few-row cases of the width sweep that stayed under 85% of copy on the H100
CUDA_CASES = [
    ("softmax", 8192, 50257, "bfloat16"),
    ("layernorm", 2670, 50257, "bfloat16"),
    ("softmax", 883, 151936, "bfloat16"),
    ("rmsnorm", 883, 151936, "bfloat16"),
    ("softmax", 512, 262144, "bfloat16"),
    ("softmax", 132, 262144, "bfloat16"),
    ("rmsnorm", 64, 262144, "bfloat16"),
    ("softmax", 16, 262144, "bfloat16"),
    ("softmax", 4096, 32768, "bfloat16"),
    ("softmax", 2048, 50257, "float32"),
    ("rmsnorm", 4096, 32768, "bfloat16"),
    ("layernorm", 8192, 16400, "bfloat16"),
]


def cuda_variants(op: str, R: int, N: int, dtype: str) -> list[tuple[str, dict[str, Any]]]:
    """Triton's best-known split next to every cluster size / CTA size / loads-in-flight of the
    CUDA kernel whose chunk fits in shared memory."""
    from uhop.backends.cuda_rows import layout
    from uhop.backends.triton_kernels import limits

    item = {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]
    smem = limits("cuda:0").shared_mem_bytes - 1024
    out: list[tuple[str, dict[str, Any]]] = [("split", {"CHUNK": 8192, "warps": 4, "phases": 1})]
    for CL in (1, 2, 4, 8, 16):
        if layout(N, item, CL)[1] > smem:
            continue
        for threads in (256, 512, 1024):
            for U in (2, 4, 8) if threads == 512 else (4,):
                out.append(("cuda", {"CL": CL, "threads": threads, "U": U}))
    return out


#: ``--pipe``: the bulk-copy pipeline kernels (uhop.backends.cuda_pipe) next to what the product tries
#: today, on the rows of 4096-50257 that stayed under 85% of copy on the H200
PIPE_CASES = [
    ("softmax", 12192, 11008, "bfloat16"),
    ("layernorm", 12192, 11008, "bfloat16"),
    ("softmax", 8192, 50257, "bfloat16"),
    ("rmsnorm", 12192, 11008, "bfloat16"),
    ("softmax", 12192, 11008, "float16"),
    ("log_softmax", 8192, 50257, "bfloat16"),
    ("layernorm", 2670, 50257, "bfloat16"),
    ("softmax", 4096, 32768, "bfloat16"),
    ("softmax", 32768, 4096, "bfloat16"),
    ("layernorm", 32768, 5120, "bfloat16"),
    ("softmax", 134217, 1000, "bfloat16"),
]


#: ``--long``: the pipeline kernels in clusters (``CL``) on the rows the cluster kernels serve, which
#: stayed at 66-78% of copy on the H200 (width_sweep_h200_product_twentysixth.json)
LONG_CASES = [
    ("softmax", 883, 151936, "bfloat16"),
    ("softmax", 512, 262144, "bfloat16"),
    ("rmsnorm", 883, 151936, "bfloat16"),
    ("log_softmax", 2048, 151936, "bfloat16"),
    ("softmax", 132, 262144, "bfloat16"),
    ("layernorm", 2670, 50257, "bfloat16"),
    ("softmax", 8192, 50257, "bfloat16"),
    ("rmsnorm", 64, 262144, "bfloat16"),
    ("softmax", 2048, 50257, "float32"),
]


def pipe_variants(op: str, R: int, N: int, dtype: str) -> list[tuple[str, dict[str, Any]]]:
    """The product's candidates (Triton's row templates, the CUDA cluster kernels past 16K), then
    every pipeline shape whose stages fit an SM: CTAs per SM x stages, 128-512 threads; past 16K,
    clusters of 2-16 CTAs x 2-4 stages too."""
    from types import SimpleNamespace

    import torch

    from uhop.backends import cuda as cuda_backend
    from uhop.backends.cuda_pipe import SM_SMEM, layout
    from uhop.backends.triton_kernels import limits
    from uhop.backends.triton_kernels.rowops import configs

    lim = limits("cuda:0")
    item = {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]
    p = SimpleNamespace(op=op, dim={"R": R, "N": N}, dtype=dtype, device="cuda:0", param={})
    out: list[tuple[str, dict[str, Any]]] = list(configs(p, lim))
    if N >= cuda_backend.MIN_N:
        cc = torch.cuda.get_device_capability(0)
        out += [("cuda", c) for c in cuda_backend.configs(R, N, item, lim.sm_count, lim.shared_mem_bytes, cc)]
    one = layout(N, item, 1)[1]
    fits = min(lim.shared_mem_bytes - 1024, SM_SMEM) // one
    for ctas in (1, 2, 3, 4, 6, 8):
        for S in (2, 3, 4, 6, 8):
            if ctas * S > fits or ctas * S > 16:
                continue
            for threads in ((128, 256) if N <= 2048 else (256, 512)):
                out.append(("pipe", {"threads": threads, "S": S, "ctas": ctas}))
    if N >= cuda_backend.MIN_N:  # rows held by clusters: one or two CTAs per SM
        for CL in (2, 4, 8, 16):
            cl = layout(N, item, 1, 0, CL)[1]
            for S in (2, 3, 4):
                for per_sm, threads in ((1, 512), (2, 256)):
                    if per_sm * S * cl <= min(lim.shared_mem_bytes - 1024, SM_SMEM):
                        out.append(("pipe", {"CL": CL, "threads": threads, "S": S}))
    if op in ("layernorm", "rmsnorm"):  # the weights read per row from L1/L2 instead of held in shared memory
        out += [("pipe", {"threads": 512, "S": S, "ctas": ctas, "wsm": 0}) for ctas, S in ((1, 3), (2, 4))
                if ctas * S <= fits]  # fmt: skip
    return out


def run_case(op: str, R: int, N: int, dtype: str, deadline: float, regs: bool = False,
             persist: bool = False, cuda: bool = False, pipe: bool = False) -> dict[str, Any]:  # fmt: skip
    import torch

    from uhop.backends.triton_kernels.rowops import OPS, launcher

    dt = getattr(torch, dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(R, N, device="cuda", dtype=dt, generator=g) * 2
    args: list[Any] = [x]
    if op == "layernorm":
        args += [torch.randn(N, device="cuda", dtype=dt, generator=g), torch.randn(N, device="cuda", dtype=dt, generator=g)]
    elif op == "rmsnorm":
        args += [torch.randn(N, device="cuda", dtype=dt, generator=g)]
    ref_fn = torch_fn(op)
    ref = ref_fn(*[a.double() for a in args])
    nbytes = 2 * x.numel() * x.element_size() + sum(a.numel() * a.element_size() for a in args[1:])  # x in, y out
    eps = 1e-5 if op == "layernorm" else 1e-6
    eager = [bench(ref_fn, args)]
    rows = []
    pick = pipe_variants if pipe else cuda_variants if cuda else persist_variants if persist else capped_variants if regs else (lambda op, R, N, dt: variants(N))
    for template, cfg in pick(op, R, N, dtype):
        if time.monotonic() > deadline:
            rows.append({"template": template, "cfg": cfg, "error": "not run: deadline"})
            continue
        row: dict[str, Any] = {"template": template, "cfg": cfg}
        try:
            if template == "cuda":
                from uhop.backends.cuda_rows import launcher as cuda_launcher

                k = cuda_launcher(cfg, OPS[op], eps, "cuda:0")
            elif template == "pipe":
                from uhop.backends.cuda_pipe import launcher as pipe_launcher

                k = pipe_launcher(cfg, OPS[op], eps, "cuda:0")
            else:
                k = launcher(template, cfg, OPS[op], eps, "cuda:0")
            y = k(*args)
            torch.cuda.synchronize()
            row["err"] = rel_err(y, ref)
            row["ms"] = bench(k, args)
            row["gbps"] = round(nbytes / row["ms"] / 1e6, 1)
            if getattr(k, "last", None) is not None:
                row["n_regs"], row["n_spills"] = k.last.n_regs, k.last.n_spills
        except Exception as exc:  # a rejected configuration is a result
            row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        rows.append(row)
    eager.append(bench(ref_fn, args))
    ms = sum(eager) / 2
    ok = [r for r in rows if "gbps" in r and r["err"] < 2e-2]
    best = max(ok, key=lambda r: r["gbps"], default=None)
    return {"op": op, "R": R, "N": N, "dtype": dtype, "bytes": nbytes, "eager_ms": ms,
            "eager_gbps": round(nbytes / ms / 1e6, 1), "best": best, "variants": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/row_variants_h200.json")
    ap.add_argument("--deadline-s", type=float, default=200.0)
    ap.add_argument("--only", default="", help="comma-separated widths")
    ap.add_argument("--regs", action="store_true", help="the search space's configs under register caps (CAPS)")
    ap.add_argument("--persist", action="store_true", help="split vs its persistent form (REG_CASES)")
    ap.add_argument("--cuda", action="store_true", help="the CUDA cluster kernels vs Triton's split (CUDA_CASES)")
    ap.add_argument("--pipe", action="store_true", help="the bulk-copy pipeline kernels vs the product's candidates (PIPE_CASES)")
    ap.add_argument("--long", action="store_true", help="as --pipe, on the long rows (LONG_CASES), clusters included")
    a = ap.parse_args(argv)
    end = time.monotonic() + a.deadline_s
    a.pipe = a.pipe or a.long
    pool = LONG_CASES if a.long else PIPE_CASES if a.pipe else CUDA_CASES if a.cuda else REG_CASES if a.regs or a.persist else CASES
    cases = [c for c in pool if not a.only or str(c[2]) in a.only.split(",")]
    res: dict[str, Any] = {"env": {**environment(), "command": "benchmarks/row_variants.py " + " ".join(argv or sys.argv[1:])},
                           "copy_gbps": [copy_gbps()], "cases": []}  # fmt: skip
    for op, R, N, dtype in cases:
        if time.monotonic() > end:
            break
        r = run_case(op, R, N, dtype, end, a.regs, a.persist, a.cuda, a.pipe)
        res["cases"].append(r)
        b = r["best"]
        print(f"{op:<10}{R:>7}x{N:<7}{dtype:<9} eager {r['eager_gbps']:7.1f}  best "
              f"{b and b['gbps']} {b and (b['template'], b['cfg'])}", flush=True)  # fmt: skip
        top = sorted((v for v in r["variants"] if "gbps" in v), key=lambda v: -v["gbps"])[:5]
        for v in top:
            print(f"    {v['gbps']:7.1f} {v['template']} {v['cfg']} err {v['err']:.1e} regs {v.get('n_regs')} "
                  f"spills {v.get('n_spills')}", flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1, default=str))
    res["copy_gbps"].append(copy_gbps())
    Path(a.out).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
