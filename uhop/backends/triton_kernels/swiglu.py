"""Gated MLP projections in one kernel: ``act(x @ Wg.T) * (x @ Wu.T)`` (SwiGLU with ``silu``,
GeGLU with ``gelu`` / ``gelu_tanh``), the two GEMMs sharing each tile of ``x`` and the gate applied
in the epilogue.

Written as Llama-style code writes it, the gate and up projections are two GEMMs whose outputs
(M x N each, in bf16) go to memory and are read back by the elementwise ``silu(g) * u``; here
each program keeps a gate and an up accumulator for the same output tile, so only ``act(g) * u``
is written: one output instead of two and no elementwise pass. Weights stay in ``nn.Linear``'s
(N, K) layout, loaded K-major (``tl.dot(a, w.T)``): no transposed or concatenated copy.

Two templates, as for GEMMs (:mod:`uhop.backends.triton_kernels.matmul`):

* ``ptr``: one tile per program, pointer loads (any GPU; checked under ``TRITON_INTERPRET=1``);
* ``tma``: persistent, operands through Hopper's tensor-memory accelerator, optional warp
  specialization (16-byte aligned rows: K a multiple of 8 in bf16).
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from uhop.backends.triton_kernels.launch import Launcher
from uhop.backends.triton_kernels.matmul import ACT_CODES, _epilogue, _persistent, _store_tile, _tile_of

GATES = ("silu", "gelu", "gelu_tanh")


@triton.jit
def _swiglu_ptr_kernel(
    a_ptr, g_ptr, u_ptr, c_ptr, M, N, K,
    s_am, s_ak, s_gn, s_gk, s_un, s_uk, s_cm, s_cn,
    ACT: tl.constexpr, EVEN_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GM: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = _tile_of(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GM)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    ram = tl.where(rm < M, rm, 0)  # clamped: loads unmasked in M and N, the store masked
    rwn = tl.where(rn < N, rn, 0)
    a_ptrs = a_ptr + ram[:, None].to(tl.int64) * s_am + rk[None, :] * s_ak
    g_ptrs = g_ptr + rwn[None, :].to(tl.int64) * s_gn + rk[:, None] * s_gk  # (BK, BN) view of Wg.T
    u_ptrs = u_ptr + rwn[None, :].to(tl.int64) * s_un + rk[:, None] * s_uk
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            g = tl.load(g_ptrs)
            u = tl.load(u_ptrs)
        else:
            left = K - k * BK
            a = tl.load(a_ptrs, mask=rk[None, :] < left, other=0.0)
            g = tl.load(g_ptrs, mask=rk[:, None] < left, other=0.0)
            u = tl.load(u_ptrs, mask=rk[:, None] < left, other=0.0)
        acc_g = tl.dot(a, g, acc_g, input_precision="ieee")  # fp32 inputs: no tf32 rounding
        acc_u = tl.dot(a, u, acc_u, input_precision="ieee")
        a_ptrs += BK * s_ak
        g_ptrs += BK * s_gk
        u_ptrs += BK * s_uk
    out = _epilogue(acc_g, c_ptr, rn, N, False, ACT) * acc_u
    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * s_cm + rn[None, :] * s_cn
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _swiglu_tma_kernel(
    a_desc, g_desc, u_desc, c_desc, c_ptr, M, N, K, s_cm,
    ACT: tl.constexpr, TMA_STORE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    GM: tl.constexpr, NUM_SMS: tl.constexpr, WS: tl.constexpr, FLATTEN: tl.constexpr,
):  # fmt: skip
    start, num_pid_m, num_pid_n, k_tiles, num_tiles = _persistent(M, N, K, BM, BN, BK)
    tile_c = start - NUM_SMS  # the epilogue's own counter (see matmul._mm_tma_kernel)
    for tile_id in tl.range(start, num_tiles, NUM_SMS, flatten=FLATTEN, warp_specialize=WS):
        pid_m, pid_n = _tile_of(tile_id, num_pid_m, num_pid_n, GM)
        off_m = pid_m * BM
        off_n = pid_n * BN
        acc_g = tl.zeros((BM, BN), dtype=tl.float32)
        acc_u = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([off_m, ki * BK])
            g = g_desc.load([off_n, ki * BK])
            u = u_desc.load([off_n, ki * BK])
            acc_g = tl.dot(a, g.T, acc_g, input_precision="ieee")
            acc_u = tl.dot(a, u.T, acc_u, input_precision="ieee")
        tile_c += NUM_SMS
        pid_m, pid_n = _tile_of(tile_c, num_pid_m, num_pid_n, GM)
        rn = pid_n * BN + tl.arange(0, BN)
        out = (_epilogue(acc_g, c_ptr, rn, N, False, ACT) * acc_u).to(c_ptr.dtype.element_ty)
        _store_tile(out, c_desc, c_ptr, pid_m, pid_n, M, N, s_cm, BM, BN, TMA_STORE)


def swiglu_smem(bm: int, bn: int, bk: int, stages: int, itemsize: int, epilogue: int = 0) -> int:
    """Shared memory of one program: ``stages`` buffers of an A tile and two weight tiles, and
    the output tile staged for a TMA store (``epilogue`` = its element size, 0 for none)."""
    return stages * (bm * bk + 2 * bn * bk) * itemsize + bm * bn * epilogue


def configs(problem: Any, lim: Any) -> list[tuple[str, dict[str, Any]]]:
    """The backend's search space for a ``gated_mlp`` problem (:func:`tiles`)."""
    d = problem.dim
    return tiles(d["M"], d["N"], d["K"], 4 if problem.dtype == "float32" else 2, lim.hopper, lim.fits)


