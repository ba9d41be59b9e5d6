"""Triton templates and torch vendor candidates on a real CUDA device (H100 in practice).

Every candidate either validates against the float64 reference or fails to compile (a config
the compiler rejects is a recorded, harmless outcome); a wrong result is a bug. Skipped, with
the reason, where torch sees no CUDA device.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
    ),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="GPU tests, not the interpreter"),
]

from uhop import backends as bk  # noqa: E402
from uhop.measure.validate import ValidationSet, check_kernel  # noqa: E402
from uhop.problem import Problem  # noqa: E402

DEV = "cuda:0"


def _all_candidates(backend_name, op, dims, dtype, params=None, arity=None, limit=None):
    b = bk.get(backend_name)
    assert b.available, b.availability
    p = Problem.make(op, dims, dtype, params, arity=arity, device=DEV, array="torch")
    assert b.supports(p)
    vset = ValidationSet(p, trials=2)
    ok, compile_errors = [], []
    for cand in b.candidates(p)[:limit]:
        try:
            k = b.compile(cand, p)
        except Exception as exc:  # a compile failure is recorded by the tuner, not a wrong answer
            compile_errors.append((cand.id, repr(exc)[:200]))
            continue
        v = check_kernel(k, vset, "torch", DEV, torch.cuda.synchronize)
        not_applicable = "No available kernel" in v.reason  # a pinned SDPA backend that declines the shape
        if v.status == "crash" and (
            "resources" in v.reason or "shared memory" in v.reason.lower() or not_applicable
        ):
            compile_errors.append((cand.id, v.reason))
            continue
        assert v.ok, f"{cand.id} on {p.describe()}: {v.status} {v.reason}"
        ok.append(cand.id)
    assert ok, f"no candidate validated for {p.describe()}; compile errors: {compile_errors}"
    return ok, compile_errors


@pytest.mark.parametrize(
    ("m", "n", "k", "dtype", "act", "arity"),
    [
        (512, 512, 512, "bfloat16", "none", 2),
        (300, 257, 129, "bfloat16", "gelu", 3),  # misaligned: padded TMA and pointer kernels
        (1024, 1024, 256, "float16", "relu", 3),
        (777, 333, 100, "float32", "silu", 3),
        (16, 1024, 1024, "bfloat16", "none", 2),  # skinny: weight-read bound configs
        (1024, 1024, 64, "bfloat16", "none", 2),  # short K: output-write bound configs
    ],
)
def test_matmul_every_candidate(m, n, k, dtype, act, arity):
    _all_candidates("triton", "matmul", {"B": 1, "M": m, "N": n, "K": k}, dtype, {"activation": act}, arity)
    _all_candidates("torch", "matmul", {"B": 1, "M": m, "N": n, "K": k}, dtype, {"activation": act}, arity)


def test_matmul_batched():
    _all_candidates(
        "triton", "matmul", {"B": 4, "M": 100, "N": 64, "K": 72}, "float16", {"activation": "none"}, 2
    )


@pytest.mark.parametrize(("dims", "act"), [((8, 300, 257, 129), "gelu"), ((4, 1024, 1024, 256), "gelu_tanh")])
def test_matmul_with_a_batched_b(dims, act):
    """b (B, K, N) is its own problem (batched_b): every Triton and torch candidate validates on
    it (no cuBLASLt epilogue, no padded cuBLAS, no TMA: they take b 2-D)."""
    B, M, N, K = dims
    d = {"B": B, "M": M, "N": N, "K": K}
    for name in ("triton", "torch"):
        ok, _ = _all_candidates(name, "matmul", d, "bfloat16", {"activation": act, "batched_b": True}, 3)
        assert not any("lt_epilogue" in c or "tma" in c or "padmm" in c for c in ok), ok


@pytest.mark.parametrize("op", ["softmax", "layernorm", "rmsnorm", "log_softmax"])
@pytest.mark.parametrize(
    ("r", "n"), [(1000, 1000), (4096, 4096), (3, 50000), (64, 7), (8, 50257), (300, 5120), (140, 20001)]
)
def test_rowops(op, r, n):
    arity = {"softmax": 1, "layernorm": 3, "rmsnorm": 2, "log_softmax": 1}[op]
    _all_candidates("triton", op, {"R": r, "N": n}, "bfloat16", arity=arity)


@pytest.mark.parametrize("template", ["row", "split", "split-persist", "split-spin", "stream"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_row_templates_log_softmax_and_one_launch_split(template, dtype):
    """Every row template, log-softmax included (no op definition yet: reached via the
    launcher), the split template in its one-launch forms (waiting on siblings: GPU only), the
    persistent one included (groups walking rows, loads of the next row in flight)."""
    from uhop.backends.triton_kernels import rowops as ro

    cfg = {
        "row": {"warps": 8, "ROWS": 1, "grid": "full", "stages": 1, "tiles": 2},
        "split": {"CHUNK": 2048, "warps": 4, "phases": 1},
        "split-persist": {"CHUNK": 2048, "warps": 4, "phases": 1, "persist": 4, "spin": 2},
        "split-spin": {"CHUNK": 2048, "warps": 4, "phases": 1, "spin": 1, "sync_stride": 1},
        "stream": {"BLOCK": 2048, "warps": 8, "stages": 3, "grid": 1},
    }[template]
    dt = getattr(torch, dtype)
    for n in (5120, 11001):
        x = torch.randn(150, n, device=DEV, dtype=dt) * 4
        for op, ref in ((3, torch.log_softmax), (0, torch.softmax)):
            y = ro.launcher(template.split("-")[0], cfg, op, 0.0, DEV)(x)
            r = ref(x.double(), -1)
            err = float((y.double() - r).norm() / r.norm())
            assert err < (1e-5 if dtype == "float32" else 1e-2), (template, dtype, n, op, err)


@pytest.mark.parametrize("op", [0, 3])
@pytest.mark.parametrize("n", [1000, 4096, 11008])
def test_row_softmax_of_large_logits_keeps_fp32_accuracy(op, n):
    """float32 logits around 1000 (ulp 6e-5): the row kernel's exp argument (an FMA for softmax)
    keeps the result within a few fp32 roundings of float64."""
    from uhop.backends.triton_kernels import rowops as ro

    x = torch.randn(64, n, device=DEV, dtype=torch.float32) * 4 + 1000.0
    for cfg in ({"warps": 8, "ROWS": 1, "grid": "full", "stages": 1, "tiles": 1},
                {"warps": 8, "ROWS": 1, "grid": 4, "stages": 2, "tiles": 2}):  # fmt: skip
        y = ro.launcher("row", cfg, op, 0.0, DEV)(x).double()
        r = (torch.softmax if op == 0 else torch.log_softmax)(x.double(), -1)
        err = float((y - r).abs().max())
        assert err < (1e-6 if op == 0 else 4e-6), (op, n, cfg, err)


@pytest.mark.parametrize("template", ["row", "split", "split-persist", "stream", "loop"])
@pytest.mark.parametrize("n", [1000, 11008, 50257])
def test_row_templates_on_filtered_logits(template, n):
    """Logits filtered to their top 50 (the rest -inf), as sampling does, through every row template
    (the row kernel's -inf padding, the online max/sum of loop and stream, split's partials from
    chunks that hold only -inf) against float64: no NaN, the -inf entries exactly 0 (softmax) and
    -inf (log-softmax)."""
    from uhop.backends.triton_kernels import rowops as ro

    if template == "row" and n > ro.MAX_ROW:
        pytest.skip(f"rows of {n} are past the row template's {ro.MAX_ROW}")
    cfg = {
        "row": {"warps": 8, "ROWS": 1, "grid": "full", "stages": 1, "tiles": 1},
        "split": {"CHUNK": 2048, "warps": 4, "phases": 1},
        "split-persist": {"CHUNK": 2048, "warps": 4, "phases": 1, "persist": 4, "spin": 2},
        "stream": {"BLOCK": 2048, "warps": 8, "stages": 3, "grid": 1},
        "loop": {"BLOCK": 2048, "warps": 8},
    }[template]
    x = torch.randn(64, n, device=DEV, dtype=torch.bfloat16) * 4
    keep = x.float().topk(50, dim=-1).indices
    x = torch.full_like(x, float("-inf")).scatter(-1, keep, x.gather(-1, keep))
    for op, fn in ((0, torch.softmax), (3, torch.log_softmax)):
        y = ro.launcher(template.split("-")[0], cfg, op, 0.0, DEV)(x).double()
        r = fn(x.double(), -1)
        fin = torch.isfinite(r)
        assert not bool(torch.isnan(y).any()), (template, n, op)
        assert bool((y[~fin] == r[~fin]).all()) and bool((y[r == 0] == 0).all()), (template, n, op)
        err = float((y[fin] - r[fin]).norm() / r[fin].norm())
        assert err < 1e-2, (template, n, op, err)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_elementwise(dtype):
    _all_candidates("triton", "elementwise", {"N": 1_000_003}, dtype, {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"})
    _all_candidates("triton", "elementwise", {"N": 4097}, dtype,
                    {"expr": "gelu(x0)+tanh(x1)*pow(abs(x0)+1.0, 2.5)-maximum(x1, 0.1)"})  # fmt: skip


@pytest.mark.parametrize(
    ("bcast", "reduce", "r", "c", "dtypes"),
    [
        ("", "mean", 257, 50257, ""),  # odd width: an aligned body per row, element-wise head and tail
        ("frs", "sum", 64, 4104, ""),  # 16-byte aligned rows of a width not a multiple of 16
        ("", "max", 33, 20011, ""),
        ("", "sum", 3, 70001, ""),  # few long rows: columns split over programs
        ("fr", "max", 100, 5, ""),  # rows shorter than a vector
        ("fff", "sum", 40, 1001, "bfloat16,float32,float32"),  # mixed input dtypes
        ("", "sum", 64, 4096, ""),  # whole tiles of whole rows: the unmasked loop (and approx first)
        ("", "mean", 3, 65536, ""),  # unmasked, columns split over programs
    ],
)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_elementwise_reductions_at_odd_widths(bcast, reduce, r, c, dtypes, dtype):
    params = {"expr": "sigmoid(x0*x1)*x0-x2+0.5" if len(bcast) != 2 else "x0*x1", "bcast": "" if bcast == "fff" else bcast,
              "reduce": reduce, **({"dtypes": dtypes} if dtypes else {})}  # fmt: skip
    arity = 2 if len(bcast) == 2 else 3
    _all_candidates("triton", "elementwise", {"N": r * c, "C": c}, "float32" if dtypes else dtype, params, arity=arity)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("expr", ["x0*sigmoid(x0)", "exp(x0*0.5-2.0)", "silu(x0)*0.5+sigmoid(x0)"])
def test_elementwise_approx_reduction_matches_precise(expr, dtype):
    """The approx rowsum (single-instruction exp and sigmoid) against float64 on fresh inputs over
    the whole range: large magnitudes (sigmoid's saturation, exp's overflow to inf) and NaN in
    rows of their own, next to the precise kernel of the same shape."""
    from uhop.backends.triton import _family

    r, c = 64, 4096
    p = Problem.make("elementwise", {"N": r * c, "C": c}, dtype, {"expr": expr, "reduce": "sum"}, arity=1,
                     device=DEV, array="torch")  # fmt: skip
    fam = _family("elementwise")
    cfg = {"ROWS": 1, "BLOCK": 1024, "warps": 4}
    approx, precise = fam.build("rowsum", {**cfg, "approx": 1}, p), fam.build("rowsum", cfg, p)
    x = torch.randn(r, c, device=DEV, dtype=getattr(torch, dtype)) * 4
    x[1, 7], x[2, 9], x[3, 11] = 100.0, -100.0, float("nan")
    x[4, :8] = 200.0  # exp overflows fp32: the sum inf in both
    ref = torch.tensor([eval(expr, {"x0": row.double(), "sigmoid": torch.sigmoid, "exp": torch.exp,
                                    "silu": torch.nn.functional.silu}).sum().item() for row in x])  # fmt: skip
    ref = ref.to(getattr(torch, dtype)).double()  # rounded to the output's dtype (inf past fp16's range)
    ya, yp = approx(x).double().cpu(), precise(x).double().cpu()
    same_nan = torch.isnan(ya) == torch.isnan(ref)
    assert bool(same_nan.all()) and bool((torch.isnan(yp) == torch.isnan(ref)).all())
    fin = torch.isfinite(ref)
    assert bool((ya[~fin].nan_to_num() == ref[~fin].nan_to_num()).all())
    tol = 1e-5 if dtype == "float32" else 1e-2
    for y in (ya, yp):
        err = ((y[fin] - ref[fin]).abs() / ref[fin].abs().clamp_min(1.0)).max().item()
        assert err < tol, (expr, dtype, err)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("b", "s", "l", "d"), [(4, 256, 256, 64), (2, 200, 130, 128), (3, 77, 77, 32)])
def test_attention(causal, b, s, l, d):  # noqa: E741
    _all_candidates(
        "triton", "attention", {"B": b, "S": s, "L": l, "D": d, "E": d}, "bfloat16", {"causal": causal}
    )
    _all_candidates(
        "torch", "attention", {"B": b, "S": s, "L": l, "D": d, "E": d}, "bfloat16", {"causal": causal}
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("b", "g", "s", "d"), [(32, 4, 256, 128), (12, 3, 200, 64)])
def test_attention_grouped_query(causal, b, g, s, d):
    """kv_groups (Llama 3's 4 query heads per k/v head): every Triton and torch candidate (SDPA's
    enable_gqa, pinned to flash / cuDNN / efficient where those take it) against float64."""
    dims, params = {"B": b, "S": s, "L": s, "D": d, "E": d}, {"causal": causal, "kv_groups": g}
    _all_candidates("triton", "attention", dims, "bfloat16", params)
    _all_candidates("torch", "attention", dims, "bfloat16", params)


def test_conv2d():
    dims = {"N": 2, "C": 32, "H": 15, "W": 15, "K": 48, "R": 3, "S": 3}
    _all_candidates("triton", "conv2d", dims, "bfloat16", {"stride": 1, "padding": 1}, 3)
    _all_candidates("torch", "conv2d", dims, "bfloat16", {"stride": 1, "padding": 1}, 3)


def test_dispatch_keeps_cuda_tensors_on_device():
    import uhop
    from uhop.config import override

    x = torch.randn(64, 1000, device=DEV, dtype=torch.bfloat16)
    with override(tune_budget_s=20.0, validation_trials=1):
        y = uhop.ops.softmax(x)
    assert y.device == x.device and y.dtype == x.dtype
    torch.testing.assert_close(y.float(), torch.softmax(x.float(), -1), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("persist", [0, 4])
def test_split_counters_carry_over_launches_and_streams(persist):
    """The one-launch split keeps its int64 counters across launches (never re-zeroed: each launch
    adds its S per row) and per stream: many launches of changing shapes, chunk counts and row
    counts, on two streams without synchronizing between them, all against float64."""
    from uhop.backends.triton_kernels import rowops as ro

    cfg = {"CHUNK": 2048, "warps": 4, "phases": 1, "spin": 2, **({"persist": persist} if persist else {})}
    k = ro.launcher("split", cfg, 0, 0.0, DEV)
    streams = [torch.cuda.current_stream(), torch.cuda.Stream()]
    jobs = []
    for i in range(30):
        R, N = ((7, 20000), (3, 50257), (11, 9000), (200, 4099))[i % 4]
        x = torch.randn(R, N, device=DEV, dtype=torch.bfloat16) * 3
        s = streams[i % 2]
        s.wait_stream(streams[0])  # x is made on the default stream
        with torch.cuda.stream(s):
            y = k(x)
        jobs.append((x, y))
    torch.cuda.synchronize()
    for x, y in jobs:
        r = torch.softmax(x.double(), -1)
        err = float((y.double() - r).norm() / r.norm())
        assert err < 1e-2, (tuple(x.shape), err)


@pytest.mark.parametrize("template,cfg", [
    ("row", {"ROWS": 1, "grid": "full", "stages": 1, "tiles": 1, "warps": 8}),
    ("split", {"CHUNK": 4096, "warps": 4, "phases": 1}),
])  # fmt: skip
def test_new_weights_at_a_reused_address_get_their_own_tables(template, cfg):
    """A row launcher at a misaligned width, called each time with another weight tensor at the
    same address with version 0 and new values, as the caching allocator hands a freed weight's
    block to the next one (made here deterministically: fresh ``.data`` views of one buffer, whose
    writes bypass the version counter): every call reads its own weights' shifted table."""
    from uhop.backends.triton_kernels import rowops as ro

    k = ro.launcher(template, cfg, ro.OPS["layernorm"], 1e-5, DEV)
    mw, mb = (torch.empty(5001, device=DEV, dtype=torch.bfloat16) for _ in range(2))
    for R in (7, 9, 16, 17):
        mw.data.normal_()
        mb.data.normal_()
        w, b = mw.data, mb.data  # new tensor objects: same addresses, version 0
        assert w._version == 0 and w.data_ptr() == mw.data_ptr()
        x = torch.randn(R, 5001, device=DEV, dtype=torch.bfloat16) * 3
        r = torch.nn.functional.layer_norm(x.double(), (5001,), w.double(), b.double(), 1e-5)
        err = float((k(x, w, b).double() - r).norm() / r.norm())
        assert err < 1e-2, (R, err)
        del w, b
