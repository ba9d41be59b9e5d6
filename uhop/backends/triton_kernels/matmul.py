"""GEMM templates: ``act(a @ b + bias)`` with fp32 accumulation and the epilogue fused.

Two kernels:

* ``ptr``: one tile per program, pointer loads with masks (any shape, any strides, batched ``b``),
  grouped tile ordering for L2 reuse. The fallback that always applies.
* ``tma``: persistent (one program per SM walking the tiles in grouped order), operands through
  Hopper's tensor-memory accelerator (host-built TMA descriptors; out-of-bounds tiles are
  zero-filled by the hardware, so no masks in the main loop), optional warp specialization.
  TMA needs 16-byte aligned row strides: a misaligned operand (K or N not a multiple of 8 in
  bf16; config ``pad=True`` marks those configs) is first copied by one Triton kernel into a
  row-padded buffer, and the output is written with masked stores (no output copy). With
  ``split``, a ragged last column of tiles (N = 4097) is left to cuBLAS as a thin GEMM instead of
  costing a whole extra wave of tiles.
* ``padmm`` (misaligned operands only): the same pad kernel copies A and B into zero-padded
  buffers whose K and N are multiples of 16 (one pass each, 2.4 TB/s on an H100 where
  ``torch.nn.functional.pad`` takes two), cuBLAS multiplies the aligned buffers, and the result is
  returned as a strided view of the padded output (no copy back). Measured on an H100 for
  4095x4097x4093 bf16: 0.235 ms (585 TFLOP/s) against 0.867 ms for cuBLAS on the misaligned operands.

Config keys: BM, BN, BK (tile), GM (group size of the tile order), warps, stages, and for ``tma``
ws (warp specialization), pad, split; ``prec`` is the fp32 dot precision ("ieee" or "tf32").
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from uhop.backends.triton_kernels import Limits, matmul_smem
from uhop.backends.triton_kernels.launch import Launcher

ACT_CODES = {"none": 0, "relu": 1, "gelu": 2, "silu": 3, "gelu_tanh": 4}


def _torch_act(code: int):
    import torch
    import torch.nn.functional as F

    return {1: torch.relu, 2: F.gelu, 3: F.silu, 4: lambda y: F.gelu(y, approximate="tanh")}[code]


class _LazyActs(dict):
    def __missing__(self, code: int):
        self[code] = _torch_act(code)
        return self[code]


TORCH_ACT = _LazyActs()


@triton.jit
def _epilogue(acc, bias_ptr, rn, N, HAS_BIAS: tl.constexpr, ACT: tl.constexpr):
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACT == 2:  # exact (erf) gelu, as torch's default
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif ACT == 3:
        acc = acc * tl.sigmoid(acc)
    elif ACT == 4:  # tanh-form gelu; tanh(u) = 2 sigmoid(2u) - 1
        u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = 0.5 * acc * (2.0 * tl.sigmoid(2.0 * u))
    return acc


@triton.jit
def _tile_of(tile_id, num_pid_m, num_pid_n, GM: tl.constexpr):
    """Grouped ordering: GM row-tiles sweep the columns together, so their B panels stay in L2."""
    group = GM * num_pid_n
    first_m = (tile_id // group) * GM
    size_m = tl.minimum(num_pid_m - first_m, GM)
    pid_m = first_m + (tile_id % group) % size_m
    pid_n = (tile_id % group) // size_m
    return pid_m, pid_n


@triton.jit
def _mm_ptr_kernel(
    a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K,
    s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr, EVEN_K: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GM: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = _tile_of(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GM)
    bid = tl.program_id(1).to(tl.int64)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    # Clamped row/column indices keep the loads unmasked in M and N (the store is masked).
    ram = tl.max_contiguous(tl.multiple_of(tl.where(rm < M, rm, 0), BM), BM)
    rbn = tl.max_contiguous(tl.multiple_of(tl.where(rn < N, rn, 0), BN), BN)
    a_ptrs = a_ptr + bid * s_ab + ram[:, None].to(tl.int64) * s_am + rk[None, :] * s_ak
    b_ptrs = b_ptr + bid * s_bb + rk[:, None].to(tl.int64) * s_bk + rbn[None, :] * s_bn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=rk[None, :] < K - k * BK, other=0.0)
            b = tl.load(b_ptrs, mask=rk[:, None] < K - k * BK, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC)
        a_ptrs += BK * s_ak
        b_ptrs += BK * s_bk
    acc = _epilogue(acc, bias_ptr, rn, N, HAS_BIAS, ACT)
    c_ptrs = c_ptr + bid * s_cb + rm[:, None].to(tl.int64) * s_cm + rn[None, :] * s_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _persistent(M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """A persistent program's walk: its first tile, the tile grid, K steps and the tile count."""
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    return tl.program_id(0), num_pid_m, num_pid_n, tl.cdiv(K, BK), num_pid_m * num_pid_n


