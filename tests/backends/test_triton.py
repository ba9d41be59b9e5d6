"""Every Triton template against the float64 reference, on CPU through Triton's interpreter
(``TRITON_INTERPRET=1``): small shapes, odd sizes (1, primes, non-multiples of the tiles), every
dtype the backend serves. Fresh random inputs per draw; no mocks.

Triton reads ``TRITON_INTERPRET`` when it is imported (its own library functions are jit'd then),
and setting it in this process would also offer the Triton backend to every other CPU test. So
the tests run in a child pytest process with the variable set; in the parent, one test starts
that child and the rest are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

IN_CHILD = os.environ.get("TRITON_INTERPRET") == "1"

pytest.importorskip("triton")
torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from uhop.measure.validate import ValidationSet, check_kernel  # noqa: E402
from uhop.problem import Problem  # noqa: E402


def test_templates_under_interpreter():
    """Parent side: run this file in a TRITON_INTERPRET=1 child and require it to pass."""
    if IN_CHILD:
        pytest.skip("this is the interpreter child run")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


@pytest.fixture(scope="module")
def interpreter():
    if not IN_CHILD:
        pytest.skip("runs in the TRITON_INTERPRET=1 child process (test_templates_under_interpreter)")
    from uhop import backends as bk

    return bk.get("triton")


def _check(backend, op, dims, dtype, params=None, arity=None, template=None, cfg=None, limit=3):
    p = Problem.make(op, dims, dtype, params, arity=arity, device="cpu", array="torch")
    vset = ValidationSet(p, trials=1)
    if template is not None:
        from uhop.backends.triton import _family

        kernels = [(f"{template}{cfg}", _family(op).build(template, cfg, p))]
    else:
        cands = backend.candidates(p)
        assert cands, f"no candidates for {p.describe()}"
        # the first few, plus the first of every other template
        pick = cands[:limit] + [c for i, c in enumerate(cands) if c.template not in {x.template for x in cands[:i]}]
        kernels = [(c.id, backend.compile(c, p)) for c in dict.fromkeys(pick)]
    for name, k in kernels:
        v = check_kernel(k, vset, "torch", "cpu")
        assert v.ok, f"{name} on {p.describe()}: {v.status} {v.reason}"


def test_available_under_interpreter(interpreter):
    assert interpreter.available, interpreter.availability
    p = Problem.make("softmax", {"R": 2, "N": 8}, "float32", device="cpu", array="torch")
    assert interpreter.supports(p)
    assert not interpreter.supports(Problem.make("softmax", {"R": 2, "N": 8}, "float64", device="cpu", array="torch"))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.sampled_from([1, 7, 37, 64, 97]),
    n=st.sampled_from([1, 5, 41, 64, 130]),
    k=st.sampled_from([1, 3, 29, 64, 77]),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    act=st.sampled_from(["none", "relu", "gelu", "silu"]),
    bias=st.booleans(),
)
def test_matmul_ptr_any_shape(interpreter, m, n, k, dtype, act, bias):
    cfg = {"BM": 32, "BN": 32, "BK": 16, "GM": 4, "warps": 4, "stages": 2, "prec": "ieee"}
    _check(interpreter, "matmul", {"B": 1, "M": m, "N": n, "K": k}, dtype, {"activation": act},
           3 if bias else 2, "ptr", cfg)  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("m", "n", "k", "pad"), [(70, 72, 40, False), (67, 41, 43, True), (33, 1, 9, True)])
@pytest.mark.parametrize("ws", [False, True])
def test_matmul_tma_persistent(interpreter, dtype, m, n, k, pad, ws):
    step = 4 if dtype == "float32" else 8
    if not pad and (k % step or n % step):
        pytest.skip("TMA without padding needs 16-byte aligned rows")
    cfg = {"BM": 32, "BN": 32, "BK": 16, "GM": 2, "warps": 4, "stages": 2, "ws": ws, "pad": pad, "prec": "ieee"}
    _check(interpreter, "matmul", {"B": 1, "M": m, "N": n, "K": k}, dtype, {"activation": "gelu"}, 3, "tma", cfg)


@pytest.mark.parametrize(("m", "n", "k"), [(67, 33, 43), (40, 72, 24), (9, 65, 8)])
def test_matmul_tma_split_ragged_columns(interpreter, m, n, k):
    """The bulk on full column tiles, the ragged rest (n % BN) in a narrow second launch."""
    cfg = {"BM": 32, "BN": 32, "BK": 16, "GM": 2, "warps": 4, "stages": 2, "pad": True, "prec": "ieee", "split": 16}
    _check(interpreter, "matmul", {"B": 1, "M": m, "N": n, "K": k}, "bfloat16", {"activation": "relu"}, 3, "tma", cfg)
    _check(interpreter, "matmul", {"B": 1, "M": m, "N": n, "K": k}, "float32", {"activation": "none"}, 2, "tma", cfg)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("m", "n", "k", "act", "arity"), [(67, 41, 43, "gelu", 3), (5, 17, 9, "none", 2), (1, 3, 1, "relu", 3)])
def test_matmul_padmm_misaligned(interpreter, dtype, m, n, k, act, arity):
    """Pad (Triton) + aligned GEMM + strided view of the padded output, for misaligned rows."""
    _check(interpreter, "matmul", {"B": 1, "M": m, "N": n, "K": k}, dtype, {"activation": act}, arity, "padmm", {"to": 16})
    mis = Problem.make("matmul", {"B": 1, "M": 4095, "N": 4097, "K": 4093}, "bfloat16", device="cpu", array="torch")
    assert interpreter.candidates(mis)[0].template == "padmm"  # the expected winner is tried first


def test_matmul_tf32_precision_offers_tf32_configs(interpreter):
    """precision=tf32 (float32): the candidates use tf32 dots and validate under its tolerance."""
    p = Problem.make("matmul", {"B": 1, "M": 300, "N": 260, "K": 96}, "float32", {"precision": "tf32"},
                     device="cpu", array="torch")  # fmt: skip
    assert all(c.cfg.get("prec", "tf32") == "tf32" for c in interpreter.candidates(p))
    _check(interpreter, "matmul", {"B": 1, "M": 67, "N": 41, "K": 43}, "float32", {"precision": "tf32"}, 2)


def test_matmul_batched_and_candidates(interpreter):
    # batched a with a shared 2-D b (flattened into one GEMM), and a batched b
    _check(interpreter, "matmul", {"B": 3, "M": 9, "N": 17, "K": 11}, "float32", {"activation": "relu"}, 2)
    p = Problem.make("matmul", {"B": 2, "M": 5, "N": 6, "K": 7}, "float32", device="cpu", array="torch")
    from uhop.backends.triton import _family

    kern = _family("matmul").build("ptr", {"BM": 16, "BN": 16, "BK": 16, "GM": 2, "warps": 4, "stages": 1}, p)
    a, b = torch.randn(2, 5, 7), torch.randn(2, 7, 6)
    torch.testing.assert_close(kern(a, b), a @ b, rtol=1e-4, atol=1e-4)
    # the search space of a large problem is pruned by shared memory and has TMA configs first
    big = Problem.make("matmul", {"B": 1, "M": 4096, "N": 4096, "K": 4096}, "bfloat16", device="cpu", array="torch")
    cands = interpreter.candidates(big)
    assert cands[0].template == "tma" and len(cands) <= 24
    from uhop.backends.triton_kernels import limits, matmul_smem

    lim = limits("cpu")
    for c in cands:
        cfg = c.cfg
        assert matmul_smem(cfg["BM"], cfg["BN"], cfg["BK"], cfg["stages"], 2) <= lim.shared_mem_bytes


@pytest.mark.parametrize("op", ["softmax", "layernorm", "rmsnorm", "log_softmax"])
@pytest.mark.parametrize(("r", "n"), [(1, 1), (7, 33), (13, 100), (4, 1024), (3, 40000)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rowops(interpreter, op, r, n, dtype):
    arity = {"softmax": 1, "layernorm": 3, "rmsnorm": 2, "log_softmax": 1}[op]
    _check(interpreter, op, {"R": r, "N": n}, dtype, arity=arity, limit=2)


def test_rowops_without_affine(interpreter):
    _check(interpreter, "layernorm", {"R": 5, "N": 37}, "float16", arity=1)
    _check(interpreter, "rmsnorm", {"R": 5, "N": 37}, "float16", arity=1)


@pytest.mark.parametrize(
    ("expr", "n"),
    [
        ("sigmoid(x0*1.5+0.5)*x0-0.25", 1),
        ("sigmoid(x0*1.5+0.5)*x0-0.25", 4099),
        ("gelu(x0)+tanh(x1)*pow(abs(x0)+1.0, 2.5)-maximum(x1, 0.1)/sqrt(abs(x1)+1.0)", 777),
        ("relu(x0)-minimum(x0, x1)+exp(-square(x1))+rsqrt(abs(x0)+1)+reciprocal(abs(x1)+2)", 300),
        ("silu(x0)+erf(x0)+sin(x0)*cos(x0)+log(abs(x0)+1.0)-neg(x0)", 2049),
        ("x0", 17),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_elementwise_codegen(interpreter, expr, n, dtype):
    _check(interpreter, "elementwise", {"N": n}, dtype, {"expr": expr}, limit=2)


@pytest.mark.parametrize(
    ("bcast", "reduce", "n", "c"),
    [
        ("frs", "none", 5 * 37, 37),  # a row vector of an odd width and a scalar
        ("fsr", "none", 3 * 4099, 4099),  # several blocks per row
        ("sff", "none", 777, 1),  # only a scalar: no row structure (C = 1)
        ("frs", "sum", 6 * 70, 70),
        ("fff", "mean", 9 * 33, 33),
        ("frs", "max", 4 * 2500, 2500),  # rows longer than one block
        ("frs", "sum", 3 * 20000, 20000),  # few long rows: columns split over programs, partials combined
        ("fff", "max", 2 * 9000, 9000),
        ("frs", "sum", 300 * 5, 5),  # many short rows per program
        ("fff", "mean", 7 * 4104, 4104),  # rows 16-byte aligned (bf16) while C % 16 != 0: edges path, empty edges
        ("fff", "max", 3 * 50257, 50257),  # odd width: aligned body per row, head and tail element-wise
        ("fsf", "sum", 6 * 1, 1),  # one column: the head holds the whole row
        ("frs", "sum", 4 * 2048, 2048),  # whole tiles of whole rows: the unmasked (EVEN) loop
        ("fff", "max", 8 * 256, 256),  # EVEN with several rows per program
        ("fsf", "mean", 2 * 16384, 16384),  # EVEN, columns split over programs
        ("fff", "sum", 7 * 256, 256),  # R % ROWS != 0: masked
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_elementwise_broadcast_and_reduction(interpreter, bcast, reduce, n, c, dtype):
    """Every config of the chain (row vector at offs % C, scalar) and rowsum templates against
    float64, on fresh inputs of the forms ``bcast`` gives."""
    params = {"expr": "sigmoid(x0*x1)*x0-x2+0.5", "bcast": "" if bcast == "fff" else bcast, "reduce": reduce}
    _check(interpreter, "elementwise", {"N": n, "C": c}, dtype, params, arity=3, limit=4)


@pytest.mark.parametrize(
    ("dtypes", "bcast", "reduce", "dtype"),
    [
        ("bfloat16,float32,float32", "frs", "none", "float32"),  # a bf16 activation, an fp32 row and scalar
        ("float16,float32,float16", "", "none", "float32"),
        ("float32,bfloat16,float32", "frs", "sum", "float32"),  # the row in bf16, reduced
        ("float16,float32,float32", "", "max", "float32"),
        ("bfloat16,float16,bfloat16", "", "mean", "float32"),  # bf16 with fp16: fp32, as torch promotes
        ("bfloat16,float32,float32", "fss", "none", "bfloat16"),  # fp32 0-dim scalars (torch): a bf16 result
    ],
)
def test_elementwise_mixed_dtypes(interpreter, dtypes, bcast, reduce, dtype):
    """Inputs of mixed dtypes: each loaded in its own dtype, fp32 math, the output allocated and
    stored in the problem's dtype (not x0's), on an odd width (37 x 129), chain and rowsum."""
    params = {"expr": "sigmoid(x0*x1)*x0-x2+0.5", "bcast": bcast, "reduce": reduce, "dtypes": dtypes}
    _check(interpreter, "elementwise", {"N": 37 * 129, "C": 129}, dtype, params, arity=3, limit=2)


def test_elementwise_max_reduction_keeps_nan_with_the_gpus_source(interpreter, monkeypatch):
    """The max rowsum is generated the same for the GPU as for the interpreter (the GPU's had
    called ``tl.max(..., propagate_nan=True)``, which Triton 3.6 does not take: every candidate
    failed to compile on the H100 and torch served the op), and a NaN in a row gives a NaN max,
    as numpy's and torch's max do."""
    from uhop.backends.triton_kernels import elementwise as ew
    from uhop.dispatch import make_problem
    from uhop.ops import expr as ex
    from uhop.ops import get

    e = ex.parse("x0*x1")
    here = ew.generate(e, 2, "fr", "max")
    monkeypatch.setattr("uhop.backends.triton_kernels.interpreting", lambda: False)
    assert ew.generate(e, 2, "fr", "max") == here
    monkeypatch.undo()
    x0 = torch.randn(21, 700).to(torch.bfloat16)
    x1 = torch.randn(700).to(torch.bfloat16)
    x0[5, 333] = float("nan")  # in row 5's aligned body
    x0[7, 1] = float("nan")  # row 7 starts 4 elements off the 16-byte grid: in its element-wise head
    x0[6, 698] = float("nan")  # row 6 ends 4 elements past it: in its tail
    p = make_problem(get("elementwise"), [x0, x1], {"expr": "x0*x1", "reduce": "max"})
    ref = (x0.double() * x1.double()).amax(-1)
    rest = (torch.arange(21) != 5) & (torch.arange(21) != 6) & (torch.arange(21) != 7)
    for c in interpreter.candidates(p)[:2]:
        y = interpreter.compile(c, p)(x0, x1)
        assert torch.isnan(y[5]) and torch.isnan(y[6]) and torch.isnan(y[7]), c.id
        torch.testing.assert_close(y[rest].double(), ref[rest], rtol=1e-2, atol=1e-2)


def test_elementwise_generated_source_is_cached(interpreter, uhop_home):
    from uhop.backends.triton_kernels import elementwise as ew
    from uhop.ops import expr as ex

    e = ex.parse("x0*2.0+x1")
    k1 = ew.load_kernel(e, 2)
    assert ew.load_kernel(e, 2) is k1
    assert "tl.load(x1_ptr" in ew.generate(e, 2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("b", "s", "l", "d"), [(1, 1, 1, 16), (2, 40, 40, 32), (3, 33, 17, 24), (1, 70, 130, 64)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_attention_flash(interpreter, causal, b, s, l, d, dtype):  # noqa: E741
    _check(interpreter, "attention", {"B": b, "S": s, "L": l, "D": d, "E": d}, dtype, {"causal": causal}, limit=2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("s", "l", "d", "cfg"), [(128, 128, 64, (128, 64, False)), (256, 128, 128, (128, 128, True))])
def test_attention_flash_tma(interpreter, causal, s, l, d, cfg):  # noqa: E741
    bm, bn, ws = cfg
    _check(interpreter, "attention", {"B": 2, "S": s, "L": l, "D": d, "E": d}, "float16", {"causal": causal},
           template="flash_tma", cfg={"BM": bm, "BN": bn, "warps": 4, "stages": 2, "ws": ws})  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("flash", "tma"), [
    ({"scale": 1.0}, {"scale": 0.05}),  # a scale other than 1/sqrt(D) (T5: 1)
    ({"kv_groups": 3}, {"kv_groups": 2}),  # grouped-query: query batch-head i reads k/v batch-head i // kv_groups
], ids=["scale", "kv_groups"])  # fmt: skip
def test_attention_params_in_both_templates(interpreter, causal, flash, tma):
    _check(interpreter, "attention", {"B": 6, "S": 40, "L": 40, "D": 32, "E": 32}, "float32",
           {"causal": causal, **flash}, limit=1)  # fmt: skip
    _check(interpreter, "attention", {"B": 4, "S": 128, "L": 128, "D": 64, "E": 64}, "float16",
           {"causal": causal, **tma}, template="flash_tma",
           cfg={"BM": 128, "BN": 64, "warps": 4, "stages": 2, "ws": False})  # fmt: skip


def test_attention_grouped_query_4d_against_sdpa(interpreter):
    """4-D (batch, heads, seq, dim) inputs as Llama 3 passes them, against SDPA's enable_gqa in float64."""
    from uhop.backends.triton import _family

    p = Problem.make("attention", {"B": 2 * 8, "S": 48, "L": 48, "D": 32, "E": 32}, "float32",
                     {"causal": True, "kv_groups": 4}, device="cpu", array="torch")  # fmt: skip
    k = _family("attention").build("flash", {"BM": 32, "BN": 32, "warps": 4, "stages": 2}, p)
    q = torch.randn(2, 8, 48, 32)
    kk, v = torch.randn(2, 2, 48, 32), torch.randn(2, 2, 48, 32)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), kk.double(), v.double(), is_causal=True,
                                                           enable_gqa=True)  # fmt: skip
    torch.testing.assert_close(k(q, kk, v).double(), ref, rtol=1e-4, atol=1e-4)


