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
``stream`` (long rows, many of them): a persistent grid walks each row twice with pipelined
loads, the second pass reading what the first left in L2. ``split``, ``stream`` and the two-pass
``loop`` fallback live in :mod:`rows_long`.

Widths that are not a multiple of the 16-byte vector (``VEC`` elements): a row starting at
element ``start`` is loaded as an unmasked-per-vector body ``[ceil_vec(start), floor_vec(end))``
at 16-byte aligned addresses plus a head and a tail of fewer than ``VEC`` elements each, so the
bulk of every row moves in 16-byte accesses. Lengths and strides are passed in units of ``VEC``
and multiplied back in the kernel, which tells Triton they are multiples of ``VEC`` (it only
infers divisibility by 16 from argument values).

Config keys: row: warps, ROWS, grid, stages, tiles (1: next_pow2(N) lanes; 2: two power-of-two
tiles, see ``row_tiles``), optional ctas (a program spread over a thread-block cluster of that many
CTAs, Triton's ``num_ctas``: Hopper; the row's reductions then cross CTAs; measured by
``benchmarks/row_variants.py`` only, not in the search space yet); split: CHUNK, warps, phases, optional
persist (the persistent form: groups of ``cdiv(N, CHUNK)`` programs walk rows, ``persist`` programs
per SM, registers capped so that all are resident), spin (how a program polls its row's counter:
0 acquire loads, 1 volatile loads, 2 volatile loads with a nanosleep), sync_stride (int32s between
rows' int64 counters, default 16: 128 bytes); stream: BLOCK, warps, stages, grid (programs per SM); loop: BLOCK,
warps. Every template takes an optional maxnreg (ptxas's register cap).
"""

from __future__ import annotations

import weakref
from typing import Any

import triton
import triton.language as tl

from uhop.backends.triton_kernels import Limits, next_pow2
from uhop.backends.triton_kernels.launch import Launcher

#: op -> kernel op code
OPS = {"softmax": 0, "layernorm": 1, "rmsnorm": 2, "log_softmax": 3}
#: widest row kept whole in one program's registers (fp32 statistics: <= 32 values per thread
#: at 16 warps); wider rows go to ``split``
MAX_ROW = 16384
LOG2E = 1.4426950408889634


@triton.jit
def _width(NV, VEC: tl.constexpr, ALIGNED: tl.constexpr):
    """The row width N from the kernels' NV argument: in units of VEC when rows are aligned (so
    Triton sees a multiple of VEC), in elements otherwise."""
    if ALIGNED:
        N = NV * VEC
    else:
        N = NV
    return N


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
def _exp_arg(x, m, mc, OP: tl.constexpr):
    """The exponent (base 2) of x's term in the sum of exp. Softmax: fma(x, log2(e), -m * log2(e)),
    one instruction per element, x * log2(e) unrounded inside it (the rounding of m * log2(e) is
    common to the row and cancels in the normalization; Triton's interpreter does not fuse, so its
    runs of this are up to ulp(x * log2(e)) off); log-softmax keeps (x - m) * log2(e), as that
    rounding would shift its log(sum)."""
    if OP == 0:
        return tl.fma(x, 1.4426950408889634, -mc)
    else:
        return (x - m) * 1.4426950408889634


@triton.jit
def _finish(x, m, s, mean, inv, w, bb, OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """y from x and the row statistics (softmax: max m, sum s; norms: mean, 1/std)."""
    if OP == 0:  # _row_stats's terms (the same FFMA and ex2: computed once), one division per row
        y = tl.exp2(_exp_arg(x, m, m * 1.4426950408889634, OP)) * (1.0 / s)
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
def _row_stats(
    x, bm, x2, bm2, xh, hm, xt, tm, N, eps, OP: tl.constexpr, TWO: tl.constexpr, EDGES: tl.constexpr
):
    """Per-row (m, s, mean, inv) over the body tiles (x, x2) and the head/tail tiles. Softmax's
    tiles come padded with -inf (``_pad``): the max and the sum of exp need no selects (on sm_90
    they were 2 of the 16.5 instructions per element of a softmax over 4096)."""
    m = tl.zeros((x.shape[0],), tl.float32)
    s = m + 1.0
    mean = m
    inv = s
    if OP == 0 or OP == 3:
        m = tl.max(x, axis=1)
        if TWO:
            m = tl.maximum(m, tl.max(x2, axis=1))
        if EDGES:
            m = tl.maximum(m, tl.maximum(tl.max(xh, axis=1), tl.max(xt, axis=1)))
        m = tl.where(m == -float("inf"), 0.0, m)  # rows past R: keep the arithmetic finite
        md = m[:, None]
        mc = md * 1.4426950408889634
        s = tl.sum(tl.exp2(_exp_arg(x, md, mc, OP)), axis=1)
        if TWO:
            s += tl.sum(tl.exp2(_exp_arg(x2, md, mc, OP)), axis=1)
        if EDGES:
            s += tl.sum(tl.exp2(_exp_arg(xh, md, mc, OP)), axis=1)
            s += tl.sum(tl.exp2(_exp_arg(xt, md, mc, OP)), axis=1)
        s = tl.where(s == 0.0, 1.0, s)
    elif OP == 1:
        tot = tl.sum(x, axis=1)
        if TWO:
            tot += tl.sum(x2, axis=1)
        if EDGES:
            tot += tl.sum(xh, axis=1) + tl.sum(xt, axis=1)
        mean = tot / N
        xc = tl.where(bm, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1)
        if TWO:
            xc2 = tl.where(bm2, x2 - mean[:, None], 0.0)
            var += tl.sum(xc2 * xc2, axis=1)
        if EDGES:
            hc = tl.where(hm, xh - mean[:, None], 0.0)
            tc = tl.where(tm, xt - mean[:, None], 0.0)
            var += tl.sum(hc * hc, axis=1) + tl.sum(tc * tc, axis=1)
        inv = tl.rsqrt(var / N + eps)
    else:
        ss = tl.sum(x * x, axis=1)
        if TWO:
            ss += tl.sum(x2 * x2, axis=1)
        if EDGES:
            ss += tl.sum(xh * xh, axis=1) + tl.sum(xt * xt, axis=1)
        inv = tl.rsqrt(ss / N + eps)
    return m[:, None], s[:, None], mean[:, None], inv[:, None]


@triton.jit
def _row_out(x, mask, col, wmask, y_ptrs, w_ptr, b_ptr, m, s, mean, inv,
             OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):  # fmt: skip
    """Write one tile of y; weight/bias are read here (L1/L2 hits), not held across the row."""
    w = 0.0
    bb = 0.0
    if HAS_W:
        w = tl.load(w_ptr + col, mask=wmask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    if HAS_B:
        bb = tl.load(b_ptr + col, mask=wmask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    y = _finish(x, m, s, mean, inv, w, bb, OP, HAS_W, HAS_B)
    tl.store(y_ptrs, y.to(y_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _add_residual(x, r_ptr, h_ptr, offs, mask, HAS_R: tl.constexpr):
    """x + residual (fp32), the sum also written to h in x's dtype (the pre-norm residual stream)."""
    if HAS_R:
        x = x + tl.load(r_ptr + offs, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        tl.store(h_ptr + offs, x.to(h_ptr.dtype.element_ty), mask=mask)
    return x


@triton.jit
def _pad(OP: tl.constexpr):
    """The value masked lanes load: -inf for softmax and log-softmax (neutral for the max, exp2 of it
    0 for the sum), 0 for the norms."""
    if OP == 0 or OP == 3:
        return -float("inf")
    else:
        return 0.0


@triton.jit
def _row_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, r_ptr, h_ptr, R, NV, SV, eps, wt_ptr, bt_ptr, NPV,
    OP: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, VEC: tl.constexpr, ALIGNED: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, BLOCK2: tl.constexpr, STAGES: tl.constexpr, HAS_R: tl.constexpr = False,
    EXACT: tl.constexpr = False,
):  # fmt: skip
    # ALIGNED: N = NV * VEC and the row stride SV * VEC; else N = NV, row stride SV (== N: x and y
    # rows must have the same alignment, which build() ensures). The body is one tile of BLOCK
    # lanes, or BLOCK + BLOCK2 (5120 = 4096 + 1024): powers of two that waste fewer registers.
    # EXACT: aligned rows of exactly BLOCK + BLOCK2 and R % ROWS == 0: every lane of every tile is
    # an element, the masks constant (unmasked loads and stores, no selects).
    N = _width(NV, VEC, ALIGNED)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    idx = tl.arange(0, BLOCK)
    TWO: tl.constexpr = BLOCK2 > 0
    idx2 = BLOCK + tl.arange(0, BLOCK2 if BLOCK2 > 0 else 1)
    hidx = tl.arange(0, VEC)
    for rb in tl.range(pid, tl.cdiv(R, ROWS), nprog, num_stages=STAGES):
        rows = rb * ROWS + tl.arange(0, ROWS)
        rmask = rows < R
        if ALIGNED:
            start = rows.to(tl.int64) * SV * VEC
        else:
            start = rows.to(tl.int64) * SV
        a, nb, hd, b, end = _bounds(start, N, VEC, ALIGNED)
        if EXACT:
            bm = tl.full((ROWS, BLOCK), 1, tl.int1)
        else:
            bm = rmask[:, None] & (idx[None, :] < nb[:, None])
        x = tl.load(x_ptr + a[:, None] + idx[None, :], mask=bm, other=_pad(OP), eviction_policy="evict_first")
        x = _add_residual(x.to(tl.float32), r_ptr, h_ptr, a[:, None] + idx[None, :], bm, HAS_R)
        x2 = x
        bm2 = bm
        if TWO:
            if EXACT:
                bm2 = tl.full((ROWS, BLOCK2), 1, tl.int1)
            else:
                bm2 = rmask[:, None] & (idx2[None, :] < nb[:, None])
            x2 = tl.load(
                x_ptr + a[:, None] + idx2[None, :], mask=bm2, other=_pad(OP), eviction_policy="evict_first"
            )
            x2 = _add_residual(x2.to(tl.float32), r_ptr, h_ptr, a[:, None] + idx2[None, :], bm2, HAS_R)
        xh = x
        hm = bm
        xt = x
        tm = bm
        if not ALIGNED:
            hm = rmask[:, None] & (hidx[None, :] < hd[:, None])
            tm = rmask[:, None] & (hidx[None, :] < (end - b)[:, None])
            xh = tl.load(x_ptr + start[:, None] + hidx[None, :], mask=hm, other=_pad(OP)).to(tl.float32)
            xt = tl.load(x_ptr + b[:, None] + hidx[None, :], mask=tm, other=_pad(OP)).to(tl.float32)
            xh = _add_residual(xh, r_ptr, h_ptr, start[:, None] + hidx[None, :], hm, HAS_R)
            xt = _add_residual(xt, r_ptr, h_ptr, b[:, None] + hidx[None, :], tm, HAS_R)
        m, s, mean, inv = _row_stats(x, bm, x2, bm2, xh, hm, xt, tm, N, eps, OP, TWO, not ALIGNED)
        if ALIGNED:  # one weight row for every row: [1, BLOCK] loads, vectorized
            wm = (idx[None, :] < N) | EXACT
            _row_out(x, bm, idx[None, :], wm, y_ptr + a[:, None] + idx[None, :], w_ptr, b_ptr,
                     m, s, mean, inv, OP, HAS_W, HAS_B)  # fmt: skip
            if TWO:
                wm2 = (idx2[None, :] < N) | EXACT
                _row_out(x2, bm2, idx2[None, :], wm2, y_ptr + a[:, None] + idx2[None, :], w_ptr,
                         b_ptr, m, s, mean, inv, OP, HAS_W, HAS_B)  # fmt: skip
        else:  # the body's first column differs per row (sh = a - start < VEC): its weights are
            # row sh of the shifted tables (see shifted_table), at 16-byte aligned addresses
            sh = (a - start)[:, None] * (NPV * VEC)
            _row_out(x, bm, sh + idx[None, :], bm, y_ptr + a[:, None] + idx[None, :], wt_ptr, bt_ptr,
                     m, s, mean, inv, OP, HAS_W, HAS_B)  # fmt: skip
            if TWO:
                _row_out(x2, bm2, sh + idx2[None, :], bm2, y_ptr + a[:, None] + idx2[None, :], wt_ptr, bt_ptr,
                         m, s, mean, inv, OP, HAS_W, HAS_B)  # fmt: skip
            _row_out(xh, hm, hidx[None, :], hm, y_ptr + start[:, None] + hidx[None, :], w_ptr, b_ptr,
                     m, s, mean, inv, OP, HAS_W, HAS_B)  # fmt: skip
            tcol = (b - start)[:, None] + hidx[None, :]
            _row_out(xt, tm, tcol, tm, y_ptr + b[:, None] + hidx[None, :], w_ptr, b_ptr,
                     m, s, mean, inv, OP, HAS_W, HAS_B)  # fmt: skip


# ---- search space ----------------------------------------------------------------------------
#: elements one ``row`` program covers when rows are short (several rows per program)
ROW_TILE = 4096
#: fp32 values per thread the templates aim for: two to four 16-byte loads in flight
PER_THREAD = 16


def _warps(elems: int, lo: int = 4, hi: int = 16) -> int:
    """A power of two (Triton's num_warps must be one) near elems / PER_THREAD threads."""
    w = max(1, elems // (32 * PER_THREAD))
    return max(lo, min(hi, 1 << (w.bit_length() - 1)))


#: fp32 values per thread of a ``split`` chunk: on the H100 (``row_variants_h100.json``) chunks
#: of 8192 with 4 warps beat every other shape on every long row, 2421 GB/s on 8192 x 50257 bf16
#: against 2308 (4096, 4 warps), 1794 (8192, 16 warps: 16 per thread) and 1694 (2048, 4 warps)
SPLIT_PER_THREAD = 64


def split_warps(chunk: int) -> int:
    return _warps(chunk * PER_THREAD // SPLIT_PER_THREAD)


def split_chunk(R: int, N: int, sm: int, resident: bool) -> int | None:
    """The ``split`` chunk for rows of N: the largest (fewest partial statistics, most bytes in
    flight per thread) that still gives every SM a program, and (``resident``, the one-launch
    form) no more chunks per row than SMs; when none fills the SMs, the one that fills most.
    Lane use (N / (chunks x CHUNK)) is no longer weighed: 8192 wastes 12% of the lanes of a row
    of 50257 and was still the fastest (2048 wastes 2% and ran at 0.70x)."""
    best, best_fill = None, -1.0
    for chunk in (8192, 4096, 2048, 1024):
        S = -(-N // chunk)
        if S < 2 or (resident and S > sm):
            continue
        fill = min(1.0, R * S / sm)
        if fill >= 1.0:
            return chunk
        if fill > best_fill + 1e-9:
            best, best_fill = chunk, fill
    return best


def row_tiles(N: int, two: bool = True) -> tuple[int, int]:
    """(BLOCK, BLOCK2) lanes covering a row of N: next_pow2(N), or two powers of two when that
    holds fewer lanes (5120 -> 4096 + 1024; 11008 -> 8192 + 4096)."""
    full = next_pow2(N)
    lo = full // 2
    if not two or N <= 64 or N == full:
        return full, 0
    rest = next_pow2(N - lo)
    return (lo, rest) if lo + rest < full else (full, 0)


def configs(problem: Any, lim: Limits) -> list[tuple[str, dict[str, Any]]]:
    """At most 4 candidates, the expected best first: whole rows in registers while they fit
    (MAX_ROW) and there are rows enough to fill the SMs; longer rows stream through L2 (many rows)
    or split into cooperative chunks (fewer rows than SMs)."""
    from uhop.ops.base import ITEMSIZE

    R, N = problem.dim["R"], problem.dim["N"]
    sm = lim.sm_count
    interp = not problem.device.startswith("cuda")
    phases = 2 if interp else 1  # the interpreter runs programs in sequence: no waiting there
    out: list[tuple[str, dict[str, Any]]] = []
    chunk = split_chunk(R, N, sm, resident=phases == 1)
    split = ("split", {"CHUNK": chunk, "warps": split_warps(chunk), "phases": phases}) if chunk else None
    # stream: rows in flight (programs) x row bytes should stay well inside L2 (50 MB on H100/H200)
    row_bytes = N * ITEMSIZE[problem.dtype]
    per_sm = 2 if 2 * sm * row_bytes <= 32 * 2**20 else 1
    stream = ("stream", {"BLOCK": 8192, "warps": 8, "stages": 3, "grid": per_sm})
    if N <= MAX_ROW:
        b1, b2 = row_tiles(N)
        rows = max(1, min(next_pow2(R), ROW_TILE // b1))
        warps = _warps(rows * (b1 + b2))
        if not lim.fits(0, 32 * warps):
            warps = 4
        row = ("row", {"warps": warps, "ROWS": rows, "grid": "full", "stages": 1, "tiles": 2 if b2 else 1})
        few_rows = R * N < 2 * sm * ROW_TILE or -(-R // rows) < sm
        if split and few_rows and N >= 2048:
            out.append(split)
        one_tile = ("row", {**row[1], "tiles": 1, "warps": _warps(rows * next_pow2(N))})
        # past 8192, one power-of-two tile: first for softmax, whose two-tile forms it led by 8-12%
        # on the H100 at 12192 x 11008 (fourteenth session 0.203 vs 0.220 ms; nineteenth, bf16, 2742
        # vs 2458 GB/s) and which the fp16 case's budget then never reached in fourth place
        # (width_sweep_h100_product_nineteenth.json: 2504 GB/s, 83% of copy); ahead of the persistent
        # grid for rmsnorm (a tie); last for layernorm (0.325 against 0.195 ms,
        # width_sweep_h100_rows_fourteenth.json)
        tile_first = b2 and N > 8192 and problem.op != "layernorm"
        if tile_first and problem.op in ("softmax", "log_softmax"):
            out.append(one_tile)
        # Half the warps (twice the values per thread) first, where that stays <= 48 per thread: on
        # the H100 (row_variants_h100.json) layernorm 32768 x 5120 ran 2916 GB/s with 4 warps and
        # 1907 with 8; at 11008 8 warps led 16 (2786 vs 2706, rmsnorm 2911 vs 2883)
        if warps >= 8 and rows * (b1 + b2) // (32 * (warps // 2)) <= 48:
            half = ("row", {**row[1], "warps": warps // 2})
            out += [half, row]
            row = half  # the variants below take the first's warps (or set their own)
        else:
            out.append(row)
        if tile_first and one_tile not in out:
            out.append(one_tile)
        if -(-R // rows) > 8 * sm:  # enough row blocks for a persistent grid to pay
            out.append(("row", {**row[1], "grid": 4, "stages": 2}))
        if b2 and not tile_first:
            out.append(one_tile)
        if not b2 and b1 >= 1024 and rows * b1 * 2 <= 2 * ROW_TILE and R >= 2 * rows:  # more per program
            out.append(("row", {**row[1], "warps": _warps(2 * rows * b1, 8), "ROWS": 2 * rows}))
        if split and split not in out and N >= 2048:
            out.append(split)
    elif not split:
        out += [stream, ("stream", {**stream[1], "grid": 3 - per_sm})]
    else:  # split first, many rows or few: on the H100 it led stream on every long row (2421 vs 2004 GB/s at 8192 x 50257)
        alt = chunk // 2
        out += [split]
        # the persistent form (groups walk the rows, the next chunk in flight while a group waits;
        # polls with a nanosleep): on the H100 (row_variants_spin_h100_fourteenth.json) +7.5% at
        # 132 x 262144, +5% at 512 x 262144, +3% at 883 x 151936, level at 8192 x 50257. Not for
        # layernorm, whose two-chunk live set spills under the register cap four per SM need.
        if problem.op != "layernorm":
            out.append(("split", {**split[1], "persist": 4, "spin": 2}))
        out.append(stream)
        if alt >= 1024 and (phases == 2 or -(-N // alt) <= sm):
            out.append(("split", {"CHUNK": alt, "warps": split_warps(alt), "phases": phases, "spin": 2}))
        out.append(("split", {**split[1], "warps": 2 * split[1]["warps"]}))
    return out[:4]


def build(template: str, cfg: dict[str, Any], problem: Any) -> Any:
    """A kernel ``run(x, weight=None, bias=None) -> y`` for ``problem`` (torch tensors)."""
    return launcher(template, cfg, OPS[problem.op], float(problem.param.get("eps", 0.0)), problem.device)


def shifted_table(v: Any, vec: int, npv: int) -> Any:
    """``T[k, j] = v[k + j]`` (0 past the end), shape (vec, npv * vec): on rows whose width is not a
    multiple of the 16-byte vector, a row's aligned body starts ``k = a - start`` columns into the
    row (0 <= k < vec, different from row to row), so its weights ``v[k + j]`` would be read at
    unaligned addresses, one element at a time (layernorm 2670 x 50257 bf16 on the H100: 45% of
    copy, against 81% for softmax, which reads no weights); row ``k`` of the table holds them at
    an aligned address."""
    import torch.nn.functional as F

    flat = F.pad(v.reshape(-1), (0, npv * vec + vec - v.numel()))
    return flat.as_strided((vec, npv * vec), (1, 1)).contiguous()


class ShiftedTables:
    """A launcher's :func:`shifted_table` per weight tensor, rebuilt when the tensor changes: another
    tensor object (a freed weight's address is reused by the next allocation, so the address alone
    would serve a stale table for a new weight of the same size), another address, or a new
    version counter (an in-place update). Inference tensors, which have no version counter, get a
    fresh table per call. Like every cache of torch's keyed on versions, writes through
    ``w.data`` (which bypass the version counter) are not seen."""

    def __init__(self, keep: int = 8) -> None:
        self._got: dict[tuple, tuple[Any, Any]] = {}
        self._keep = keep

    def get(self, v: Any, vec: int, npv: int) -> Any:
        try:
            key = (id(v), v.data_ptr(), v._version, v.dtype, v.device, vec, npv)
        except RuntimeError:  # an inference tensor: no version counter
            return shifted_table(v, vec, npv)
        got = self._got.get(key)
        if got is not None and got[0]() is v:
            return got[1]
        if len(self._got) >= self._keep:
            self._got.pop(next(iter(self._got)))
        t = shifted_table(v, vec, npv)
        self._got[key] = (weakref.ref(v), t)
        return t


class SplitScratch:
    """A ``split`` launcher's counters and partials workspace, kept per (device, stream, chunks per
    row) instead of allocated per call (allocating and zeroing them cost 22 us of host time per
    call on the H100 machine, more than the whole kernel of a 17 MB softmax). The int64 counters
    are zeroed once: each launch adds S to every row's (see ``rows_long._arrive``), which holds
    only while every launch on them has the same S, hence S in the key, and while launches on
    them do not overlap, hence the stream (kernels on one stream run in order; another stream gets
    its own). The workspace is rewritten by each launch before it is read."""

    def __init__(self, keep: int = 8) -> None:
        self._got: dict[tuple, tuple[Any, Any]] = {}
        self._keep = keep

    def get(self, R: int, S: int, stride: int, device: Any) -> tuple[Any, Any]:
        import torch

        device = torch.device(device)
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
        key = (device, stream, S, stride)
        sync, ws = self._got.pop(key, (None, None))
        if sync is None or sync.numel() < R * stride:  # a new buffer is zeroed once, on this stream
            sync = torch.zeros(R * stride, device=device, dtype=torch.int64)
        if ws is None or ws.numel() < R * S * 3:
            ws = torch.empty(R * S * 3, device=device, dtype=torch.float32)
        if len(self._got) >= self._keep:
            self._got.pop(next(iter(self._got)))
        self._got[key] = (sync, ws)  # most recently used last
        return sync, ws


_row = Launcher(_row_kernel)


def launcher(template: str, cfg: dict[str, Any], op: int, eps: float, device: str) -> Any:
    """The kernel for op code ``op`` (see OPS)."""
    import torch

    from uhop.backends.triton_kernels import limits
    from uhop.backends.triton_kernels import rows_long as lk

    if template not in ("row", "split", "stream", "loop"):
        raise ValueError(f"unknown row-op template {template!r}")
    warps = cfg["warps"]
    # a register cap (ptxas .maxnreg): more programs resident per SM, so more loads in flight
    regs = {"maxnreg": int(cfg["maxnreg"])} if cfg.get("maxnreg") else {}
    sm = limits(device).sm_count
    tables = ShiftedTables()
    scratch = SplitScratch()

    def run(x, w=None, b=None, residual=None):
        """y = op(x) (op(x + residual), returning (y, x + residual), when ``residual`` is given)."""
        N = x.shape[-1]
        x2 = x.reshape(-1, N)
        if not x2.is_contiguous():  # x and y rows must share their alignment
            x2 = x2.contiguous()
        R = x2.shape[0]
        y = torch.empty_like(x2)  # contiguous (R, N); half the host time of torch.empty(shape, device=, dtype=)
        w = None if w is None else w.contiguous()
        b = None if b is None else b.contiguous()
        wt = w if w is not None else y
        bt = b if b is not None else y
        flags = {"OP": op, "HAS_W": w is not None, "HAS_B": b is not None}
        if residual is not None and (template != "row" or tuple(residual.shape) != tuple(x.shape)):
            raise ValueError(f"residual: the row template fuses one of x's shape {tuple(x.shape)}; got "
                             f"{tuple(residual.shape)} with template {template!r}")  # fmt: skip
        if template == "loop":
            lk.row_loop((R,), x2, wt, bt, y, N, N, N, eps, BLOCK=cfg["BLOCK"], num_warps=warps, **regs, **flags)
            return y.reshape(x.shape)
        vec = 16 // x2.element_size()
        aligned = N % vec == 0
        nv = N // vec if aligned else N
        flags.update(VEC=vec, ALIGNED=aligned)
        npv, wtab, btab = 1, wt, bt
        if not aligned:  # row, split and stream read weights of misaligned rows from shifted tables
            npv = triton.cdiv(N, vec)
            wtab = tables.get(w, vec, npv) if w is not None else y
            btab = tables.get(b, vec, npv) if b is not None else y
        if template == "row":
            rows = cfg["ROWS"]
            b1, b2 = row_tiles(N, cfg.get("tiles", 1) == 2)
            blocks = triton.cdiv(R, rows)
            grid = blocks if cfg["grid"] == "full" else min(blocks, int(cfg["grid"]) * sm)
            r = h = y
            if residual is not None:
                r = residual.reshape(R, N).contiguous()
                h = torch.empty_like(y)
            extra = {"num_ctas": cfg["ctas"]} if cfg.get("ctas", 1) > 1 else {}  # a cluster per program (Hopper)
            extra.update(regs)
            exact = aligned and N == b1 + b2 and R % rows == 0
            run.last = _row((grid,), x2, wt, bt, y, r, h, R, nv, nv, eps, wtab, btab, npv, ROWS=rows, BLOCK=b1, BLOCK2=b2,
                                 STAGES=cfg["stages"], HAS_R=residual is not None, EXACT=exact, num_warps=warps, **extra,
                                 **flags)  # fmt: skip
            if residual is not None:
                return y.reshape(x.shape), h.reshape(x.shape)
            return y.reshape(x.shape)
        if template == "stream":
            grid = min(R, int(cfg["grid"]) * sm)
            run.last = lk.stream((grid,), x2, wt, bt, y, R, nv, eps, wtab, btab, npv, BLOCK=cfg["BLOCK"],
                                                  STAGES=cfg["stages"], num_warps=warps, **regs, **flags)  # fmt: skip
            return y.reshape(x.shape)
        chunk = cfg["CHUNK"]
        S = triton.cdiv(N, chunk)
        # counters between rows' counters: 16 (int64) puts each in its own 128-byte line, so the
        # programs polling one row do not queue behind another's on the same L2 line (+1-5% on every
        # long row of row_variants_spin_h100_fourteenth.json)
        sstride = int(cfg.get("sync_stride", 16))
        if cfg.get("phases", 1) == 1:
            sync, ws = scratch.get(R, S, sstride, x.device)
        else:  # two launches: no counters
            ws = torch.empty(R * S * 3, device=x.device, dtype=torch.float32)
        if cfg.get("persist"):  # groups of S programs walk the rows, `persist` programs per SM
            per_sm = int(cfg["persist"])
            G = max(1, min(R, per_sm * sm // S))
            # registers for per_sm programs per SM, so that every group is resident at once
            cap = regs or {"maxnreg": min(255, 65536 // (per_sm * 32 * warps)) // 8 * 8}
            common = dict(CHUNK=chunk, SP=next_pow2(S), num_warps=warps, SPIN=cfg.get("spin", 0), SYNC=sstride, **cap, **flags)
            if cfg.get("phases", 1) == 1:
                run.last = lk.split_persist((G * S,), x2, wt, bt, y, ws, sync, R, nv, nv, S, G, eps, wtab, btab,
                                                              npv, PHASE=0, **common)  # fmt: skip
            else:
                for phase in (1, 2):
                    lk.split_persist((G * S,), x2, wt, bt, y, ws, ws, R, nv, nv, S, G, eps, wtab, btab, npv,
                                                       PHASE=phase, **common)  # fmt: skip
            return y.reshape(x.shape)
        common = dict(CHUNK=chunk, SP=next_pow2(S), num_warps=warps, SPIN=cfg.get("spin", 0), SYNC=sstride, **regs, **flags)
        if cfg.get("phases", 1) == 1:
            run.last = lk.split((R * S,), x2, wt, bt, y, ws, sync, nv, nv, S, eps, wtab, btab, npv, PHASE=0,
                                                 **common)  # fmt: skip
        else:
            for phase in (1, 2):
                lk.split((R * S,), x2, wt, bt, y, ws, ws, nv, nv, S, eps, wtab, btab, npv, PHASE=phase,
                                           **common)  # fmt: skip
        return y.reshape(x.shape)

    run.last = None  # the last launch's compiled kernel (its n_regs and n_spills, on a GPU)
    return run
