"""Row-wise templates over the last dim: softmax, layernorm, rmsnorm (fp32 statistics).

``row``: a whole row (``ROWS`` rows for short rows) is one register tile, read once and written
once: the minimum traffic. Programs either cover every row block once (``grid="full"``) or
persist, one few per SM, prefetching the next row block while reducing this one.
``loop``: rows too long for registers are walked in chunks (stats pass, then write pass).

Config keys: warps, ROWS, grid ("full" or programs per SM), stages (persistent prefetch depth);
loop: BLOCK.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from uhop.backends.triton_kernels import Limits, next_pow2

OPS = {"softmax": 0, "layernorm": 1, "rmsnorm": 2}
#: longest row kept in registers by one program (fp32 values: <= 64 per thread at 16 warps)
MAX_ROW = 32768


@triton.jit
def _row_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, R, N, s_x, s_y, eps,
    OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, EVEN_N: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    # weight/bias are re-read by every program: keep them in L2 while x streams through
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    if HAS_B:
        bb = tl.load(b_ptr + cols, mask=cmask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    for rb in tl.range(pid, tl.cdiv(R, ROWS), nprog, num_stages=STAGES):
        rows = rb * ROWS + tl.arange(0, ROWS)
        rmask = rows < R
        rows64 = rows.to(tl.int64)
        x_ptrs = x_ptr + rows64[:, None] * s_x + cols[None, :]
        if EVEN_N:
            mask = rmask[:, None]
        else:
            mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptrs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        if OP == 0:
            if not EVEN_N:
                x = tl.where(cmask[None, :], x, -float("inf"))
            m = tl.max(x, axis=1)
            e = tl.exp2((x - m[:, None]) * 1.4426950408889634)
            y = e * (1.0 / tl.sum(e, axis=1))[:, None]
        elif OP == 1:
            mean = tl.sum(x, axis=1) / N
            xc = x - mean[:, None]
            if not EVEN_N:
                xc = tl.where(cmask[None, :], xc, 0.0)
            var = tl.sum(xc * xc, axis=1) / N
            y = xc * tl.rsqrt(var + eps)[:, None]
        else:
            ms = tl.sum(x * x, axis=1) / N
            y = x * tl.rsqrt(ms + eps)[:, None]
        if HAS_W:
            y = y * w[None, :]
        if HAS_B:
            y = y + bb[None, :]
        tl.store(y_ptr + rows64[:, None] * s_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _row_loop_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, N, s_x, s_y, eps,
    OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * s_x
    y_row = y_ptr + row * s_y
    offs = tl.arange(0, BLOCK)
    # pass 1: statistics (online max/sum for softmax; sum and shifted sum of squares for norms)
    m = tl.full((BLOCK,), -float("inf"), tl.float32)
    acc = tl.zeros((BLOCK,), tl.float32)
    acc2 = tl.zeros((BLOCK,), tl.float32)
    shift = tl.load(x_row).to(tl.float32)  # shifting by x[0] keeps the one-pass variance accurate
    for start in range(0, N, BLOCK):
        cm = start + offs < N
        x = tl.load(x_row + start + offs, mask=cm, other=0.0).to(tl.float32)
        if OP == 0:
            x = tl.where(cm, x, -float("inf"))
            m_new = tl.maximum(m, x)
            scale = tl.where(m_new == -float("inf"), 0.0, tl.exp(m - m_new))
            acc = acc * scale + tl.where(cm, tl.exp(x - m_new), 0.0)
            m = m_new
        elif OP == 1:
            xs = tl.where(cm, x - shift, 0.0)
            acc += xs
            acc2 += xs * xs
        else:
            acc += x * x
    if OP == 0:
        mx = tl.max(m, axis=0)
        total = tl.sum(acc * tl.exp(m - mx), axis=0)
        inv = 1.0 / total
    elif OP == 1:
        s1 = tl.sum(acc, axis=0) / N
        var = tl.maximum(tl.sum(acc2, axis=0) / N - s1 * s1, 0.0)
        mean = s1 + shift
        inv = tl.rsqrt(var + eps)
    else:
        inv = tl.rsqrt(tl.sum(acc, axis=0) / N + eps)
    # pass 2: write
    for start in range(0, N, BLOCK):
        cm = start + offs < N
        x = tl.load(x_row + start + offs, mask=cm, other=0.0).to(tl.float32)
        if OP == 0:
            y = tl.exp(x - mx) * inv
        elif OP == 1:
            y = (x - mean) * inv
        else:
            y = x * inv
        if HAS_W:
            y = y * tl.load(w_ptr + start + offs, mask=cm, other=0.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(b_ptr + start + offs, mask=cm, other=0.0).to(tl.float32)
        tl.store(y_row + start + offs, y.to(y_ptr.dtype.element_ty), mask=cm)


def configs(problem: Any, lim: Limits) -> list[tuple[str, dict[str, Any]]]:
    R, N = problem.dim["R"], problem.dim["N"]
    if N > MAX_ROW:
        return [("loop", {"BLOCK": 4096, "warps": 8}), ("loop", {"BLOCK": 2048, "warps": 4})]
    block_n = next_pow2(N)
    rows = max(1, min(next_pow2(R), 2048 // block_n))
    out = []
    for warps in (8, 16, 4, 2):
        per_thread = rows * block_n / (32 * warps)
        if not (1 <= per_thread <= 64) or not lim.fits(0, 32 * warps):
            continue
        out.append(("row", {"warps": warps, "ROWS": rows, "grid": "full", "stages": 1}))
        if R // rows > 4 * lim.sm_count:  # enough row blocks to make a persistent grid pay
            out.append(("row", {"warps": warps, "ROWS": rows, "grid": 4, "stages": 2}))
    if not out:
        out.append(("row", {"warps": 4, "ROWS": rows, "grid": "full", "stages": 1}))
    out = out[:6]
    if R >= 2 * rows and 2 * rows * block_n <= 16 * 32 * 32:  # two row blocks per program, 16 warps
        out.append(("row", {"warps": 16, "ROWS": 2 * rows, "grid": "full", "stages": 1}))
    return out


def build(template: str, cfg: dict[str, Any], problem: Any) -> Any:
    import torch

    from uhop.backends.triton_kernels import limits

    if template not in ("row", "loop"):
        raise ValueError(f"unknown row-op template {template!r}")
    op = OPS[problem.op]
    eps = float(problem.param.get("eps", 0.0))
    warps = cfg["warps"]
    sm = limits(problem.device).sm_count

    def run(x, w=None, b=None):
        N = x.shape[-1]
        x2 = x.reshape(-1, N)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        R = x2.shape[0]
        y = torch.empty((R, N), device=x.device, dtype=x.dtype)
        wt = w if w is not None else y
        bt = b if b is not None else y
        if template == "loop":
            _row_loop_kernel[(R,)](
                x2, wt, bt, y, N, x2.stride(0), y.stride(0), eps,
                OP=op, HAS_W=w is not None, HAS_B=b is not None, BLOCK=cfg["BLOCK"], num_warps=warps,
            )  # fmt: skip
            return y.reshape(x.shape)
        rows, block_n = cfg["ROWS"], next_pow2(N)
        blocks = triton.cdiv(R, rows)
        grid = blocks if cfg["grid"] == "full" else min(blocks, int(cfg["grid"]) * sm)
        _row_kernel[(grid,)](
            x2, wt, bt, y, R, N, x2.stride(0), y.stride(0), eps,
            OP=op, HAS_W=w is not None, HAS_B=b is not None, EVEN_N=N == block_n,
            ROWS=rows, BLOCK_N=block_n, STAGES=cfg["stages"], num_warps=warps,
        )  # fmt: skip
        return y.reshape(x.shape)

    return run