def test_attention_bf16_4d(interpreter):
    from uhop.backends.triton import _family

    p = Problem.make("attention", {"B": 4, "S": 64, "L": 64, "D": 32, "E": 32}, "bfloat16", {"causal": True},
                     device="cpu", array="torch")  # fmt: skip
    k = _family("attention").build("flash", {"BM": 32, "BN": 32, "warps": 4, "stages": 2}, p)
    q, kk, v = (torch.randn(2, 2, 64, 32, dtype=torch.bfloat16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), kk.double(), v.double(), is_causal=True)
    out = k(q, kk, v)
    assert out.shape == (2, 2, 64, 32)
    torch.testing.assert_close(out.double(), ref, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    ("dims", "stride", "padding"),
    [
        ({"N": 2, "C": 3, "H": 9, "W": 8, "K": 5, "R": 3, "S": 3}, 1, 1),
        ({"N": 1, "C": 16, "H": 7, "W": 7, "K": 33, "R": 3, "S": 3}, 2, 0),
        ({"N": 3, "C": 5, "H": 6, "W": 11, "K": 4, "R": 1, "S": 1}, 1, 0),
        ({"N": 2, "C": 32, "H": 5, "W": 6, "K": 8, "R": 3, "S": 3}, 1, 1),  # C % BK == 0: chunked path
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_conv2d_implicit_gemm(interpreter, dims, stride, padding, dtype):
    _check(interpreter, "conv2d", dims, dtype, {"stride": stride, "padding": padding}, arity=3, limit=1)


def test_conv2d_channels_last_keeps_format(interpreter):
    from uhop.backends.triton import _family

    p = Problem.make("conv2d", {"N": 2, "C": 8, "H": 6, "W": 6, "K": 4, "R": 3, "S": 3}, "float32",
                     {"stride": 1, "padding": 1}, arity=2, device="cpu", array="torch")  # fmt: skip
    k = _family("conv2d").build("igemm", {"BM": 32, "BN": 32, "BK": 32, "warps": 4, "stages": 1, "GM": 4}, p)
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 8, 3, 3)
    y = k(x, w)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)


