"""Where the time of a misaligned bf16 GEMM (4095x4097x4093: rows not 16-byte aligned) goes, and
which pad-then-cuBLAS arrangement is fastest. Side by side, one run, CUDA events.

Reproduce on a CUDA machine (from the repo root):

    PYTHONPATH=. python3 benchmarks/misaligned_gemm_probe.py --out benchmarks/results/misaligned_probe_h100.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import triton

from uhop.backends.triton_kernels.matmul import _pad_rows_kernel

M, N, K = 4095, 4097, 4093


def timeit(fn, iters=50, rounds=5) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(rounds):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / iters / 1e3)
    return statistics.median(ts)


def pad_into(x, buf, br, bc, w):
    r, c = x.shape
    cp = buf.shape[1]
    _pad_rows_kernel[(triton.cdiv(r, br), triton.cdiv(cp, bc))](x, buf, r, c, cp, x.stride(0), buf.stride(0),
                                                                BR=br, BC=bc, num_warps=w)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(K, N, device="cuda", dtype=torch.bfloat16)
    ref = a.float() @ b.float()
    flops = 2 * M * N * K
    res: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
                 "shape": [M, N, K], "rows": {}}  # fmt: skip
    rows = res["rows"]

    def rec(name, t, extra=None):
        rows[name] = {"ms": t * 1e3, "tflops": flops / t / 1e12, **(extra or {})}
        print(f"{name:40s} {t * 1e3:8.4f} ms {flops / t / 1e12:7.1f} TFLOP/s {extra or ''}", flush=True)

    rec("cublas_misaligned", timeit(lambda: a @ b))
    a4 = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    b4 = torch.randn(4096, 4112, device="cuda", dtype=torch.bfloat16)
    t = timeit(lambda: a4 @ b4)
    rows["cublas_aligned_4096x4112x4096"] = {"ms": t * 1e3}
    print("cublas aligned 4096x4112x4096", t * 1e3, flush=True)

    # pad kernels: bytes moved = read + write of the operand
    a_p = torch.empty(M, 4096, device="cuda", dtype=a.dtype)
    b_p = torch.zeros(4096, 4112, device="cuda", dtype=b.dtype)
    best = None
    for br, bc, w in [(8, 256, 4), (16, 256, 4), (32, 256, 8), (8, 512, 4), (4, 1024, 4), (16, 512, 8), (2, 2048, 8),
                      (1, 4096, 8), (64, 128, 8)]:  # fmt: skip
        try:
            ta = timeit(lambda br=br, bc=bc, w=w: pad_into(a, a_p, br, bc, w))
        except Exception as exc:  # noqa: BLE001
            print("pad", br, bc, w, "failed", exc)
            continue
        gbs = (a.numel() + a_p.numel()) * 2 / ta / 1e9
        rows[f"pad_A_{br}x{bc}_w{w}"] = {"ms": ta * 1e3, "gbps": gbs}
        print(f"pad A {br}x{bc} w{w}: {ta * 1e3:.4f} ms {gbs:.0f} GB/s", flush=True)
        if best is None or ta < best[0]:
            best = (ta, br, bc, w)
    _, br, bc, w = best
    res["best_pad"] = [br, bc, w]
    t_fpad = timeit(lambda: torch.nn.functional.pad(a, (0, 3)))
    rows["F.pad_A"] = {"ms": t_fpad * 1e3}

    def e1():  # full padded buffers, padded output, view
        pad_into(a, a_p, br, bc, w)
        pad_into(b, b_p[:K], br, bc, w)
        return (a_p @ b_p)[:, :N]

    def e2():  # padded strides, true K and N, contiguous misaligned output
        pad_into(a, a_p, br, bc, w)
        pad_into(b, b_p[:K], br, bc, w)
        return a_p[:, :K] @ b_p[:K, :N]

    c_p = torch.empty(M, 4112, device="cuda", dtype=a.dtype)

    def e3():  # padded strides, output into a padded buffer's view
        pad_into(a, a_p, br, bc, w)
        pad_into(b, b_p[:K], br, bc, w)
        torch.mm(a_p[:, :K], b_p[:K, :N], out=c_p[:, :N])
        return c_p[:, :N]

    for name, fn in (("pad_cublas_full_view", e1), ("pad_cublas_trueK_contig", e2), ("pad_cublas_trueK_outview", e3)):
        try:
            out = fn()
            err = float((out.float() - ref).abs().max())
            rec(name, timeit(fn), {"max_err": err, "contiguous": out.is_contiguous()})
        except Exception as exc:  # noqa: BLE001 - recorded
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            print(name, "failed:", exc, flush=True)
    t_mm = timeit(lambda: a_p @ b_p)
    rows["gemm_only_padded"] = {"ms": t_mm * 1e3}
    print("gemm only (padded full)", t_mm * 1e3, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