def build(template: str, cfg: dict[str, Any], problem: Any) -> Any:
    """The backend's kernel for a ``gated_mlp`` problem (:func:`make`)."""
    from uhop.backends.triton_kernels import limits

    sms = limits(problem.device).sm_count if template == "tma" else 0
    return make(template, cfg, problem.param["activation"], sms)


def tiles(M: int, N: int, K: int, itemsize: int, hopper: bool, fits) -> list[tuple[str, dict[str, Any]]]:
    """(template, config) pairs, best guess first; ``fits(smem_bytes, threads)`` prunes by the
    device's limits. Two fp32 accumulators per program: tiles are half as wide as a GEMM's."""
    out: list[tuple[str, dict[str, Any]]] = []
    if itemsize == 2:
        tiles = [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 64, 8, 2)]
    else:
        tiles = [(64, 64, 32, 4, 3), (128, 64, 32, 8, 3)]
    tma_ok = hopper and M > 64 and (K * itemsize) % 16 == 0
    for bm, bn, bk, w, s in tiles:
        if tma_ok:
            for ws in (False, True) if bm * bn >= 128 * 128 else (False,):
                if fits(swiglu_smem(bm, bn, bk, s, itemsize, itemsize), 32 * w):
                    out.append(("tma", {"BM": bm, "BN": bn, "BK": bk, "GM": 8, "warps": w, "stages": s, "ws": ws}))
        if fits(swiglu_smem(bm, bn, bk, s, itemsize), 32 * w):
            out.append(("ptr", {"BM": bm, "BN": bn, "BK": bk, "GM": 8, "warps": w, "stages": s}))
    out.append(("ptr", {"BM": 32, "BN": 32, "BK": 32, "GM": 8, "warps": 4, "stages": 2}))
    return out


_swiglu_ptr = Launcher(_swiglu_ptr_kernel)  # direct launches once compiled (launch.py)


def make(template: str, cfg: dict[str, Any], act: str, num_sms: int = 0) -> Any:
    """A callable ``run(x, w_gate, w_up) -> act(x @ w_gate.T) * (x @ w_up.T)``; ``x`` (..., K),
    weights (N, K) as ``nn.Linear`` holds them."""
    import torch

    from uhop.backends.triton_kernels import fix_interpreter

    fix_interpreter()  # no-op on GPU
    if template not in ("ptr", "tma"):
        raise ValueError(f"unknown gated-MLP template {template!r}: expected 'ptr' or 'tma'")
    if act not in GATES:
        raise ValueError(f"gated-MLP activation must be one of {GATES}, got {act!r}")
    code = ACT_CODES[act]
    BM, BN, BK, GM = cfg["BM"], cfg["BN"], cfg["BK"], cfg["GM"]
    warps, stages = cfg["warps"], cfg["stages"]

    def run_ptr(x, wg, wu):
        a = x.reshape(-1, x.shape[-1])
        M, K = a.shape
        N = wg.shape[0]
        c = torch.empty((M, N), device=x.device, dtype=x.dtype)
        _swiglu_ptr(
            (triton.cdiv(M, BM) * triton.cdiv(N, BN),),
            a, wg, wu, c, M, N, K, a.stride(0), a.stride(1), wg.stride(0), wg.stride(1), wu.stride(0), wu.stride(1),
            c.stride(0), c.stride(1), ACT=code, EVEN_K=K % BK == 0, BM=BM, BN=BN, BK=BK, GM=GM,
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
        return c.reshape(*x.shape[:-1], N)

    if template == "ptr":
        return run_ptr

    from triton.tools.tensor_descriptor import TensorDescriptor

    ws = cfg.get("ws", False)

    def tma_able(t) -> bool:
        return t.stride(-1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0

    def run_tma(x, wg, wu):
        a = x.reshape(-1, x.shape[-1])
        if not (tma_able(a) and tma_able(wg) and tma_able(wu)):
            return run_ptr(x, wg, wu)
        M, K = a.shape
        N = wg.shape[0]
        c = torch.empty((M, N), device=x.device, dtype=x.dtype)
        store = (N * c.element_size()) % 16 == 0
        a_d = TensorDescriptor(a, [M, K], [a.stride(0), 1], [BM, BK])
        g_d = TensorDescriptor(wg, [N, K], [wg.stride(0), 1], [BN, BK])
        u_d = TensorDescriptor(wu, [N, K], [wu.stride(0), 1], [BN, BK])
        c_d = TensorDescriptor(c, [M, N], [c.stride(0), 1], [BM, BN]) if store else a_d
        tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
        _swiglu_tma_kernel[(min(num_sms, tiles),)](
            a_d, g_d, u_d, c_d, c, M, N, K, c.stride(0), ACT=code, TMA_STORE=store,
            BM=BM, BN=BN, BK=BK, GM=GM, NUM_SMS=num_sms, WS=ws, FLATTEN=True, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        return c.reshape(*x.shape[:-1], N)

    if num_sms <= 0:
        raise ValueError(f"the tma template needs the device's SM count, got num_sms={num_sms}")
    return run_tma
