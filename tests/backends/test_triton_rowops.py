"""The row templates (``row`` one- and two-tile, ``split``, ``stream``, ``loop``) against float64
references under Triton's CPU interpreter: odd widths (head/body/tail alignment), every op code
including log-softmax, fp32/bf16/fp16, with and without weight/bias. Fresh random inputs per run.

Like ``test_triton.py``, the checks run in a ``TRITON_INTERPRET=1`` child pytest; the parent
test starts it. Shapes are small: the interpreter runs every program in Python.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

IN_CHILD = os.environ.get("TRITON_INTERPRET") == "1"

pytest.importorskip("triton")
torch = pytest.importorskip("torch")

from uhop.backends.triton_kernels import Limits  # noqa: E402
from uhop.problem import Problem  # noqa: E402

OPS = {"softmax": 0, "layernorm": 1, "rmsnorm": 2, "log_softmax": 3}
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def test_row_templates_under_interpreter():
    if IN_CHILD:
        pytest.skip("this is the interpreter child run")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


@pytest.fixture(scope="module")
def rowops():
    if not IN_CHILD:
        pytest.skip("runs in the TRITON_INTERPRET=1 child process (test_row_templates_under_interpreter)")
    from uhop.backends.triton_kernels import fix_interpreter
    from uhop.backends.triton_kernels import rowops as ro

    fix_interpreter()
    return ro


def reference(op: str, x, w, b, eps: float):
    x = x.double()
    if op == "softmax":
        y = torch.softmax(x, -1)
    elif op == "log_softmax":
        y = torch.log_softmax(x, -1)
    elif op == "layernorm":
        mu = x.mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)
    else:
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    if w is not None:
        y = y * w.double()
    if b is not None:
        y = y + b.double()
    return y


def check(ro, template, cfg, op, shape, dtype, affine=True, offset=0.0, tol=None):
    eps = 1e-5
    n = shape[-1]
    x = (torch.randn(*shape) * 3 + offset).to(dtype)
    w = torch.randn(n).to(dtype) if affine and op in ("layernorm", "rmsnorm") else None
    b = torch.randn(n).to(dtype) if affine and op == "layernorm" else None
    y = ro.launcher(template, cfg, OPS[op], eps, "cpu")(x, w, b)
    assert y.shape == x.shape and y.dtype == x.dtype
    ref = reference(op, x, w, b, eps)
    err = float((y.double() - ref).norm() / ref.norm())
    tol = TOL[dtype] if tol is None else tol
    assert err < tol, f"{template}{cfg} {op} {shape} {dtype}: relative error {err:.2e}"


TEMPLATES = [
    ("row", {"warps": 4, "ROWS": 4, "grid": "full", "stages": 1, "tiles": 2}),
    ("row", {"warps": 4, "ROWS": 2, "grid": 2, "stages": 2, "tiles": 1}),  # persistent grid
    ("row", {"warps": 4, "ROWS": 1, "grid": "full", "stages": 1, "tiles": 1, "ctas": 2}),  # a cluster per program
    ("split", {"CHUNK": 64, "warps": 4, "phases": 2}),
    ("split", {"CHUNK": 64, "warps": 4, "phases": 2, "persist": 1}),  # two groups walk the rows
    ("split", {"CHUNK": 32, "warps": 4, "phases": 2, "persist": 3, "spin": 2, "sync_stride": 1}),
    ("stream", {"BLOCK": 64, "warps": 4, "stages": 2, "grid": 1}),
    ("loop", {"BLOCK": 64, "warps": 4}),
]


@pytest.mark.parametrize(("template", "cfg"), TEMPLATES, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((5, 37), torch.bfloat16), ((3, 2, 200), torch.float32), ((6, 96), torch.float16), ((8, 64), torch.bfloat16),
     ((4, 96), torch.float32)],
)  # fmt: skip
def test_templates_odd_widths(rowops, template, cfg, op, shape, dtype):
    """37 and 200 bf16/fp32 rows start off the 16-byte grid (head, body, tail); 96 fp16 is aligned
    (one body, 96 = 64 + 32 in two tiles); 200 > 3 x 64 takes several split chunks; 8 x 64 and
    4 x 96 fill the row template's tiles exactly (EXACT: unmasked)."""
    check(rowops, template, cfg, op, shape, dtype)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize(("shape", "dtype"), [((7, 37), torch.bfloat16), ((5, 96), torch.float16), ((3, 200), torch.float32)])
