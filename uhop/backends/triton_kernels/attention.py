"""Flash-style attention forward: ``softmax(q k^T / sqrt(D) [+ causal mask]) v`` without
materializing the scores. One program per (query block, batch-head); keys and values stream
through in blocks with an online softmax (running max and sum in fp32, exp2 with the scale
folded in). Causal masking is top-left aligned (as ``scaled_dot_product_attention``): blocks
strictly below the diagonal skip the mask, blocks above it are never visited.

Config keys: BM (query block), BN (key block), warps, stages.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from uhop.backends.triton_kernels import Limits, next_pow2
from uhop.backends.triton_kernels.launch import Launcher


@triton.jit
def _attn_block(acc, l_i, m_i, q, k_base, v_base, s_kl, s_vl, offs_m, offs_d, offs_e, lo, hi, L, D, E, qk_scale,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, EVEN: tl.constexpr, BN: tl.constexpr,
                PREC: tl.constexpr):  # fmt: skip
    for start in tl.range(lo, hi, BN):
        offs_n = start + tl.arange(0, BN)
        k_ptrs = k_base + offs_n[None, :].to(tl.int64) * s_kl + offs_d[:, None]
        v_ptrs = v_base + offs_n[:, None].to(tl.int64) * s_vl + offs_e[None, :]
        if EVEN:
            kt = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            kt = tl.load(k_ptrs, mask=(offs_n[None, :] < L) & (offs_d[:, None] < D), other=0.0)
            v = tl.load(v_ptrs, mask=(offs_n[:, None] < L) & (offs_e[None, :] < E), other=0.0)
        s = tl.dot(q, kt, input_precision=PREC) * qk_scale
        if MASKED:
            keep = offs_n[None, :] < L
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(keep, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    q_ptr, k_ptr, v_ptr, o_ptr, S, L, D, E, qk_scale, G,
    s_qb, s_qs, s_kb, s_kl, s_vb, s_vl, s_ob, s_os,
    CAUSAL: tl.constexpr, EVEN: tl.constexpr, PREC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0) * BM
    bid = tl.program_id(1).to(tl.int64)
    offs_m = start_m + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    offs_e = tl.arange(0, BE)
    q_ptrs = q_ptr + bid * s_qb + offs_m[:, None].to(tl.int64) * s_qs + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < S) & (offs_d[None, :] < D), other=0.0)
    k_base = k_ptr + (bid // G) * s_kb  # grouped-query attention: G query heads per k/v head
    v_base = v_ptr + (bid // G) * s_vb
    m_i = tl.full((BM,), -float("inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, BE), tl.float32)
    if CAUSAL:
        hi = tl.minimum(start_m + BM, L)
        full = tl.minimum(start_m // BN * BN, hi)  # key blocks entirely at or below the diagonal
        full = full // BN * BN
        if EVEN:
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, k_base, v_base, s_kl, s_vl, offs_m, offs_d, offs_e,
                                        0, full, L, D, E, qk_scale, False, True, True, BN, PREC)  # fmt: skip
        else:
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, k_base, v_base, s_kl, s_vl, offs_m, offs_d, offs_e,
                                        0, full, L, D, E, qk_scale, True, True, False, BN, PREC)  # fmt: skip
        acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, k_base, v_base, s_kl, s_vl, offs_m, offs_d, offs_e,
                                    full, hi, L, D, E, qk_scale, True, True, False, BN, PREC)  # fmt: skip
    else:
        if EVEN:
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, k_base, v_base, s_kl, s_vl, offs_m, offs_d, offs_e,
                                        0, L, L, D, E, qk_scale, False, False, True, BN, PREC)  # fmt: skip
        else:
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, k_base, v_base, s_kl, s_vl, offs_m, offs_d, offs_e,
                                        0, L, L, D, E, qk_scale, True, False, False, BN, PREC)  # fmt: skip
    # Rows with no visible key (only possible past the end of S) keep l_i = 0: guard the divide.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptrs = o_ptr + bid * s_ob + offs_m[:, None].to(tl.int64) * s_os + offs_e[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=(offs_m[:, None] < S) & (offs_e[None, :] < E))


@triton.jit
def _attn_tma_inner(acc, l_i, m_i, q, k_desc, v_desc, kv_row, offs_m, lo, hi, qk_scale,
                    MASKED: tl.constexpr, BN: tl.constexpr, WS: tl.constexpr):  # fmt: skip
    for start in tl.range(lo, hi, BN, warp_specialize=WS):
        k = k_desc.load([kv_row + start, 0])
        v = v_desc.load([kv_row + start, 0])
        s = tl.dot(q, k.T)
        if MASKED:
            offs_n = start + tl.arange(0, BN)
            s = s * qk_scale + tl.where(offs_n[None, :] <= offs_m[:, None], 0.0, -1.0e6)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            s = s - m_new[:, None]
        else:
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
            s = s * qk_scale - m_new[:, None]
        p = tl.math.exp2(s)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_tma(q_desc, k_desc, v_desc, o_desc, S, L, qk_scale, G,
                  CAUSAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, WS: tl.constexpr):
    """Even shapes (S % BM == 0, L % BN == 0, D a power of two): q, k, v, o are 2-D (B*seq, D)
    TMA descriptors; no block crosses a batch boundary, so no masks outside the diagonal."""
    start_m = tl.program_id(0) * BM
    bid = tl.program_id(1)
    q_row = bid * S + start_m
    kv_row = (bid // G) * L
    offs_m = start_m + tl.arange(0, BM)
    q = q_desc.load([q_row, 0])
    m_i = tl.full((BM,), -float("inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, BD), tl.float32)
    if CAUSAL:
        hi = tl.minimum(start_m + BM, L)
        full = tl.minimum(start_m // BN * BN, hi)
        acc, l_i, m_i = _attn_tma_inner(acc, l_i, m_i, q, k_desc, v_desc, kv_row, offs_m, 0, full, qk_scale,
                                        False, BN, WS)  # fmt: skip
        acc, l_i, m_i = _attn_tma_inner(acc, l_i, m_i, q, k_desc, v_desc, kv_row, offs_m, full, hi, qk_scale,
                                        True, BN, WS)  # fmt: skip
    else:
        acc, l_i, m_i = _attn_tma_inner(acc, l_i, m_i, q, k_desc, v_desc, kv_row, offs_m, 0, L, qk_scale,
                                        False, BN, WS)  # fmt: skip
    out = acc / l_i[:, None]
    o_desc.store([q_row, 0], out.to(q.dtype))


def configs(problem: Any, lim: Limits) -> list[tuple[str, dict[str, Any]]]:
    d = problem.dim
    bd = max(16, next_pow2(max(d["D"], d["E"])))
    itemsize = 4 if problem.dtype == "float32" else 2
    out = []
    for bm, bn, warps, stages in ((128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 4, 3), (64, 32, 4, 2)):
        if bd > 128 and bm * bn > 64 * 64:
            continue
        if max(d["S"], 16) < bm // 2:
            continue
        smem = (bm * bd + 2 * stages * bn * bd) * itemsize
        if lim.fits(smem, 32 * warps):
            out.append(("flash", {"BM": bm, "BN": bn, "warps": warps, "stages": stages}))
    D = d["D"]
    tma_ok = (lim.hopper and problem.dtype != "float32" and D == d["E"] and D in (64, 128)
              and problem.layout == "contiguous")  # fmt: skip
    if tma_ok:
        tma = []
        # Warp specialization (ws=True) is a knob of the kernel, but Triton 3.6's Hopper pass fails on
        # this loop (PassManager error, sometimes an LLVM assertion), so it is not offered.
        for bm, bn, warps, stages, ws in ((128, 128, 8, 3, False), (128, 64, 8, 3, False), (128, 64, 8, 4, False),
                                          (128, 128, 8, 2, False), (64, 64, 4, 4, False)):  # fmt: skip
            if d["S"] % bm == 0 and d["L"] % bn == 0:
                tma.append(("flash_tma", {"BM": bm, "BN": bn, "warps": warps, "stages": stages, "ws": ws}))
        out = tma + out[:3]
    return out or [("flash", {"BM": 16, "BN": 16, "warps": 4, "stages": 1})]


_attn = Launcher(_attn_fwd)  # direct launches once compiled (launch.py)


def build(template: str, cfg: dict[str, Any], problem: Any) -> Any:
    import torch

    if template not in ("flash", "flash_tma"):
        raise ValueError(f"unknown attention template {template!r}")
    from uhop.ops.attention import softmax_scale

    causal, scale = bool(problem.param["causal"]), problem.param.get("scale")
    groups = problem.param.get("kv_groups") or 1
    BM, BN = cfg["BM"], cfg["BN"]
    if template == "flash_tma":
        return _build_tma(cfg, causal, scale, groups)

    def run(q, k, v):
        S, D = q.shape[-2], q.shape[-1]
        L, E = k.shape[-2], v.shape[-1]
        q3, k3, v3 = (t.reshape(-1, t.shape[-2], t.shape[-1]) for t in (q, k, v))
        q3, k3, v3 = (t if t.stride(-1) == 1 else t.contiguous() for t in (q3, k3, v3))
        nb = q3.shape[0]
        o = torch.empty((nb, S, E), device=q.device, dtype=q.dtype)
        bd, be = max(16, next_pow2(D)), max(16, next_pow2(E))
        even = S % BM == 0 and L % BN == 0 and bd == D and be == E
        grid = (triton.cdiv(S, BM), nb)
        _attn(
            grid, q3, k3, v3, o, S, L, D, E, softmax_scale(scale, D) * 1.4426950408889634, groups,
            q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
            o.stride(0), o.stride(1),
            CAUSAL=causal, EVEN=even, PREC="ieee" if q.dtype == torch.float32 else "tf32", BM=BM, BN=BN, BD=bd, BE=be,
            num_warps=cfg["warps"], num_stages=cfg["stages"],
        )  # fmt: skip
        return o.reshape(*q.shape[:-1], E)

    return run


def _build_tma(cfg: dict[str, Any], causal: bool, scale: float | None = None, groups: int = 1) -> Any:
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    from uhop.ops.attention import softmax_scale

    BM, BN = cfg["BM"], cfg["BN"]

    def run(q, k, v):
        S, D = q.shape[-2], q.shape[-1]
        L = k.shape[-2]
        if S % BM or L % BN or v.shape[-1] != D:
            raise ValueError(f"flash_tma needs S % {BM} == 0, L % {BN} == 0 and E == D")
        q2, k2, v2 = (t.reshape(-1, D).contiguous() for t in (q, k, v))
        nb = q2.shape[0] // S
        o = torch.empty_like(q2)
        qd = TensorDescriptor(q2, list(q2.shape), [D, 1], [BM, D])
        od = TensorDescriptor(o, list(o.shape), [D, 1], [BM, D])
        kd = TensorDescriptor(k2, list(k2.shape), [D, 1], [BN, D])
        vd = TensorDescriptor(v2, list(v2.shape), [D, 1], [BN, D])
        _attn_fwd_tma[(S // BM, nb)](
            qd, kd, vd, od, S, L, softmax_scale(scale, D) * 1.4426950408889634, groups,
            CAUSAL=causal, BM=BM, BN=BN, BD=D, WS=cfg.get("ws", False),
            num_warps=cfg["warps"], num_stages=cfg["stages"],
        )  # fmt: skip
        return o.reshape(*q.shape[:-1], D)

    return run