def test_bad_template_raises(interpreter):
    from uhop.backends.triton import _family

    p = Problem.make("softmax", {"R": 2, "N": 8}, "float32", device="cpu", array="torch")
    with pytest.raises(ValueError, match="unknown row-op template"):
        _family("softmax").build("nope", {}, p)


def test_not_offered_for_plain_cpu_runs(monkeypatch):  # runs in both processes
    from uhop.backends.triton import TritonBackend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    p = Problem.make("softmax", {"R": 2, "N": 8}, "float32", device="cpu", array="torch")
    assert not TritonBackend().supports(p)


def test_prebuild_launches_each_candidate_once_on_problem_shaped_inputs(interpreter):
    # what a precompile process runs for a Triton candidate (on the GPU the launch compiles it
    # into Triton's on-disk cache); under the interpreter nothing is compiled, so the tuner does
    # not precompile there
    assert interpreter.precompiles is False
    for op, dims, params, arity in [("softmax", {"R": 5, "N": 37}, {}, 1), ("layernorm", {"R": 3, "N": 40}, {}, 3),
                                    ("elementwise", {"N": 100}, {"expr": "gelu(x0)*x1"}, 2),
                                    ("matmul", {"B": 1, "M": 17, "N": 9, "K": 33}, {}, 2)]:  # fmt: skip
        p = Problem.make(op, dims, "float32", params, arity=arity, device="cpu", array="torch")
        for c in interpreter.candidates(p)[:2]:
            interpreter.prebuild(c, p)


