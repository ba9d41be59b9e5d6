"""Row-wise templates over the last dim: softmax, log-softmax, layernorm, rmsnorm (fp32 statistics).

Every template reads x once and writes y once (the minimum traffic), at any width:

``row``: whole rows in registers. ``ROWS`` rows x ``BLOCK`` lanes per program, every row block
once (``grid="full"``) or a persistent grid of ``grid`` programs per SM.
``split``: a row is cut into ``cdiv(N, CHUNK)`` chunks, one program each, the chunk kept in
registers. Each program publishes its partial statistics (max and sum of exp; count, mean and M2
by Chan's rule; sum of squares) to a workspace, waits for its row's siblings on an atomic counter,
combines the partials and writes its chunk. That serves rows longer than registers hold and
fills the GPU when there are fewer rows than SMs. Siblings have adjacent program ids; the wait
is deadlock-free when all of a row's chunks can be resident at once (GPUs dispatch blocks in
index order), so ``configs`` keeps ``cdiv(N, CHUNK) <= SM count``. ``phases=2`` runs the same
code as a statistics launch and a write launch (x read twice, no waiting): Triton's CPU
interpreter runs programs one after another and would wait forever in the one-launch form, so CI
checks the math and indexing through it (the GPU tests run both).
``loop``: the old two-pass fallback (x read twice), kept as a last candidate.

Widths that are not a multiple of the 16-byte vector (``VEC`` elements): a row starting at
element ``start`` is loaded as an unmasked-per-vector body ``[ceil_vec(start), floor_vec(end))``
at 16-byte aligned addresses plus a head and a tail of fewer than ``VEC`` elements each, so the
bulk of every row moves in 16-byte accesses. Lengths and strides are passed in units of ``VEC``
and multiplied back in the kernel, which tells Triton they are multiples of ``VEC`` (it only
infers divisibility by 16 from argument values).

Config keys: row: warps, ROWS, grid, stages; split: CHUNK, warps, phases; loop: BLOCK, warps.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from uhop.backends.triton_kernels import Limits, next_pow2

#: op -> kernel op code. 3 (log-softmax) is served by the kernels but has no op definition yet.
OPS = {"softmax": 0, "layernorm": 1, "rmsnorm": 2, "log_softmax": 3}
#: widest row kept whole in one program's registers (fp32 statistics: <= 32 values per thread
#: at 16 warps); wider rows go to ``split``
MAX_ROW = 16384
LOG2E = 1.4426950408889634


@triton.jit
def _bounds(start, N, VEC: tl.constexpr, ALIGNED: tl.constexpr):
    """Aligned body [a, a + nb) and head/tail lengths of the rows starting at ``start``."""
    end = start + N
    if ALIGNED:
        a = start
        nb = end - start
        hd = nb * 0
        b = end
    else:
        a = (start + (VEC - 1)) // VEC * VEC
        b = tl.maximum(end // VEC * VEC, a)
        nb = b - a
        hd = tl.minimum(a, end) - start
    return a, nb, hd, b, end


@triton.jit
def _finish(x, m, s, mean, inv, w, bb, OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """y from x and the row statistics (softmax: max m, sum s; norms: mean, 1/std)."""
    if OP == 0:
        y = tl.exp2((x - m) * 1.4426950408889634) / s
    elif OP == 3:
        y = x - m - tl.log(s)
    elif OP == 1:
        y = (x - mean) * inv
    else:
        y = x * inv
    if HAS_W:
        y = y * w
    if HAS_B:
        y = y + bb
    return y


@triton.jit
def _row_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, R, NV, SV, eps,
    OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, VEC: tl.constexpr, ALIGNED: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    # ALIGNED: N = NV * VEC and the row stride SV * VEC; else N = NV, row stride SV (== N: x and y
    # rows must have the same alignment, which build() ensures)
    if ALIGNED:
        N = NV * VEC
    else:
        N = NV
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    idx = tl.arange(0, BLOCK)
    hidx = tl.arange(0, VEC)
    if ALIGNED:  # weight/bias: one row for all programs, kept in L2 while x streams through
        if HAS_W:
            w_row = tl.load(w_ptr + idx, mask=idx < N, other=0.0, eviction_policy="evict_last").to(tl.float32)
        if HAS_B:
            b_row = tl.load(b_ptr + idx, mask=idx < N, other=0.0, eviction_policy="evict_last").to(tl.float32)
    for rb in tl.range(pid, tl.cdiv(R, ROWS), nprog, num_stages=STAGES):
        rows = rb * ROWS + tl.arange(0, ROWS)
        rmask = rows < R
        if ALIGNED:
            start = rows.to(tl.int64) * SV * VEC
        else:
            start = rows.to(tl.int64) * SV
        a, nb, hd, b, end = _bounds(start, N, VEC, ALIGNED)
        bmask = rmask[:, None] & (idx[None, :] < nb[:, None])
        x = tl.load(x_ptr + a[:, None] + idx[None, :], mask=bmask, other=0.0, eviction_policy="evict_first")
        x = x.to(tl.float32)
        if not ALIGNED:
            hmask = rmask[:, None] & (hidx[None, :] < hd[:, None])
            tmask = rmask[:, None] & (hidx[None, :] < (end - b)[:, None])
            xh = tl.load(x_ptr + start[:, None] + hidx[None, :], mask=hmask, other=0.0).to(tl.float32)
            xt = tl.load(x_ptr + b[:, None] + hidx[None, :], mask=tmask, other=0.0).to(tl.float32)
        m = tl.zeros((ROWS,), tl.float32)
        s = m
        mean = m
        inv = m
        if OP == 0 or OP == 3:
            m = tl.max(tl.where(bmask, x, -float("inf")), axis=1)
            if not ALIGNED:
                m = tl.maximum(m, tl.max(tl.where(hmask, xh, -float("inf")), axis=1))
                m = tl.maximum(m, tl.max(tl.where(tmask, xt, -float("inf")), axis=1))
            m = tl.where(rmask, m, 0.0)  # rows past R: keep the arithmetic finite
            s = tl.sum(tl.where(bmask, tl.exp2((x - m[:, None]) * 1.4426950408889634), 0.0), axis=1)
            if not ALIGNED:
                s += tl.sum(tl.where(hmask, tl.exp2((xh - m[:, None]) * 1.4426950408889634), 0.0), axis=1)
                s += tl.sum(tl.where(tmask, tl.exp2((xt - m[:, None]) * 1.4426950408889634), 0.0), axis=1)
            s = tl.where(rmask, s, 1.0)
        elif OP == 1:
            tot = tl.sum(x, axis=1)
            if not ALIGNED:
                tot += tl.sum(xh, axis=1) + tl.sum(xt, axis=1)
            mean = tot / N
            xc = tl.where(bmask, x - mean[:, None], 0.0)
            var = tl.sum(xc * xc, axis=1)
            if not ALIGNED:
                hc = tl.where(hmask, xh - mean[:, None], 0.0)
                tc = tl.where(tmask, xt - mean[:, None], 0.0)
                var += tl.sum(hc * hc, axis=1) + tl.sum(tc * tc, axis=1)
            inv = tl.rsqrt(var / N + eps)
        else:
            ss = tl.sum(x * x, axis=1)
            if not ALIGNED:
                ss += tl.sum(xh * xh, axis=1) + tl.sum(xt * xt, axis=1)
            inv = tl.rsqrt(ss / N + eps)
        w = 0.0
        bb = 0.0
        if ALIGNED:
            if HAS_W:
                w = w_row[None, :]
            if HAS_B:
                bb = b_row[None, :]
        else:  # the body's first column differs per row (a - start < VEC): L1-resident gathers
            wcol = (a - start)[:, None] + idx[None, :]
            if HAS_W:
                w = tl.load(w_ptr + wcol, mask=bmask, other=0.0).to(tl.float32)
            if HAS_B:
                bb = tl.load(b_ptr + wcol, mask=bmask, other=0.0).to(tl.float32)
        y = _finish(x, m[:, None], s[:, None], mean[:, None], inv[:, None], w, bb, OP, HAS_W, HAS_B)
        tl.store(y_ptr + a[:, None] + idx[None, :], y.to(y_ptr.dtype.element_ty), mask=bmask)
        if not ALIGNED:
            tcol = (b - start)[:, None] + hidx[None, :]
            wh = 0.0
            bh = 0.0
            wt = 0.0
            bt = 0.0
            if HAS_W:
                wh = tl.load(w_ptr + hidx[None, :], mask=hmask, other=0.0).to(tl.float32)
                wt = tl.load(w_ptr + tcol, mask=tmask, other=0.0).to(tl.float32)
            if HAS_B:
                bh = tl.load(b_ptr + hidx[None, :], mask=hmask, other=0.0).to(tl.float32)
                bt = tl.load(b_ptr + tcol, mask=tmask, other=0.0).to(tl.float32)
            yh = _finish(xh, m[:, None], s[:, None], mean[:, None], inv[:, None], wh, bh, OP, HAS_W, HAS_B)
            yt = _finish(xt, m[:, None], s[:, None], mean[:, None], inv[:, None], wt, bt, OP, HAS_W, HAS_B)
            tl.store(y_ptr + start[:, None] + hidx[None, :], yh.to(y_ptr.dtype.element_ty), mask=hmask)
            tl.store(y_ptr + b[:, None] + hidx[None, :], yt.to(y_ptr.dtype.element_ty), mask=tmask)


@triton.jit
def _split_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, sync_ptr, NV, SV, S, eps,
    OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, VEC: tl.constexpr, ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr, SP: tl.constexpr, PHASE: tl.constexpr,
):  # fmt: skip
    # PHASE 0: one launch (publish, wait for siblings, write); 1: publish only; 2: write only
    if ALIGNED:
        N = NV * VEC
    else:
        N = NV
    t = tl.program_id(0)
    row = t // S
    part = t % S
    if ALIGNED:
        start = row.to(tl.int64) * SV * VEC
    else:
        start = row.to(tl.int64) * SV
    a, nb, hd, b, end = _bounds(start, N, VEC, ALIGNED)
    idx = tl.arange(0, CHUNK)
    hidx = tl.arange(0, VEC)
    lo = part * CHUNK
    cmask = lo + idx < nb
    x = tl.load(x_ptr + a + lo + idx, mask=cmask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    # the head and tail (< VEC elements each) belong to chunk 0
    hmask = (hidx < hd) & (part == 0)
    tmask = (hidx < end - b) & (part == 0)
    if not ALIGNED:
        xh = tl.load(x_ptr + start + hidx, mask=hmask, other=0.0).to(tl.float32)
        xt = tl.load(x_ptr + b + hidx, mask=tmask, other=0.0).to(tl.float32)
    # partial statistics (p0, p1, p2) of this chunk
    if OP == 0 or OP == 3:
        p0 = tl.max(tl.where(cmask, x, -float("inf")), axis=0)
        if not ALIGNED:
            p0 = tl.maximum(p0, tl.max(tl.where(hmask, xh, -float("inf")), axis=0))
            p0 = tl.maximum(p0, tl.max(tl.where(tmask, xt, -float("inf")), axis=0))
        p1 = tl.sum(tl.where(cmask, tl.exp2((x - p0) * 1.4426950408889634), 0.0), axis=0)
        if not ALIGNED:
            p1 += tl.sum(tl.where(hmask, tl.exp2((xh - p0) * 1.4426950408889634), 0.0), axis=0)
            p1 += tl.sum(tl.where(tmask, tl.exp2((xt - p0) * 1.4426950408889634), 0.0), axis=0)
        p2 = p1 * 0.0
    elif OP == 1:  # count, mean, M2 (Chan et al.): exact combination, no cancellation
        p0 = tl.sum(cmask.to(tl.float32), axis=0)
        tot = tl.sum(x, axis=0)
        if not ALIGNED:
            p0 += tl.sum(hmask.to(tl.float32), axis=0) + tl.sum(tmask.to(tl.float32), axis=0)
            tot += tl.sum(xh, axis=0) + tl.sum(xt, axis=0)
        p1 = tot / tl.maximum(p0, 1.0)
        xc = tl.where(cmask, x - p1, 0.0)
        p2 = tl.sum(xc * xc, axis=0)
        if not ALIGNED:
            hc = tl.where(hmask, xh - p1, 0.0)
            tc = tl.where(tmask, xt - p1, 0.0)
            p2 += tl.sum(hc * hc, axis=0) + tl.sum(tc * tc, axis=0)
    else:
        p0 = tl.sum(x * x, axis=0)
        if not ALIGNED:
            p0 += tl.sum(xh * xh, axis=0) + tl.sum(xt * xt, axis=0)
        p1 = p0 * 0.0
        p2 = p1
    slot = ws_ptr + t.to(tl.int64) * 3
    if PHASE != 2:
        tl.store(slot, p0)
        tl.store(slot + 1, p1)
        tl.store(slot + 2, p2)
    if PHASE == 0:
        tl.debug_barrier()  # every thread's stores precede the release below
        tl.atomic_add(sync_ptr + row, 1, sem="release")
        done = tl.atomic_add(sync_ptr + row, 0, sem="acquire")
        while done < S:
            done = tl.atomic_add(sync_ptr + row, 0, sem="acquire")
        tl.debug_barrier()
    if PHASE != 1:
        j = tl.arange(0, SP)
        jm = j < S
        sib = ws_ptr + (row.to(tl.int64) * S + j) * 3
        q0 = tl.load(sib, mask=jm, other=0.0, volatile=True)
        q1 = tl.load(sib + 1, mask=jm, other=0.0, volatile=True)
        q2 = tl.load(sib + 2, mask=jm, other=0.0, volatile=True)
        m = 0.0
        s = 1.0
        mean = 0.0
        inv = 1.0
        if OP == 0 or OP == 3:
            q0 = tl.where(jm, q0, -float("inf"))
            m = tl.max(q0, axis=0)
            s = tl.sum(tl.where(q1 > 0.0, q1 * tl.exp2((q0 - m) * 1.4426950408889634), 0.0), axis=0)
        elif OP == 1:
            mean = tl.sum(q0 * q1, axis=0) / N
            d = q1 - mean
            inv = tl.rsqrt(tl.sum(q2 + q0 * d * d, axis=0) / N + eps)
        else:
            inv = tl.rsqrt(tl.sum(q0, axis=0) / N + eps)
        col = a - start + lo + idx
        w = 0.0
        bb = 0.0
        if HAS_W:
            w = tl.load(w_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        if HAS_B:
            bb = tl.load(b_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        y = _finish(x, m, s, mean, inv, w, bb, OP, HAS_W, HAS_B)
        tl.store(y_ptr + a + lo + idx, y.to(y_ptr.dtype.element_ty), mask=cmask)
        if not ALIGNED:
            tcol = b - start + hidx
            wh = 0.0
            bh = 0.0
            wt = 0.0
            bt = 0.0
            if HAS_W:
                wh = tl.load(w_ptr + hidx, mask=hmask, other=0.0).to(tl.float32)
                wt = tl.load(w_ptr + tcol, mask=tmask, other=0.0).to(tl.float32)
            if HAS_B:
                bh = tl.load(b_ptr + hidx, mask=hmask, other=0.0).to(tl.float32)
                bt = tl.load(b_ptr + tcol, mask=tmask, other=0.0).to(tl.float32)
            yh = _finish(xh, m, s, mean, inv, wh, bh, OP, HAS_W, HAS_B)
            yt = _finish(xt, m, s, mean, inv, wt, bt, OP, HAS_W, HAS_B)
            tl.store(y_ptr + start + hidx, yh.to(y_ptr.dtype.element_ty), mask=hmask)
            tl.store(y_ptr + b + hidx, yt.to(y_ptr.dtype.element_ty), mask=tmask)


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
        if OP == 0 or OP == 3:
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
    mx = 0.0
    total = 1.0
    mean = 0.0
    inv = 1.0
    if OP == 0 or OP == 3:
        mx = tl.max(m, axis=0)
        total = tl.sum(acc * tl.exp(m - mx), axis=0)
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
        w = 0.0
        bb = 0.0
        if HAS_W:
            w = tl.load(w_ptr + start + offs, mask=cm, other=0.0).to(tl.float32)
        if HAS_B:
            bb = tl.load(b_ptr + start + offs, mask=cm, other=0.0).to(tl.float32)
        y = _finish(x, mx, total, mean, inv, w, bb, OP, HAS_W, HAS_B)
        tl.store(y_row + start + offs, y.to(y_ptr.dtype.element_ty), mask=cm)


# ---- search space ----------------------------------------------------------------------------
#: elements one ``row`` program covers when rows are short (several rows per program)
ROW_TILE = 4096
#: fp32 values per thread the templates aim for: two to four 16-byte loads in flight
PER_THREAD = 16


def _warps(elems: int, lo: int = 4, hi: int = 16) -> int:
    return max(lo, min(hi, elems // (32 * PER_THREAD)))


def split_chunk(R: int, N: int, sm: int, resident: bool) -> int | None:
    """The ``split`` chunk for rows of N: most lanes used, at least 2 programs per SM where the
    rows allow it, and (``resident``, the one-launch form) no more chunks per row than SMs."""
    best, best_score = None, -1.0
    for chunk in (8192, 4096, 2048, 1024):
        S = -(-N // chunk)
        if resident and S > sm:
            continue
        lanes = N / (S * chunk)
        fill = min(1.0, R * S / (2 * sm))
        score = lanes * fill
        if score > best_score + 0.02:
            best, best_score = chunk, score
    return best


def configs(problem: Any, lim: Limits) -> list[tuple[str, dict[str, Any]]]:
    """At most 4 candidates, the expected best first: whole rows in registers while they fit
    (MAX_ROW) and there are rows enough to fill the SMs, else cooperative chunks."""

    R, N = problem.dim["R"], problem.dim["N"]
    sm = lim.sm_count
    interp = not problem.device.startswith("cuda")
    phases = 2 if interp else 1  # the interpreter runs programs in sequence: no waiting there
    out: list[tuple[str, dict[str, Any]]] = []
    chunk = split_chunk(R, N, sm, resident=phases == 1)
    split = ("split", {"CHUNK": chunk, "warps": _warps(chunk), "phases": phases}) if chunk else None
    if N <= MAX_ROW:
        block = next_pow2(N)
        rows = max(1, min(next_pow2(R), ROW_TILE // block))
        warps = _warps(rows * block)
        if not lim.fits(0, 32 * warps):
            warps = 4
        row = ("row", {"warps": warps, "ROWS": rows, "grid": "full", "stages": 1})
        few_rows = R * N < 2 * sm * ROW_TILE or -(-R // rows) < sm
        if split and few_rows and N >= 2048:
            out.append(split)
        out.append(row)
        if -(-R // rows) > 8 * sm:  # enough row blocks for a persistent grid to pay
            out.append(("row", {"warps": warps, "ROWS": rows, "grid": 4, "stages": 2}))
        if block >= 1024 and rows * block * 2 <= 2 * ROW_TILE and R >= 2 * rows:  # more per program
            out.append(
                ("row", {"warps": _warps(2 * rows * block, 8), "ROWS": 2 * rows, "grid": "full", "stages": 1})
            )
        if split and split not in out and N >= 2048:
            out.append(split)
    else:
        if split:
            out.append(split)
            alt = chunk // 2
            if alt >= 1024 and (phases == 2 or -(-N // alt) <= sm):
                out.append(("split", {"CHUNK": alt, "warps": _warps(alt), "phases": phases}))
        out.append(("loop", {"BLOCK": 4096, "warps": 8}))
    return out[:4]


def build(template: str, cfg: dict[str, Any], problem: Any) -> Any:
    """A kernel ``run(x, weight=None, bias=None) -> y`` for ``problem`` (torch tensors)."""
    return launcher(template, cfg, OPS[problem.op], float(problem.param.get("eps", 0.0)), problem.device)


def launcher(template: str, cfg: dict[str, Any], op: int, eps: float, device: str) -> Any:
    """The kernel for op code ``op`` (see OPS; the tests reach log-softmax, which has no op
    definition yet, through here)."""
    import torch

    from uhop.backends.triton_kernels import limits

    if template not in ("row", "split", "loop"):
        raise ValueError(f"unknown row-op template {template!r}")
    warps = cfg["warps"]
    sm = limits(device).sm_count

    def run(x, w=None, b=None):
        N = x.shape[-1]
        x2 = x.reshape(-1, N)
        if not x2.is_contiguous():  # x and y rows must share their alignment
            x2 = x2.contiguous()
        R = x2.shape[0]
        y = torch.empty((R, N), device=x.device, dtype=x.dtype)
        w = None if w is None else w.contiguous()
        b = None if b is None else b.contiguous()
        wt = w if w is not None else y
        bt = b if b is not None else y
        flags = {"OP": op, "HAS_W": w is not None, "HAS_B": b is not None}
        if template == "loop":
            _row_loop_kernel[(R,)](x2, wt, bt, y, N, N, N, eps, BLOCK=cfg["BLOCK"], num_warps=warps, **flags)
            return y.reshape(x.shape)
        vec = 16 // x2.element_size()
        aligned = N % vec == 0
        nv = N // vec if aligned else N
        flags.update(VEC=vec, ALIGNED=aligned)
        if template == "row":
            rows, block = cfg["ROWS"], next_pow2(N)
            blocks = triton.cdiv(R, rows)
            grid = blocks if cfg["grid"] == "full" else min(blocks, int(cfg["grid"]) * sm)
            _row_kernel[(grid,)](
                x2,
                wt,
                bt,
                y,
                R,
                nv,
                nv,
                eps,
                ROWS=rows,
                BLOCK=block,
                STAGES=cfg["stages"],
                num_warps=warps,
                **flags,
            )
            return y.reshape(x.shape)
        chunk = cfg["CHUNK"]
        S = triton.cdiv(N, chunk)
        ws = torch.empty(R * S * 3, device=x.device, dtype=torch.float32)
        common = dict(CHUNK=chunk, SP=next_pow2(S), num_warps=warps, **flags)
        if cfg.get("phases", 1) == 1:
            sync = torch.zeros(R, device=x.device, dtype=torch.int32)
            _split_kernel[(R * S,)](x2, wt, bt, y, ws, sync, nv, nv, S, eps, PHASE=0, **common)
        else:
            for phase in (1, 2):
                _split_kernel[(R * S,)](x2, wt, bt, y, ws, ws, nv, nv, S, eps, PHASE=phase, **common)
        return y.reshape(x.shape)

    return run
