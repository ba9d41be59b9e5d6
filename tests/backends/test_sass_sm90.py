"""What UHOP's Triton kernels cost in instruction issues, compiled for sm_90 on this CPU.

An H200 moving 4.2 TB/s over 132 SMs at 1.98 GHz gives each SM about 16 bytes per clock, and an SM
issues 4 warp instructions (128 thread instructions) per clock: a kernel reading bf16 once has
about 16 instructions per element before issue, not memory, bounds it, one that reads and writes
about 32. On the H200 the row kernels' measured share of copy fell as their count rose (softmax
over 4096: 16.5 per element, 92%; over 11008 in one 16384-lane tile: 25.7, 76%; layernorm over
11008: 27.5, 81%; rmsnorm: 18.2, 95%; ``width_sweep_h200_product_twentysixth.json``). These tests
pin the counts the kernels have now, so that a change which adds instructions shows here."""

from __future__ import annotations

import pytest
import sm90

why = sm90.skip_reason()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


def _per_element(listing: str, elems_per_thread: float, loop: bool = False) -> tuple[float, float]:
    ops = sm90.opcodes(listing, loop)
    return sum(ops.values()) / elems_per_thread, ops["MUFU"] / elems_per_thread


ROW_SIG = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16", "y_ptr": "*bf16", "r_ptr": "*bf16", "h_ptr": "*bf16",
           "R": "i32", "NV": "i32", "SV": "i32", "eps": "fp32", "wt_ptr": "*bf16", "bt_ptr": "*bf16", "NPV": "i32"}  # fmt: skip
ROW_PTRS = tuple(k for k, v in ROW_SIG.items() if v.startswith("*"))


@pytest.mark.parametrize(
    ("op", "n", "block", "block2", "warps", "most"),
    [(0, 4096, 4096, 0, 4, 13.0), (0, 11008, 16384, 0, 16, 20.0), (0, 11008, 8192, 4096, 16, 18.5),
     (3, 4096, 4096, 0, 4, 14.5)],
)  # fmt: skip
def test_softmax_row_kernel_issues_per_element(op, n, block, block2, warps, most):
    """Softmax tiles padded with -inf (no selects), one FFMA and one ex2 per element, one division
    per row: 16.5 -> 12.2 instructions per element over 4096, 25.7 -> 19.3 over 11008 in one tile
    (Triton 3.6). Whole kernel (one row per program), per element of the row."""
    from uhop.backends.triton_kernels import rowops

    const = {"OP": op, "HAS_W": False, "HAS_B": False, "VEC": 8, "ALIGNED": True, "ROWS": 1, "BLOCK": block,
             "BLOCK2": block2, "STAGES": 1, "HAS_R": False, "EXACT": False}  # fmt: skip
    listing = sm90.sass(rowops._row_kernel, ROW_SIG, const, ROW_PTRS, warps)
    per, mufu = _per_element(listing, n / (32 * warps))
    assert per <= most, per
    assert mufu * n / (block + block2) <= 1.1  # one ex2 per lane: the sum's exp reused for the output


@pytest.mark.parametrize(("op", "n", "block", "block2", "warps"), [(1, 5120, 4096, 1024, 4), (1, 4096, 4096, 0, 8), (2, 4096, 4096, 0, 8)])
def test_exact_tiles_drop_the_masks(op, n, block, block2, warps):
    """Aligned rows of exactly the tiles' lanes (4096, 5120 = 4096 + 1024) with R % ROWS == 0 load
    and store unmasked (EXACT): layernorm over 5120 18.0 -> 14.8 instructions per element."""
    from uhop.backends.triton_kernels import rowops

    counts = []
    for exact in (False, True):
        const = {"OP": op, "HAS_W": True, "HAS_B": op == 1, "VEC": 8, "ALIGNED": True, "ROWS": 1, "BLOCK": block,
                 "BLOCK2": block2, "STAGES": 1, "HAS_R": False, "EXACT": exact}  # fmt: skip
        counts.append(_per_element(sm90.sass(rowops._row_kernel, ROW_SIG, const, ROW_PTRS, warps), n / (32 * warps))[0])
    assert counts[1] <= counts[0] - 0.9, counts


def _rowsum(expr: str, approx: bool, even: bool, block: int = 1024) -> tuple[float, float]:
    """(instructions, MUFU) per element in the loop of a rowsum over one bf16 input, 4 warps,
    counted per 16-byte load (8 elements; ptxas may unroll the loop)."""
    from uhop.backends.triton_kernels import elementwise as ew
    from uhop.ops import expr as ex

    fn = ew.load_kernel(ex.parse(expr), 1, "", "sum", approx)
    sig = {"x0_ptr": "*bf16", "out_ptr": "*bf16", "R": "i32", "C": "i32", "SPAN": "i32"}
    const = {"ROWS": 1, "BLOCK": block, "PARTIAL": False, "VEC": 8, "EDGES": False, "EVEN": even}
    ops = sm90.opcodes(sm90.sass(fn, sig, const, ("x0_ptr", "out_ptr", "C", "SPAN")), loop=True)
    elems = 8 * ops["LDG"]
    return sum(ops.values()) / elems, ops["MUFU"] / elems


def test_rowsum_issues_per_element(uhop_home):
    """The width sweep's ``x0*sigmoid(x0)`` sum over 32768 x 4096 bf16 ran at 66% of the H200's
    copy with Triton's sigmoid and masked tiles (18.4 instructions per element); unmasked whole
    tiles with the approx forms take 7.6, their two MUFU instructions per element (ex2, rcp) what
    remains at the copy rate (16 per SM per clock)."""
    precise, p_mufu = _rowsum("x0*sigmoid(x0)", False, even=False)
    fast, f_mufu = _rowsum("x0*sigmoid(x0)", True, even=True)
    assert f_mufu == p_mufu == 2
    assert fast <= 9 and precise >= 16, (fast, precise)
    even, _ = _rowsum("x0*x0", False, even=True)  # a plain sum of squares: about half the masked loop's
    masked, _ = _rowsum("x0*x0", False, even=False)
    assert even < 0.7 * masked, (even, masked)
