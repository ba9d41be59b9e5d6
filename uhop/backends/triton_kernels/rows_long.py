"""Row templates for rows too long for one program's registers (see :mod:`rowops` for the
config keys and the alignment scheme these share).

``split``: cooperative chunks, one program each, statistics exchanged through a workspace and
an atomic counter per row (one pass over memory); the counters (int64) are kept across launches
and never re-zeroed (:func:`_arrive`). Its persistent form (:func:`_split_persist_kernel`): groups
of a row's programs walk rows together, loading the next row's chunk while they wait. ``stream``: a persistent grid, one row per
program at a time, two passes over the row with pipelined loads: the first keeps the row in L2
(``evict_last``) so the second mostly reads L2, not HBM. ``loop``: the plain two-pass fallback.
"""

from __future__ import annotations

import triton
import triton.language as tl

from uhop.backends.triton_kernels.launch import Launcher
from uhop.backends.triton_kernels.rowops import _bounds, _finish, _width


@triton.jit
def _edges_write(xh, hm, xt, tm, y_ptr, w_ptr, b_ptr, start, b, hidx, m, s, mean, inv,
                 OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):  # fmt: skip
    """y for a misaligned row's head [start, start + VEC) and tail [b, b + VEC) (masked)."""
    tcol = b - start + hidx
    wh = 0.0
    bh = 0.0
    wt = 0.0
    bt = 0.0
    if HAS_W:
        wh = tl.load(w_ptr + hidx, mask=hm, other=0.0).to(tl.float32)
        wt = tl.load(w_ptr + tcol, mask=tm, other=0.0).to(tl.float32)
    if HAS_B:
        bh = tl.load(b_ptr + hidx, mask=hm, other=0.0).to(tl.float32)
        bt = tl.load(b_ptr + tcol, mask=tm, other=0.0).to(tl.float32)
    yh = _finish(xh, m, s, mean, inv, wh, bh, OP, HAS_W, HAS_B)
    yt = _finish(xt, m, s, mean, inv, wt, bt, OP, HAS_W, HAS_B)
    tl.store(y_ptr + start + hidx, yh.to(y_ptr.dtype.element_ty), mask=hm)
    tl.store(y_ptr + b + hidx, yt.to(y_ptr.dtype.element_ty), mask=tm)


@triton.jit
def _arrive(cnt_ptr, S):
    """Count this program in at its row's counter (int64, releasing the partials it stored) and
    return the count that means all S of the row's programs are in. Counters are not zeroed per
    launch: each launch adds S to every row's, so between launches a counter is a multiple of S
    and this launch's arrivals end at the next multiple."""
    old = tl.atomic_add(cnt_ptr, 1, sem="release")
    return old - old % S + S


@triton.jit
def _arrive_and_wait(cnt_ptr, S, SPIN: tl.constexpr):
    _wait(cnt_ptr, 0, _arrive(cnt_ptr, S), SPIN)


@triton.jit
def _wait(sync_ptr, row, target, SPIN: tl.constexpr):  # sync_ptr: the row's counter
    """Wait until the counter of ``row`` reaches ``target`` (then acquire the partials published).
    SPIN 0: poll with acquiring loads; 1: poll with volatile loads (cheaper on the L2 slice holding
    the counter), one acquiring read at the end; 2: as 1 with a nanosleep between polls."""
    if SPIN == 0:
        done = tl.atomic_add(sync_ptr + row, 0, sem="acquire")
        while done < target:
            done = tl.atomic_add(sync_ptr + row, 0, sem="acquire")
    else:
        done = tl.load(sync_ptr + row, volatile=True)
        while done < target:
            if SPIN == 2:
                tl.inline_asm_elementwise("nanosleep.u32 64; mov.u32 $0, 0;", "=r", [], dtype=tl.int32,
                                          is_pure=False, pack=1)  # fmt: skip
            done = tl.load(sync_ptr + row, volatile=True)
        done = tl.atomic_add(sync_ptr + row, 0, sem="acquire")