@triton.jit
def _store_tile(out, c_desc, c_ptr, pid_m, pid_n, M, N, s_cm, BM: tl.constexpr, BN: tl.constexpr,
                TMA_STORE: tl.constexpr):  # fmt: skip
    """One output tile: through the TMA descriptor (16-byte aligned rows), else masked stores."""
    if TMA_STORE:
        c_desc.store([pid_m * BM, pid_n * BN], out)
    else:
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        tl.store(c_ptr + rm[:, None].to(tl.int64) * s_cm + rn[None, :], out, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _mm_tma_kernel(
    a_desc, b_desc, c_desc, c_ptr, bias_ptr, M, N, K, s_cm,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr, TMA_STORE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GM: tl.constexpr,
    NUM_SMS: tl.constexpr, WS: tl.constexpr, FLATTEN: tl.constexpr,
):  # fmt: skip
    start, num_pid_m, num_pid_n, k_tiles, num_tiles = _persistent(M, N, K, BM, BN, BK)
    # A separate counter for the epilogue lets the compiler overlap one tile's epilogue with the
    # next tile's loads when the loops are flattened.
    tile_c = start - NUM_SMS
    for tile_id in tl.range(start, num_tiles, NUM_SMS, flatten=FLATTEN, warp_specialize=WS):
        pid_m, pid_n = _tile_of(tile_id, num_pid_m, num_pid_n, GM)
        off_m = pid_m * BM
        off_n = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([off_m, ki * BK])
            b = b_desc.load([ki * BK, off_n])
            acc = tl.dot(a, b, acc, input_precision=PREC)
        tile_c += NUM_SMS
        pid_m, pid_n = _tile_of(tile_c, num_pid_m, num_pid_n, GM)
        rn = pid_n * BN + tl.arange(0, BN)
        acc = _epilogue(acc, bias_ptr, rn, N, HAS_BIAS, ACT)
        _store_tile(acc.to(c_ptr.dtype.element_ty), c_desc, c_ptr, pid_m, pid_n, M, N, s_cm, BM, BN, TMA_STORE)


@triton.jit
def _pad_rows_kernel(src, dst, R, C, CP, s_src, s_dst, BR: tl.constexpr, BC: tl.constexpr):
    """Copy an (R, C) matrix into an (R, CP) buffer with 16-byte aligned rows, zeros in [C, CP):
    misaligned (unvectorized) loads, aligned vector stores."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    r64 = rows.to(tl.int64)[:, None]
    x = tl.load(src + r64 * s_src + cols[None, :], mask=(rows[:, None] < R) & (cols[None, :] < C), other=0.0)
    tl.store(dst + r64 * s_dst + cols[None, :], x, mask=(rows[:, None] < R) & (cols[None, :] < CP))


def pad_into(x, buf) -> None:
    """Copy 2-D ``x`` into the left of ``buf`` (same rows, more columns, 16-byte aligned rows),
    zeros in the columns past ``x``'s."""
    r, c = x.shape
    _pad_rows_kernel[(triton.cdiv(r, 8), triton.cdiv(buf.shape[1], 256))](
        x, buf, r, c, buf.shape[1], x.stride(0), buf.stride(0), BR=8, BC=256, num_warps=4,
    )  # fmt: skip


def pad_rows(x, multiple: int = 64):
    """``x`` (2-D) copied into a buffer whose row stride is a multiple of ``multiple`` elements;
    returns the (R, C) view of it (what a TMA descriptor needs: aligned rows)."""
    import torch

    r, c = x.shape
    cp = (c + multiple - 1) // multiple * multiple
    buf = torch.empty((r, cp), device=x.device, dtype=x.dtype)
    pad_into(x, buf)
    return buf[:, :c]


# ---- configs ------------------------------------------------------------------------------
def _cfg(bm, bn, bk, warps, stages, gm=8, **kw) -> dict[str, Any]:
    return {"BM": bm, "BN": bn, "BK": bk, "GM": gm, "warps": warps, "stages": stages, **kw}


def _aligned(n: int, itemsize: int) -> bool:
    return (n * itemsize) % 16 == 0


def configs(problem: Any, lim: Limits, tf32: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(template, config) pairs for ``problem``, best guess first, pruned by shared memory."""
    d = problem.dim
    B, M, N, K = d["B"], d["M"], d["N"], d["K"]
    itemsize = 4 if problem.dtype == "float32" else 2
    prec = "tf32" if (problem.dtype == "float32" and tf32) else "ieee"
    batched = bool(problem.param.get("batched_b", False))  # b (B, K, N): B GEMMs of M rows (the ptr template)
    rows = M if batched else B * M  # a 2-D b lets a batched a be flattened into one tall GEMM
    out: list[tuple[str, dict[str, Any]]] = []
    if itemsize == 2:
        if rows <= 64:  # weight-read bound: narrow tiles, deep K
            tiles = [(16, 64, 128, 4, 4), (32, 64, 128, 4, 4), (64, 128, 64, 4, 4), (32, 128, 128, 4, 4)]
        elif K <= 128:  # output-write bound
            tiles = [(128, 256, 64, 8, 2), (128, 128, 64, 8, 2), (256, 128, 64, 8, 2), (128, 128, 64, 4, 2)]
        else:
            tiles = [(128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (256, 128, 64, 8, 3), (128, 256, 64, 8, 4),
                     (128, 128, 128, 8, 3), (64, 256, 64, 4, 4)]  # fmt: skip
    else:
        tiles = [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 64, 32, 4, 4)]
    small = B * M * N < 1024 * 1024
    tma_ok = lim.hopper and (problem.layout == "contiguous") and rows > 64 and not batched
    aligned = _aligned(K, itemsize) and _aligned(N, itemsize)
    if not aligned and not batched:
        out.append(("padmm", {"to": 16}))  # expected winner on big misaligned problems: tried first
    for bm, bn, bk, w, s in tiles:
        epi = itemsize if aligned else 0  # the TMA store stages the output tile in shared memory
        if tma_ok and not small:
            for ws in (False, True) if (lim.hopper and bm * bn >= 128 * 128) else (False,):
                if lim.fits(matmul_smem(bm, bn, bk, s, itemsize, epi), 32 * w):
                    out.append(("tma", _cfg(bm, bn, bk, w, s, ws=ws, pad=not aligned, prec=prec)))
                    if 0 < N % bn <= bn // 4 and N > bn and not ws:  # a nearly empty last column of tiles
                        out.append(("tma", _cfg(bm, bn, bk, w, s, pad=not aligned, prec=prec, split=16)))
        # Misaligned rows defeat vectorized loads (10x slower): keep one pointer config as fallback.
        ptr_useful = not (tma_ok and not small and not aligned) or not any(t == "ptr" for t, _ in out)
        if ptr_useful and lim.fits(matmul_smem(bm, bn, bk, s, itemsize), 32 * w):
            out.append(("ptr", _cfg(bm, bn, bk, w, s, prec=prec)))
    if small:
        out.append(("ptr", _cfg(32, 32, 32, 4, 2, prec=prec)))
    # Order: persistent TMA first for big aligned problems (the expected winner), then the rest.
    return out


# ---- build --------------------------------------------------------------------------------
_mm_ptr = Launcher(_mm_ptr_kernel)  # direct launches once compiled (launch.py)


def build(template: str, cfg: dict[str, Any], problem: Any) -> Any:
    import torch

    if template not in ("ptr", "tma", "padmm"):
        raise ValueError(f"unknown matmul template {template!r}")
    act = ACT_CODES[problem.param["activation"]]
    if template == "padmm":
        return _padmm(int(cfg["to"]), act)
    prec = cfg.get("prec", "ieee")
    BM, BN, BK, GM = cfg["BM"], cfg["BN"], cfg["BK"], cfg["GM"]
    warps, stages = cfg["warps"], cfg["stages"]

    def run_ptr(a, b, bias=None):
        batched_b = b.dim() > 2
        if batched_b:
            a3 = a.reshape(-1, a.shape[-2], a.shape[-1])
            b3 = b.reshape(-1, b.shape[-2], b.shape[-1])
        else:  # flatten the batch of a into rows (a view when a's rows are contiguous)
            a3 = a.reshape(1, -1, a.shape[-1])
            b3 = b.unsqueeze(0)
        nb, M, K = a3.shape
        N = b3.shape[-1]
        c = torch.empty((nb, M, N), device=a.device, dtype=a.dtype)
        grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN), nb)
        _mm_ptr(
            grid, a3, b3, bias if bias is not None else c, c, M, N, K,
            a3.stride(0), a3.stride(1), a3.stride(2), b3.stride(0) if batched_b else 0, b3.stride(1), b3.stride(2),
            c.stride(0), c.stride(1), c.stride(2),
            HAS_BIAS=bias is not None, ACT=act, PREC=prec, EVEN_K=K % BK == 0,
            BM=BM, BN=BN, BK=BK, GM=GM, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        return c.reshape(*a.shape[:-1], N)

    if template == "ptr":
        return run_ptr

    from triton.tools.tensor_descriptor import TensorDescriptor

    from uhop.backends.triton_kernels import limits

    num_sms = limits(problem.device).sm_count
    ws = cfg.get("ws", False)

    def padded(x):
        if x.stride(1) != 1:
            x = x.contiguous()
        return pad_rows(x) if (x.stride(0) * x.element_size()) % 16 else x

    split = cfg.get("split", 0)  # >0: the last N % BN columns go to cuBLAS (a thin GEMM)

    def launch(a2, b2, c, bias, M, N, K, bm, bn, bk, w, st, tma_store):
        a_d = TensorDescriptor(a2, [M, K], [a2.stride(0), 1], [bm, bk])
        b_d = TensorDescriptor(b2, [K, N], [b2.stride(0), 1], [bk, bn])
        c_d = TensorDescriptor(c, [M, N], [c.stride(0), 1], [bm, bn]) if tma_store else a_d
        tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
        _mm_tma_kernel[(min(num_sms, tiles),)](
            a_d, b_d, c_d, c, bias if bias is not None else c, M, N, K, c.stride(0),
            HAS_BIAS=bias is not None, ACT=act, PREC=prec, TMA_STORE=tma_store,
            BM=bm, BN=bn, BK=bk, GM=GM, NUM_SMS=num_sms, WS=ws, FLATTEN=True,
            num_warps=w, num_stages=st,
        )  # fmt: skip

    def run_tma(a, b, bias=None):
        if b.dim() > 2:
            return run_ptr(a, b, bias)
        a2 = a.reshape(-1, a.shape[-1])
        M, K = a2.shape
        N = b.shape[1]
        a2, b2 = padded(a2), padded(b)  # a no-op for rows already 16-byte aligned
        if a2.data_ptr() % 16 or b2.data_ptr() % 16:  # an offset view: TMA cannot start there
            return run_ptr(a, b, bias)
        c = torch.empty((M, N), device=a.device, dtype=a.dtype)
        tma_store = _aligned(N, c.element_size())
        main = N // BN * BN if split and N > BN else N
        # A ragged last column tile (N = 4097 with BN = 256: 17 tiles for 16 tiles' work) costs a
        # whole wave; with ``split`` the bulk runs on full tiles and the remainder separately.
        launch(a2, b2[:, :main], c, bias, M, main, K, BM, BN, BK, warps, stages, tma_store)
        if main < N:
            # The ragged columns are a thin GEMM (a GEMV for N = 4097): as tiles it is latency-bound
            # (one long K loop per tile, measured 80 us on an H100), in cuBLAS it is bandwidth-bound.
            edge = torch.matmul(a2, b2[:, main:])
            if bias is not None:
                edge = edge + bias[main:]
            c[:, main:] = TORCH_ACT[act](edge) if act else edge
        return c.reshape(*a.shape[:-1], N)

    return run_tma


def _padmm(to: int, act: int) -> Any:
    """Pad misaligned operands into aligned buffers (Triton), multiply them with cuBLAS, return a
    view of the padded output. Zero columns of A meet zero rows of B, so the padding adds nothing."""
    import torch

    def run(a, b, bias=None):
        if b.dim() > 2:
            raise ValueError("padmm takes a 2-D b (batched b: use the ptr template)")
        a2 = a.reshape(-1, a.shape[-1])
        if a2.stride(-1) != 1:
            a2 = a2.contiguous()
        if b.stride(-1) != 1:
            b = b.contiguous()
        M, K = a2.shape
        N = b.shape[1]
        kp, np_ = -(-K // to) * to, -(-N // to) * to
        a_p = torch.empty((M, kp), device=a.device, dtype=a.dtype)
        b_p = torch.empty((kp, np_), device=a.device, dtype=a.dtype)
        pad_into(a2, a_p)
        pad_into(b, b_p[:K])
        if kp > K:
            b_p[K:].zero_()
        if bias is not None:
            bias_p = torch.zeros(np_, device=a.device, dtype=bias.dtype)
            bias_p[:N] = bias
            y = torch.addmm(bias_p, a_p, b_p)
        else:
            y = torch.mm(a_p, b_p)
        if act:
            y = TORCH_ACT[act](y)
        return y[:, :N].reshape(*a.shape[:-1], N)

    return run
