"""conv2d as an implicit GEMM: rows are output pixels (n, p, q), columns are filters k, and the
reduction runs over (r, s, c) with c fastest, so a channels-last input is read in contiguous
runs of channels (when C is a multiple of the K-block, each block is one (r, s) and one run).
The weights are reordered once per call into a (R*S*C, K) matrix (small next to x). The im2col matrix is never materialized: each A tile is gathered straight
from x with its padding masked to zero. Any memory format works (strides are arguments); the
output takes the input's format (channels-last in, channels-last out).

Config keys: BM, BN, BK, warps, stages, GM.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from uhop.backends.triton_kernels import Limits, matmul_smem
from uhop.backends.triton_kernels.launch import Launcher


@triton.jit
def _conv_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    NB, C, H, W, K, R, S, P, Q, stride, pad,
    s_xn, s_xc, s_xh, s_xw, s_yn, s_yk, s_yp, s_yq,
    HAS_BIAS: tl.constexpr, PREC: tl.constexpr, CHUNK_C: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GM: tl.constexpr,
):  # fmt: skip
    M = NB * P * Q
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(K, BN)
    pid = tl.program_id(0)
    group = GM * num_pid_n
    first_m = (pid // group) * GM
    size_m = tl.minimum(num_pid_m - first_m, GM)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    n = rm // (P * Q)
    pq = rm % (P * Q)
    h0 = (pq // Q) * stride - pad
    w0 = (pq % Q) * stride - pad
    x_row = x_ptr + n.to(tl.int64) * s_xn
    CRS = C * R * S
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    rbn = tl.max_contiguous(tl.multiple_of(tl.where(rn < K, rn, 0), BN), BN)  # clamped: unmasked B loads
    for t0 in range(0, CRS, BK):
        t = t0 + tl.arange(0, BK)
        if CHUNK_C:  # C % BK == 0: the chunk shares one (r, s), and its channels are contiguous
            rs = t0 // C
            c = tl.multiple_of(t0 % C, BK) + tl.arange(0, BK)  # aligned runs: vector loads
            hh = h0 + rs // S
            ww = w0 + rs % S
            ok = (rm < M) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            a_ptrs = x_row[:, None] + c[None, :] * s_xc + (hh * s_xh + ww * s_xw)[:, None]
            a = tl.load(a_ptrs, mask=ok[:, None], other=0.0)
            b = tl.load(w_ptr + t[:, None].to(tl.int64) * K + rbn[None, :])
        else:
            c = t % C
            rs = t // C
            hh = h0[:, None] + (rs // S)[None, :]
            ww = w0[:, None] + (rs % S)[None, :]
            a_mask = (rm[:, None] < M) & (t[None, :] < CRS) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            a = tl.load(x_row[:, None] + c[None, :] * s_xc + hh * s_xh + ww * s_xw, mask=a_mask, other=0.0)
            b = tl.load(w_ptr + t[:, None].to(tl.int64) * K + rbn[None, :], mask=t[:, None] < CRS, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < K, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + n.to(tl.int64)[:, None] * s_yn + rn[None, :] * s_yk + (pq // Q)[:, None] * s_yp \
        + (pq % Q)[:, None] * s_yq
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < K))


def configs(problem: Any, lim: Limits) -> list[tuple[str, dict[str, Any]]]:
    itemsize = 4 if problem.dtype == "float32" else 2
    K = problem.dim["K"]
    out = []
    for bm, bn, bk, warps, stages in ((128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 64, 32, 4, 2), (128, 256, 64, 8, 3)):
        if bn > 2 * max(K, 16):
            continue
        if lim.fits(matmul_smem(bm, bn, bk, stages, itemsize), 32 * warps):
            out.append(("igemm", {"BM": bm, "BN": bn, "BK": bk, "warps": warps, "stages": stages, "GM": 8}))
    return out or [("igemm", {"BM": 32, "BN": 32, "BK": 32, "warps": 4, "stages": 1, "GM": 8})]


_conv = Launcher(_conv_kernel)  # direct launches once compiled (launch.py)


def build(template: str, cfg: dict[str, Any], problem: Any) -> Any:
    import torch

    if template != "igemm":
        raise ValueError(f"unknown conv2d template {template!r}")
    st, pd = problem.param["stride"], problem.param["padding"]
    prec = "ieee" if problem.dtype == "float32" else "tf32"
    BM, BN = cfg["BM"], cfg["BN"]

    def run(x, w, bias=None):
        NB, C, H, W = x.shape
        K, _, R, S = w.shape
        P, Q = (H + 2 * pd - R) // st + 1, (W + 2 * pd - S) // st + 1
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and C > 1 else torch.contiguous_format
        y = torch.empty((NB, K, P, Q), device=x.device, dtype=x.dtype, memory_format=fmt)
        # weights as a (R*S*C, K) matrix, reduction order (r, s, c) like the A tiles (a small copy)
        wt = w.permute(2, 3, 1, 0).reshape(R * S * C, K).contiguous()
        grid = (triton.cdiv(NB * P * Q, BM) * triton.cdiv(K, BN),)
        _conv(
            grid, x, wt, bias if bias is not None else y, y, NB, C, H, W, K, R, S, P, Q, st, pd,
            *x.stride(), *y.stride(),
            HAS_BIAS=bias is not None, PREC=prec, CHUNK_C=C % cfg["BK"] == 0, BM=BM, BN=BN, BK=cfg["BK"], GM=cfg["GM"],
            num_warps=cfg["warps"], num_stages=cfg["stages"],
        )  # fmt: skip
        return y

    return run