@triton.jit
def _split_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, sync_ptr, NV, SV, S, eps, wt_ptr, bt_ptr, NPV,
    OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, VEC: tl.constexpr, ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr, SP: tl.constexpr, PHASE: tl.constexpr, SPIN: tl.constexpr = 0,
    SYNC: tl.constexpr = 1,
):  # fmt: skip
    # PHASE 0: one launch (publish, wait for siblings, write); 1: publish only; 2: write only.
    # Program t is chunk t % S of row t // S; SYNC: int32s between rows' counters.
    N = _width(NV, VEC, ALIGNED)
    t = tl.program_id(0)
    row = t // S
    part = t % S
    z64 = t.to(tl.int64) * 0
    start = _row_start(row, z64 + SV, VEC, ALIGNED)
    x, cmask, xh, hmask, xt, tmask = _chunk_load(x_ptr, start, N, part, True, VEC, ALIGNED, CHUNK)
    if PHASE != 2:
        p0, p1, p2 = _chunk_partials(x, cmask, xh, hmask, xt, tmask, OP, ALIGNED)
        slot = ws_ptr + (t + z64) * 3
        tl.store(slot, p0)
        tl.store(slot + 1, p1)
        tl.store(slot + 2, p2)
    if PHASE == 0:
        tl.debug_barrier()  # every thread's stores precede the release below
        _arrive_and_wait(sync_ptr + row * SYNC, S, SPIN)
        tl.debug_barrier()
    if PHASE != 1:
        m, s, mean, inv = _combine(ws_ptr, row + z64, S, N, eps, OP, SP)
        _chunk_write(x, cmask, xh, hmask, xt, tmask, y_ptr, w_ptr, b_ptr, wt_ptr, bt_ptr, start, N, part, NPV,
                     m, s, mean, inv, OP, HAS_W, HAS_B, VEC, ALIGNED, CHUNK)  # fmt: skip


@triton.jit
def _online_max_sum(m, acc, x):
    """One step of the per-lane online softmax statistics: running max m and sum acc of exp(x - m).
    A lane that has seen only -inf (filtered logits) keeps acc 0 (exp(-inf - -inf) would be NaN)."""
    m_new = tl.maximum(m, x)
    m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
    acc = acc * tl.exp2((m - m_ref) * 1.4426950408889634) + tl.exp2((x - m_ref) * 1.4426950408889634)
    return m_new, acc


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
            m, acc = _online_max_sum(m, acc, tl.where(cm, x, -float("inf")))
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
        total = tl.sum(acc * tl.exp2((m - mx) * 1.4426950408889634), axis=0)
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


@triton.jit
def _stream_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, R, NV, eps, wt_ptr, bt_ptr, NPV,
    OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, VEC: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    N = _width(NV, VEC, ALIGNED)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    idx = tl.arange(0, BLOCK)
    hidx = tl.arange(0, VEC)
    nv64 = pid.to(tl.int64) * 0 + NV  # 64-bit row offsets (the loop variable is 32-bit)
    for row in tl.range(pid, R, nprog):
        if ALIGNED:
            start = row * nv64 * VEC
        else:
            start = row * nv64
        a, nb, hd, b, end = _bounds(start, N, VEC, ALIGNED)
        hm = hidx < hd
        tm = hidx < end - b
        xh = tl.load(x_ptr + start + hidx, mask=hm, other=0.0).to(tl.float32)
        xt = tl.load(x_ptr + b + hidx, mask=tm, other=0.0).to(tl.float32)
        # pass 1: per-lane online statistics; shift by the row's first element keeps the one-pass
        # variance accurate
        shift = tl.load(x_ptr + start).to(tl.float32)
        mv = tl.full((BLOCK,), -float("inf"), tl.float32)
        acc = tl.zeros((BLOCK,), tl.float32)
        acc2 = tl.zeros((BLOCK,), tl.float32)
        for c in tl.range(0, nb, BLOCK, num_stages=STAGES):
            cm = c + idx < nb
            x = tl.load(x_ptr + a + c + idx, mask=cm, other=0.0, eviction_policy="evict_last").to(tl.float32)
            if OP == 0 or OP == 3:
                mv, acc = _online_max_sum(mv, acc, tl.where(cm, x, -float("inf")))
            elif OP == 1:
                xs = tl.where(cm, x - shift, 0.0)
                acc += xs
                acc2 += xs * xs
            else:
                acc += x * x
        m = 0.0
        s = 1.0
        mean = 0.0
        inv = 1.0
        if OP == 0 or OP == 3:
            m = tl.maximum(tl.max(mv, axis=0), tl.max(tl.where(hm, xh, -float("inf")), axis=0))
            m = tl.maximum(m, tl.max(tl.where(tm, xt, -float("inf")), axis=0))
            s = tl.sum(
                tl.where(mv == -float("inf"), 0.0, acc * tl.exp2((mv - m) * 1.4426950408889634)), axis=0
            )
            s += tl.sum(tl.where(hm, tl.exp2((xh - m) * 1.4426950408889634), 0.0), axis=0)
            s += tl.sum(tl.where(tm, tl.exp2((xt - m) * 1.4426950408889634), 0.0), axis=0)
        elif OP == 1:
            hs = tl.where(hm, xh - shift, 0.0)
            ts = tl.where(tm, xt - shift, 0.0)
            s1 = (tl.sum(acc, axis=0) + tl.sum(hs, axis=0) + tl.sum(ts, axis=0)) / N
            s2 = (tl.sum(acc2, axis=0) + tl.sum(hs * hs, axis=0) + tl.sum(ts * ts, axis=0)) / N
            mean = s1 + shift
            inv = tl.rsqrt(tl.maximum(s2 - s1 * s1, 0.0) + eps)
        else:
            ss = tl.sum(acc, axis=0) + tl.sum(xh * xh, axis=0) + tl.sum(xt * xt, axis=0)
            inv = tl.rsqrt(ss / N + eps)
        # pass 2: write (x mostly from L2)
        for c in tl.range(0, nb, BLOCK, num_stages=STAGES):
            cm = c + idx < nb
            x = tl.load(x_ptr + a + c + idx, mask=cm, other=0.0, eviction_policy="evict_first").to(tl.float32)
            w = 0.0
            bb = 0.0
            if ALIGNED:
                col = c + idx
            else:  # row (a - start) of the shifted tables (rowops.shifted_table): aligned loads
                col = (a - start) * (NPV * VEC) + c + idx
            if HAS_W:
                w = tl.load(wt_ptr + col, mask=cm, other=0.0, eviction_policy="evict_last").to(tl.float32)
            if HAS_B:
                bb = tl.load(bt_ptr + col, mask=cm, other=0.0, eviction_policy="evict_last").to(tl.float32)
            y = _finish(x, m, s, mean, inv, w, bb, OP, HAS_W, HAS_B)
            tl.store(y_ptr + a + c + idx, y.to(y_ptr.dtype.element_ty), mask=cm)
        _edges_write(xh, hm, xt, tm, y_ptr, w_ptr, b_ptr, start, b, hidx, m, s, mean, inv, OP, HAS_W, HAS_B)