@pytest.mark.parametrize("template", ["ptr", "tma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "n", "k", "act"), [(67, 41, 43, "silu"), (9, 72, 24, "gelu_tanh"), (1, 3, 8, "gelu"),
                                                  (40, 33, 64, "silu")])  # fmt: skip
def test_gated_mlp_dual_gemm(interpreter, template, dtype, m, n, k, act):
    """``act(x @ Wg.T) * (x @ Wu.T)`` in one kernel, against float64 of the same inputs: odd sizes,
    K not a multiple of the tile, misaligned rows (the tma template falls back to pointers)."""
    import torch.nn.functional as F

    from uhop.backends.triton_kernels import limits, swiglu

    x = torch.randn(m, k).to(dtype)
    wg, wu = ((torch.randn(n, k) / k**0.5).to(dtype) for _ in range(2))
    cfg = {"BM": 32, "BN": 32, "BK": 16, "GM": 2, "warps": 4, "stages": 2, "ws": False}
    got = swiglu.make(template, cfg, act, limits("cpu").sm_count)(x, wg, wu)
    h = x.double() @ wg.double().T
    gate = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[act](h)
    want = gate * (x.double() @ wu.double().T)
    assert got.shape == (m, n) and got.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * max(1.0, float(want.abs().max())))


def test_gated_mlp_configs_fit_and_refuse_bad_input(interpreter):
    from uhop.backends.triton_kernels import limits, swiglu

    lim = limits("cpu")
    cands = swiglu.tiles(2048, 11008, 4096, 2, True, lim.fits)
    assert cands[0][0] == "tma" and all(lim.fits(swiglu.swiglu_smem(c["BM"], c["BN"], c["BK"], c["stages"], 2), 1)
                                        for _, c in cands)  # fmt: skip
    with pytest.raises(ValueError, match="activation must be one of"):
        swiglu.make("ptr", cands[-1][1], "relu")
    with pytest.raises(ValueError, match="unknown gated-MLP template"):
        swiglu.make("wgmma", cands[-1][1], "silu")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("m", "n", "k", "act"), [(31, 37, 29, "silu"), (64, 40, 24, "gelu_tanh")])
def test_gated_mlp_candidates_validate(interpreter, dtype, m, n, k, act):
    """The backend's gated-MLP candidates, through the validator UHOP's tuner uses."""
    _check(interpreter, "gated_mlp", {"M": m, "N": n, "K": k}, dtype, {"activation": act}, 3)