def test_softmax_rows_with_minus_inf(rowops, op, shape, dtype):
    """Softmax tiles pad with -inf instead of selecting: logits filtered to -inf (top-k sampling,
    masks) in the head, body and tail of rows, one row all -inf but one element, one all -inf but
    two, against float64 on fresh inputs; every template."""
    x = (torch.randn(*shape) * 3).to(dtype)
    n = shape[-1]
    x[0, : n // 2] = float("-inf")
    x[1, 1::3] = float("-inf")
    x[2, :] = float("-inf")
    x[2, n - 1] = 1.0
    x[3 % shape[0], :] = float("-inf")
    x[3 % shape[0], [0, n // 2]] = torch.tensor([2.0, -1.0], dtype=dtype)
    ref = reference(op, x, None, None, 1e-5)
    fin = torch.isfinite(ref)
    for template, cfg in TEMPLATES:
        y = rowops.launcher(template, cfg, OPS[op], 1e-5, "cpu")(x, None, None).double()
        assert bool((y[~fin] == ref[~fin]).all()), f"{template}{cfg} {op}: -inf entries"
        err = float((y[fin] - ref[fin]).abs().max())
        assert err < 20 * TOL[dtype], f"{template}{cfg} {op} {shape} {dtype}: max error {err:.2e}"


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_of_large_logits_keeps_fp32_accuracy(rowops, op):
    """Logits around 1000 in float32: log-softmax's (x - m) * log2(e) stays within fp32 rounding of
    float64 (the FFMA form softmax uses would shift its log(sum) by up to |m| * 4e-8). Softmax's
    fma(x, log2(e), -m * log2(e)) is exact on a GPU (tests/gpu/test_triton_gpu.py); Triton's
    interpreter rounds x * log2(e) first (ulp 1.2e-4 at 1443), hence its looser bound here."""
    for template, cfg in TEMPLATES[:2]:
        x = torch.randn(6, 300) * 4 + 1000.0
        y = rowops.launcher(template, cfg, OPS[op], 1e-5, "cpu")(x, None, None).double()
        ref = reference(op, x, None, None, 1e-5)
        err = float((y - ref).abs().max())
        assert err < (2e-6 if op == "log_softmax" else 3e-5), f"{template}{cfg} {op}: max error {err:.2e}"


def test_tiny_rows_and_no_affine(rowops):
    for template, cfg in TEMPLATES:
        check(rowops, template, cfg, "layernorm", (3, 2), torch.bfloat16, affine=False)
        check(rowops, template, cfg, "rmsnorm", (2, 5), torch.float32, affine=False)
        check(rowops, template, cfg, "softmax", (4, 1), torch.float32)


def test_layernorm_large_mean_stays_accurate(rowops):
    """A mean of 1000 against a spread of 3: the split (Chan) and stream (shifted) statistics keep
    fp32 accuracy where a plain sum of squares would cancel (E[x^2] - E[x]^2 in fp32 loses
    percents of the variance here). The bound is fp32's epsilon times the condition |mean| / std ~ 333
    (2e-5), with a 5x margin: the fp32 mean itself is rounded (a CI run measured 2.24e-5)."""
    for template, cfg in TEMPLATES:
        check(rowops, template, cfg, "layernorm", (3, 150), torch.float32, offset=1000.0, tol=1e-4)


def _problem(op, R, N, dtype="bfloat16", device="cuda:0"):
    return Problem.make(op, {"R": R, "N": N}, dtype, device=device, array="torch")


def test_search_space_is_small_and_pruned_by_width():
    """<= 4 candidates per problem; whole rows in registers up to MAX_ROW, long rows split into
    chunks first (streaming next); split never has more chunks per row than SMs."""
    from uhop.backends.triton_kernels import rowops as ro

    h200 = Limits(232448, 1024, 132, (9, 0))
    for R, N in [
        (2**21, 64),
        (134217, 1000),
        (32768, 5120),
        (8192, 50257),
        (883, 151936),
        (16, 262144),
        (1, 7),
    ]:
        cands = ro.configs(_problem("softmax", R, N), h200)
        assert 1 <= len(cands) <= 4, (R, N, cands)
        first = cands[0][0]
        if N <= ro.MAX_ROW and R >= h200.sm_count * 4:
            assert first == "row"
        if N > ro.MAX_ROW:  # split first: chunks of 8192 with 4 warps led on every long row on the H100
            assert first == "split" and cands[0][1]["CHUNK"] == 8192 and cands[0][1]["warps"] == 4, cands
            assert "stream" in [t for t, _ in cands]
            # then its persistent form (softmax, rmsnorm; not layernorm: it spills under the cap)
            assert cands[1] == ("split", {**cands[0][1], "persist": 4, "spin": 2}), cands
            ln = ro.configs(_problem("layernorm", R, N), h200)
            assert not any(c.get("persist") for _, c in ln), ln
        for t, cfg in cands:
            assert cfg["warps"] & (cfg["warps"] - 1) == 0, cfg  # num_warps: a power of two (5120 once gave 10)
            if t == "split" and cfg["phases"] == 1:
                assert -(-N // cfg["CHUNK"]) <= h200.sm_count
    assert ro.row_tiles(5120) == (4096, 1024) and ro.row_tiles(11008) == (8192, 4096)
    # past 8192 wide: softmax tries one power-of-two tile first (it led the two-tile forms by 8-12%
    # on the H100), rmsnorm before the persistent grid, layernorm last (1.7x slower there)
    for op, at in (("softmax", 0), ("rmsnorm", 2), ("layernorm", 3)):
        cands = ro.configs(_problem(op, 12192, 11008), h200)
        tiles = [c.get("tiles") for t, c in cands]
        assert tiles.index(1) == at and len(cands) <= 4, (op, cands)
        assert len(set(map(str, cands))) == len(cands), cands
    assert ro.row_tiles(1000) == (1024, 0) and ro.row_tiles(4096) == (4096, 0)
    # the interpreter (device "cpu") gets the two-launch split: its programs run one at a time
    cpu = ro.configs(_problem("softmax", 3, 40000, device="cpu"), Limits(232448, 1024, 4, (9, 0)))
    assert all(c.get("phases", 2) == 2 for t, c in cpu if t == "split")


@pytest.mark.parametrize("op", ["rmsnorm", "layernorm", "softmax"])
@pytest.mark.parametrize(("shape", "dtype"), [((5, 37), torch.bfloat16), ((4, 96), torch.float32)])
def test_row_fused_residual_add(rowops, op, shape, dtype):
    """op(x + residual) and the sum itself (the pre-norm residual stream), in one pass."""
    n = shape[-1]
    cfg = {"warps": 4, "ROWS": 2, "grid": "full", "stages": 1, "tiles": 2}
    x, r = torch.randn(*shape).to(dtype), torch.randn(*shape).to(dtype)
    w = torch.randn(n).to(dtype) if op != "softmax" else None
    y, h = rowops.launcher("row", cfg, OPS[op], 1e-5, "cpu")(x, w, None, residual=r)
    s = x.double() + r.double()
    torch.testing.assert_close(h.double(), s, rtol=TOL[dtype], atol=TOL[dtype])
    ref = reference(op, s, w, None, 1e-5)
    assert float((y.double() - ref).norm() / ref.norm()) < TOL[dtype]
    with pytest.raises(ValueError, match="residual"):
        rowops.launcher("stream", {"BLOCK": 64, "warps": 4, "stages": 1, "grid": 1}, 0, 0.0, "cpu")(
            x, residual=r
        )


def test_shifted_weight_tables_and_their_cache():
    """Misaligned rows read their weights from row k = a - start of a shifted table (aligned
    loads); the launcher's cache rebuilds it when the weight is updated in place."""
    from uhop.backends.triton_kernels.rowops import ShiftedTables, shifted_table

    w = torch.randn(37)
    t = shifted_table(w, 8, 5)
    assert t.shape == (8, 40) and t.is_contiguous()
    for k in range(8):
        torch.testing.assert_close(t[k, : 37 - k], w[k:])
        assert not t[k, 37 - k :].any()
    cache = ShiftedTables()
    first = cache.get(w, 8, 5)
    assert cache.get(w, 8, 5) is first
    w.mul_(2)  # in place: a new version
    torch.testing.assert_close(cache.get(w, 8, 5)[3, :34], w[3:])
    # a new weight of the same size at a freed one's address (the caching allocator's usual reuse):
    # its own table, never the old tensor's
    mem = torch.randn(37)
    old = mem.data  # a tensor over mem's storage, version 0
    cache.get(old, 8, 5)
    del old
    mem.data.copy_(torch.randn(37))  # the memory is rewritten, as a new allocation's owner would
    new = mem.data  # another tensor object at the same address, version 0 again
    assert new.data_ptr() == mem.data_ptr() and new._version == 0
    torch.testing.assert_close(cache.get(new, 8, 5)[2, :35], new[2:])
    with torch.inference_mode():
        wi = torch.randn(37)  # no version counter: a table per call
        torch.testing.assert_close(cache.get(wi, 8, 5)[1, :36], wi[1:])


def test_split_scratch_is_kept_per_chunk_count_and_grows():
    """The one-launch split's counters are reused (never re-zeroed: launches add S per row, so a
    buffer serves one S only), grown zeroed when more rows come, one workspace per key."""
    from uhop.backends.triton_kernels.rowops import SplitScratch

    sc = SplitScratch(keep=2)
    sync, ws = sc.get(10, 7, 16, "cpu")
    assert sync.dtype == torch.int64 and sync.numel() == 160 and not sync.any() and ws.numel() == 210
    sync.add_(7)  # what one launch leaves behind
    again, ws2 = sc.get(4, 7, 16, "cpu")
    assert again.data_ptr() == sync.data_ptr() and ws2.data_ptr() == ws.data_ptr() and int(again[0]) == 7
    other, _ = sc.get(4, 5, 16, "cpu")  # another chunk count: its own, zeroed counters
    assert other.data_ptr() != sync.data_ptr() and not other.any()
    grown, _ = sc.get(40, 7, 16, "cpu")  # more rows: a new, zeroed buffer
    assert grown.numel() == 640 and not grown.any()
    sc.get(1, 3, 16, "cpu")  # keep=2: the least recently used key goes
    assert len(sc._got) == 2