# ---- persistent split: groups of S programs walk rows, the next row's chunk loaded while waiting ----


@triton.jit
def _row_start(row, sv64, VEC: tl.constexpr, ALIGNED: tl.constexpr):
    """Offset of ``row`` (its stride ``sv64`` an int64 tensor: 64-bit offsets, and in the
    interpreter ``row`` may be a Python int)."""
    if ALIGNED:
        return row * sv64 * VEC
    else:
        return row * sv64


@triton.jit
def _chunk_load(x_ptr, start, N, part, ok, VEC: tl.constexpr, ALIGNED: tl.constexpr, CHUNK: tl.constexpr):
    """This program's chunk of the row at ``start`` (fp32), its mask, and (chunk 0 of a misaligned
    row) the row's head and tail; ``ok`` false loads nothing (past the last row)."""
    a, nb, hd, b, end = _bounds(start, N, VEC, ALIGNED)
    idx = tl.arange(0, CHUNK)
    hidx = tl.arange(0, VEC)
    lo = part * CHUNK
    cmask = (lo + idx < nb) & ok
    x = tl.load(x_ptr + a + lo + idx, mask=cmask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    hmask = (hidx < hd) & (part == 0) & ok
    tmask = (hidx < end - b) & (part == 0) & ok
    if ALIGNED:
        xh = tl.zeros((VEC,), tl.float32)
        xt = xh
    else:
        xh = tl.load(x_ptr + start + hidx, mask=hmask, other=0.0).to(tl.float32)
        xt = tl.load(x_ptr + b + hidx, mask=tmask, other=0.0).to(tl.float32)
    return x, cmask, xh, hmask, xt, tmask


@triton.jit
def _chunk_partials(x, cmask, xh, hmask, xt, tmask, OP: tl.constexpr, ALIGNED: tl.constexpr):
    """(p0, p1, p2) of one chunk: softmax (max, sum of exp); layernorm (count, mean, M2); rmsnorm
    (sum of squares, 0, 0)."""
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
    elif OP == 1:
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
    return p0, p1, p2


@triton.jit
def _combine(ws_ptr, row64, S, N, eps, OP: tl.constexpr, SP: tl.constexpr):
    """The row's statistics (m, s, mean, inv) from its S chunks' partials in the workspace."""
    j = tl.arange(0, SP)
    jm = j < S
    sib = ws_ptr + (row64 * S + j) * 3
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
    return m, s, mean, inv


@triton.jit
def _chunk_write(x, cmask, xh, hmask, xt, tmask, y_ptr, w_ptr, b_ptr, wt_ptr, bt_ptr, start, N, part, NPV,
                 m, s, mean, inv, OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, VEC: tl.constexpr,
                 ALIGNED: tl.constexpr, CHUNK: tl.constexpr):  # fmt: skip
    a, nb, hd, b, end = _bounds(start, N, VEC, ALIGNED)
    idx = tl.arange(0, CHUNK)
    hidx = tl.arange(0, VEC)
    lo = part * CHUNK
    w = 0.0
    bb = 0.0
    if ALIGNED:
        col = lo + idx
        if HAS_W:
            w = tl.load(w_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        if HAS_B:
            bb = tl.load(b_ptr + col, mask=cmask, other=0.0).to(tl.float32)
    else:  # row (a - start) of the shifted tables (rowops.shifted_table): aligned loads
        col = (a - start) * (NPV * VEC) + lo + idx
        if HAS_W:
            w = tl.load(wt_ptr + col, mask=cmask, other=0.0).to(tl.float32)
        if HAS_B:
            bb = tl.load(bt_ptr + col, mask=cmask, other=0.0).to(tl.float32)
    y = _finish(x, m, s, mean, inv, w, bb, OP, HAS_W, HAS_B)
    tl.store(y_ptr + a + lo + idx, y.to(y_ptr.dtype.element_ty), mask=cmask)
    if not ALIGNED:
        _edges_write(xh, hmask, xt, tmask, y_ptr, w_ptr, b_ptr, start, b, hidx, m, s, mean, inv, OP, HAS_W, HAS_B)


@triton.jit
def _split_persist_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, sync_ptr, R, NV, SV, S, G, eps, wt_ptr, bt_ptr, NPV,
    OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, VEC: tl.constexpr, ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr, SP: tl.constexpr, PHASE: tl.constexpr, SPIN: tl.constexpr = 0,
    SYNC: tl.constexpr = 1,
):  # fmt: skip
    # Program t is chunk t % S of rows g, g + G, g + 2G, ... (g = t // S): a group of S adjacent
    # programs walks its rows together, waiting only on itself (groups are dispatched in index
    # order, so a group never waits on one that is not resident: as deadlock-free as _split_kernel).
    # After publishing row r's partials it loads row r + G's chunk, so those loads are in flight
    # while it waits for its siblings and writes row r. PHASE as in _split_kernel.
    N = _width(NV, VEC, ALIGNED)
    t = tl.program_id(0)
    g = t // S
    part = t % S
    z64 = t.to(tl.int64) * 0
    sv64 = z64 + SV
    start = _row_start(g, sv64, VEC, ALIGNED)
    x, cmask, xh, hmask, xt, tmask = _chunk_load(x_ptr, start, N, part, g < R, VEC, ALIGNED, CHUNK)
    for row in range(g, R, G):
        if PHASE != 2:
            p0, p1, p2 = _chunk_partials(x, cmask, xh, hmask, xt, tmask, OP, ALIGNED)
            slot = ws_ptr + ((row + z64) * S + part) * 3
            tl.store(slot, p0)
            tl.store(slot + 1, p1)
            tl.store(slot + 2, p2)
        target = S
        if PHASE == 0:
            tl.debug_barrier()  # every thread's stores precede the release below
            target = _arrive(sync_ptr + row * SYNC, S)
        nstart = _row_start(row + G, sv64, VEC, ALIGNED)
        nx, ncm, nxh, nhm, nxt, ntm = _chunk_load(x_ptr, nstart, N, part, row + G < R, VEC, ALIGNED, CHUNK)
        if PHASE == 0:
            _wait(sync_ptr + row * SYNC, 0, target, SPIN)
            tl.debug_barrier()
        if PHASE != 1:
            m, s, mean, inv = _combine(ws_ptr, row + z64, S, N, eps, OP, SP)
            _chunk_write(x, cmask, xh, hmask, xt, tmask, y_ptr, w_ptr, b_ptr, wt_ptr, bt_ptr, start, N, part, NPV,
                         m, s, mean, inv, OP, HAS_W, HAS_B, VEC, ALIGNED, CHUNK)  # fmt: skip
        x = nx
        cmask = ncm
        xh = nxh
        hmask = nhm
        xt = nxt
        tmask = ntm
        start = nstart


#: direct launchers (uhop.backends.triton_kernels.launch) for rowops.launcher
split, row_loop, stream, split_persist = (Launcher(k) for k in (_split_kernel, _row_loop_kernel, _stream_kernel,
                                                                 _split_persist_kernel))  # fmt: skip
