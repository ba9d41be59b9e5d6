"""Op definitions: float64 references against independent implementations, shape checks, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uhop.errors import InputError, UnknownOpError
from uhop.ops import REGISTRY, get

torch = pytest.importorskip("torch")
F = torch.nn.functional


def rnd(rng, *shape):
    return rng.uniform(-1, 1, size=shape)


@pytest.fixture
def rng():
    return np.random.default_rng()


def t(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def test_registry_has_every_op():
    assert set(REGISTRY) == {"matmul", "softmax", "layernorm", "rmsnorm", "elementwise", "attention", "conv2d", "embedding",
                             "gated_mlp", "log_softmax"}
    with pytest.raises(UnknownOpError, match="known ops"):
        get("matmull")


@pytest.mark.parametrize("act", ["none", "relu", "gelu", "silu"])
def test_matmul_reference_vs_torch(rng, act):
    a, b, bias = rnd(rng, 2, 5, 7), rnd(rng, 7, 3), rnd(rng, 3)
    ref = get("matmul").reference(a, b, bias, activation=act)
    y = torch.matmul(t(a), t(b)) + t(bias)
    y = {"none": y, "relu": F.relu(y), "gelu": F.gelu(y), "silu": F.silu(y)}[act]
    np.testing.assert_allclose(ref, y.numpy(), rtol=1e-12, atol=1e-12)


def test_row_ops_reference_vs_torch(rng):
    x, w, b = rnd(rng, 3, 4, 11), rnd(rng, 11), rnd(rng, 11)
    np.testing.assert_allclose(get("softmax").reference(x), torch.softmax(t(x), -1).numpy(), rtol=1e-12)
    big = x * 300  # exp over/underflows: the reference stays finite and exact
    np.testing.assert_allclose(get("log_softmax").reference(big), torch.log_softmax(t(big), -1).numpy(), rtol=1e-12,
                               atol=1e-12)  # near-zero outputs (the dominant entry) differ in the last bit  # fmt: skip
    assert np.isfinite(get("log_softmax").reference(big)).all()
    np.testing.assert_allclose(get("log_softmax").reference_torch(t(big)).numpy(), get("log_softmax").reference(big),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(
        get("layernorm").reference(x, w, b, eps=1e-5), F.layer_norm(t(x), (11,), t(w), t(b), 1e-5).numpy(), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        get("rmsnorm").reference(x, w, eps=1e-6), F.rms_norm(t(x), (11,), t(w), 1e-6).numpy(), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("causal", [False, True])
def test_attention_reference_vs_sdpa(rng, causal):
    q, k, v = rnd(rng, 2, 3, 5, 8), rnd(rng, 2, 3, 5, 8), rnd(rng, 2, 3, 5, 4)
    ref = get("attention").reference(q, k, v, causal=causal)
    exp = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=causal).numpy()
    np.testing.assert_allclose(ref, exp, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (3, 2)])
def test_conv2d_reference_vs_torch(rng, stride, padding):
    x, w, b = rnd(rng, 2, 3, 9, 7), rnd(rng, 4, 3, 3, 2), rnd(rng, 4)
    ref = get("conv2d").reference(x, w, b, stride=stride, padding=padding)
    exp = F.conv2d(t(x), t(w), t(b), stride=stride, padding=padding).numpy()
    np.testing.assert_allclose(ref, exp, rtol=1e-10, atol=1e-12)
    dims = get("conv2d").check([x, w, b], {"stride": stride, "padding": padding})
    assert get("conv2d").output_shape([x.shape, w.shape], {"stride": stride, "padding": padding}) == ref.shape
    assert dims["C"] == 3


def test_elementwise_reference(rng):
    x = rnd(rng, 100)
    out = get("elementwise").reference(x, expr="sigmoid(x0*1.5+0.5)*x0-0.25")
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-(x * 1.5 + 0.5))) * x - 0.25, rtol=1e-14)


@pytest.mark.parametrize(
    "op,args,params,match",
    [
        ("matmul", [np.ones((3, 4), np.float32), np.ones((5, 2), np.float32)], {}, r"K=4.*\(5\)"),
        ("matmul", [np.ones(3, np.float32), np.ones((3, 2), np.float32)], {}, "a must have at least 2 dims"),
        ("matmul", [np.ones((3, 4), np.float32), np.ones((4, 2), np.float32), np.ones(3, np.float32)], {}, r"bias must have shape \(2,\)"),
        ("matmul", [np.ones((3, 4), np.int32), np.ones((4, 2), np.int32)], {}, "a has dtype int32"),
        ("matmul", [np.ones((3, 4), np.float32), np.ones((4, 2), np.float64)], {}, "b has dtype float64 but earlier"),
        ("matmul", [[[1.0]], np.ones((1, 1), np.float32)], {}, "a must be a numpy array or torch tensor, got list"),
        ("matmul", [np.ones((3, 4), np.float32), np.ones((4, 2), np.float32)], {"activation": "tanh"}, "activation must be one of"),
        ("matmul", [np.ones((3, 4), np.float32)], {}, "takes 2 to 3 inputs"),
        ("softmax", [np.ones((2, 3), np.float32)], {"eps": 0.1}, "no parameter"),
        ("layernorm", [np.ones((2, 3), np.float32), np.ones(4, np.float32)], {}, r"weight must have shape \(3,\)"),
        ("attention", [np.ones((2, 4, 8), np.float32)] * 2 + [np.ones((2, 5, 8), np.float32)], {}, "same seq length"),
        ("attention", [np.ones((2, 4, 8), np.float32), np.ones((2, 4, 6), np.float32), np.ones((2, 4, 8), np.float32)], {}, "q's last dim"),
        ("conv2d", [np.ones((1, 3, 5, 5), np.float32), np.ones((2, 4, 3, 3), np.float32)], {}, "3 channels but weight expects 4"),
        ("conv2d", [np.ones((3, 5, 5), np.float32), np.ones((2, 3, 3, 3), np.float32)], {}, "x must be 4-D"),
        ("conv2d", [np.ones((1, 3, 2, 2), np.float32), np.ones((2, 3, 3, 3), np.float32)], {}, "larger than the padded input"),
        ("embedding", [np.zeros(3, np.int64), np.ones((4, 2), np.float32)], {}, r"swap them \(torch's F.embedding"),
        ("elementwise", [np.ones(3, np.float32)], {"expr": "x0+x1"}, "uses 2 input"),
        ("elementwise", [np.ones(3, np.float32)], {"expr": "foo(x0)"}, "unknown function 'foo'"),
    ],
)
def test_bad_input_names_the_argument(op, args, params, match):
    import uhop

    fn = uhop.ops.elementwise if op == "elementwise" else getattr(uhop.ops, op)
    with pytest.raises(InputError, match=match):
        if op == "elementwise":
            fn(params.get("expr", "x0"), *args)
        else:
            fn(*args, **params)


def test_parse_shape():
    mm = get("matmul")
    assert mm.parse_shape("256x128x64") == {"B": 1, "M": 256, "N": 128, "K": 64}
    assert mm.parse_shape("4x256x128x64") == {"B": 4, "M": 256, "N": 128, "K": 64}
    assert get("attention").parse_shape("8x16x2048x128") == {"B": 128, "S": 2048, "L": 2048, "D": 128, "E": 128}
    with pytest.raises(InputError, match="shape for matmul must be MxNxK"):
        mm.parse_shape("3x4")
    with pytest.raises(InputError, match="positive"):
        mm.parse_shape("0x4x4")


def test_counts_are_consistent():
    mm = get("matmul")
    dims = mm.parse_shape("1024x1024x1024")
    assert mm.flops(dims, {}) == 2 * 1024**3
    assert mm.bytes(dims, "float32", {}) == 4 * 3 * 1024**2
    sm = get("softmax")
    assert sm.bytes({"R": 8192, "N": 1024}, "float32", {}) == 2 * 4 * 8192 * 1024
    assert math.isclose(get("attention").flops({"B": 1, "S": 4, "L": 4, "D": 8, "E": 8}, {"causal": True}), 2 * 16 * 16 / 2)


def test_make_inputs_are_fresh_and_nonzero():
    mm = get("matmul")
    dims = mm.parse_shape("16x8x4")
    a1 = mm.make_inputs(dims, {}, np.random.default_rng(), "float32")
    a2 = mm.make_inputs(dims, {}, np.random.default_rng(), "float32")
    assert a1[0].dtype == np.float32 and a1[0].shape == (16, 4) and a1[1].shape == (4, 8)
    assert not np.array_equal(a1[0], a2[0])
    assert np.count_nonzero(a1[0]) == a1[0].size


def test_matmul_tf32_precision_widens_the_float32_tolerance_only():
    """precision=tf32 admits tf32 products (10-bit mantissa inputs): float32 error bound, sized
    so real tf32 rounding passes and a genuinely wrong result still fails."""
    from uhop.ops import get
    from uhop.problem import Problem

    mm = get("matmul")
    dims = {"B": 1, "M": 64, "N": 48, "K": 1024}
    ieee = mm.tolerance("float32", dims, {"activation": "none", "precision": "ieee"})
    tf32 = mm.tolerance("float32", dims, {"activation": "none", "precision": "tf32"})
    assert tf32[0] >= ieee[0] and tf32[1] > ieee[1]
    assert mm.tolerance("bfloat16", dims, {"activation": "none", "precision": "tf32"}) == mm.tolerance(
        "bfloat16", dims, {"activation": "none", "precision": "ieee"})
    rng = np.random.default_rng()
    a, b = rng.standard_normal((64, 1024)), rng.standard_normal((1024, 48))

    def tf32_round(x):  # keep 10 explicit mantissa bits (round to nearest), as the tensor cores do
        bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        return ((bits + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)

    ref = a @ b
    got = (tf32_round(a).astype(np.float64) @ tf32_round(b).astype(np.float64)).astype(np.float32)
    err = np.abs(got - ref)
    assert (err <= tf32[1] + tf32[0] * np.abs(ref)).all()
    assert not (err <= ieee[1] + ieee[0] * np.abs(ref)).all()  # tf32 rounding is not ieee accuracy
    wrong = got + 0.1 * np.abs(ref) + 0.1
    assert not (np.abs(wrong - ref) <= tf32[1] + tf32[0] * np.abs(ref)).all()
    with pytest.raises(InputError, match="precision must be one of"):
        Problem.make("matmul", {"M": 4, "N": 4, "K": 4}, "float32", {"precision": "fp8"})


@pytest.mark.parametrize("act", ["none", "relu", "gelu", "silu"])
def test_matmul_torch_reference_matches_numpy_reference(act):
    """GPU problems compute the float64 reference with the op's torch form (on the device);
    it must be the numpy reference, to float64 rounding."""
    pytest.importorskip("torch")
    from uhop.measure.validate import reference_on
    from uhop.problem import Problem

    rng = np.random.default_rng()
    p = Problem.make("matmul", {"B": 3, "M": 37, "N": 29, "K": 61}, "float32", {"activation": act}, arity=3)
    xs = p.spec.make_inputs(p.dim, p.param, rng, p.dtype, p.arity)
    ref = p.spec.reference(*[x.astype(np.float64) for x in xs], **p.param)
    got = reference_on(p, xs, "cpu")  # the same code path a CUDA problem takes, on the CPU here
    assert got is not None and got.dtype == np.float64 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("dims", "params"), [
    ({"N": 2, "C": 5, "H": 9, "W": 11, "K": 7, "R": 3, "S": 3}, {"padding": 1}),
    ({"N": 1, "C": 3, "H": 13, "W": 10, "K": 4, "R": 5, "S": 2}, {"stride": 2}),
    ({"N": 3, "C": 2, "H": 6, "W": 6, "K": 3, "R": 1, "S": 1}, {"stride": 3, "padding": 2}),
])  # fmt: skip
@pytest.mark.parametrize("arity", [2, 3])
def test_conv2d_torch_reference_matches_numpy_reference(dims, params, arity):
    """A CUDA conv2d's float64 reference is computed on the device by tap-wise matmuls; it must
    be the numpy (einsum) reference to float64 rounding, with stride, padding and bias."""
    pytest.importorskip("torch")
    from uhop.measure.validate import reference_on
    from uhop.problem import Problem

    rng = np.random.default_rng()
    p = Problem.make("conv2d", dims, "float32", params, arity=arity)
    xs = p.spec.make_inputs(p.dim, p.param, rng, p.dtype, p.arity)
    ref = p.spec.reference(*[x.astype(np.float64) for x in xs], **p.param)
    got = reference_on(p, xs, "cpu")
    assert got is not None and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("dims", "match"), [
    ({"M": 4, "N": 4}, "missing K"), ({"M": 4, "N": 4, "K": 4, "Q": 2}, "unknown Q"),
    ({"M": 4, "N": 0, "K": 4}, "positive integers, got N=0"), ({"M": 4.5, "N": 4, "K": 4}, "got M=4.5"),
])  # fmt: skip
def test_problem_dims_errors_name_the_dim(dims, match):
    from uhop.problem import Problem

    with pytest.raises(InputError, match=match):
        Problem.make("matmul", dims, "float32")
    assert Problem.make("matmul", {"M": 4, "N": 5, "K": 6}, "float32").dim["B"] == 1  # defaulted batch


def test_elementwise_shape_text_and_arrays_pose_one_problem():
    """``uhop tune elementwise --shape 64x512`` and a call on (64, 512) arrays share the key: a
    plain chain keys on its element count only; a reduction keeps the row length."""
    import numpy as np

    from uhop.dispatch import make_problem
    from uhop.ops import get
    from uhop.problem import Problem

    spec = get("elementwise")
    x = np.zeros((64, 512), np.float32)
    for params in ({"expr": "x0*2"}, {"expr": "x0*2", "reduce": "sum"}):
        from_text = Problem.make("elementwise", spec.parse_shape("64x512"), "float32", params)
        from_arrays = make_problem(spec, [x], params)
        assert from_text.key() == from_arrays.key(), (from_text.dims, from_arrays.dims)
    assert spec.parse_shape("1000") == {"N": 1000, "C": 1}
    assert Problem.make("elementwise", spec.parse_shape("64x512"), "float32", {"expr": "x0"}).dim == {"N": 32768, "C": 1}


@pytest.mark.parametrize(("shape", "row", "reduce"), [((37, 129), False, "none"), ((37, 129), True, "sum")])
def test_elementwise_mixed_dtypes_cli_and_arrays_pose_one_problem(shape, row, reduce):
    """``uhop tune elementwise --shape 37x129 -p dtypes=float16,float32 --dtype float32`` (its
    params parsed as the CLI parses them) and a call on a float16 and a float32 array share the
    key; chains of one dtype keep keys without ``dtypes``."""
    from uhop.cli.core import parse_params
    from uhop.dispatch import make_problem
    from uhop.ops import get
    from uhop.problem import Problem

    spec = get("elementwise")
    x, y = np.zeros(shape, np.float16), np.zeros(shape[-1:] if row else shape, np.float32)
    cli = ["expr=gelu(x0)*x1", f"reduce={reduce}", "dtypes=float16,float32"] + (["bcast=fr"] if row else [])
    dims = spec.parse_shape("x".join(map(str, shape)))
    from_text = Problem.make("elementwise", dims, "float32", parse_params(cli))
    from_arrays = make_problem(spec, [x, y], {"expr": "gelu(x0)*x1", "reduce": reduce})
    assert from_text.key() == from_arrays.key(), (from_text, from_arrays)
    assert from_arrays.dtype == "float32" and from_arrays.param["dtypes"] == "float16,float32"
    plain = make_problem(spec, [y, y], {"expr": "gelu(x0)*x1"})
    assert "dtypes" not in plain.param  # "" stays out of the key: stored entries keep theirs
    two = {"expr": "x0*x1", "dtypes": "float16,float32"}
    with pytest.raises(InputError, match="give a float32 result, not bfloat16"):  # a --dtype they cannot give
        Problem.make("elementwise", {"N": 64}, "bfloat16", two).bytes()
    with pytest.raises(InputError, match="one dtype per input: 2 for 3"):
        Problem.make("elementwise", {"N": 64}, "float32", {**two, "expr": "x0*x1+x2"}).bytes()


def test_result_dtype_follows_the_callers_library():
    """Mixed floating inputs: numpy's result_type; torch's promotion, in which a 0-dim tensor
    does not raise a dimensioned one's dtype; bfloat16 with float16 is float32."""
    from uhop.ops.base import promote, result_dtype

    h, f = np.zeros(3, np.float16), np.zeros(3, np.float32)
    assert result_dtype([h, f]) == "float32" == np.result_type(h, f).name
    assert result_dtype([h, np.zeros(3)]) == "float64"
    assert promote(["bfloat16", "float16"]) == "float32" and promote(["bfloat16", "float64"]) == "float64"
    torch = pytest.importorskip("torch")
    b = torch.zeros(3, dtype=torch.bfloat16)
    for other in (torch.zeros(3), torch.zeros(1), torch.tensor(1.0), torch.zeros(3, dtype=torch.float16),
                  torch.tensor(1.0, dtype=torch.float64)):  # fmt: skip
        assert result_dtype([b, other]) == str((b * other).dtype).removeprefix("torch."), other


def test_comparison_in_steps_finds_what_the_whole_array_comparison_finds(rng):
    """The stepped comparison of a passing output (validate._within) against whole-array numpy:
    the same largest error; one element off in any step (the first, one across a step boundary,
    the ragged last), or a NaN, fails it, and the full comparison names the element."""
    from uhop.measure import validate as v
    from uhop.problem import Problem

    n = 3 * v.WITHIN_CHUNK + 123
    p = Problem.make("elementwise", {"N": n}, "float32", {"expr": "x0+x1"}, arity=2)
    ref = rng.standard_normal(n)
    out = (ref + rng.uniform(-1e-7, 1e-7, n)).astype(np.float32)
    bound = v._bound(ref, p)
    good = v.compare(out, ref, p, bound)
    assert good.ok and good.max_err == float(np.abs(out.astype(np.float64) - ref).max())
    for i in (0, v.WITHIN_CHUNK - 1, v.WITHIN_CHUNK, n - 1):
        bad = out.copy()
        bad[i] += 1.0
        assert v._within(bad, ref, *bound) is None
        verdict = v.compare(bad, ref, p, bound)
        assert not verdict.ok and f"flat index {i}" in verdict.reason, (i, verdict)
    nan = out.copy()
    nan[n - 5] = np.nan
    assert v._within(nan, ref, *bound) is None and not v.compare(nan, ref, p, bound).ok
    torch = pytest.importorskip("torch")
    assert v._within(torch.from_numpy(out), ref, *bound) == good.max_err  # a torch output, converted per step
    assert v._within(out[:0], ref[:0], *bound) == 0.0


def test_a_large_half_written_output_is_rejected_without_the_poison_fill():
    """Host outputs above glibc's largest mmap threshold are not NaN-poisoned before the kernel
    runs (each such allocation is a fresh zeroed mapping): a kernel that writes half of one still
    fails validation on the zeros it leaves, and one that writes all of it passes."""
    from uhop.measure import validate as v
    from uhop.problem import Problem

    n = v.MMAP_THRESHOLD_MAX // 4 + 4099  # float32: just above the threshold
    p = Problem.make("elementwise", {"N": n}, "float32", {"expr": "x0+x1"}, arity=2)
    vset = v.ValidationSet(p, trials=2)

    def half(x0, x1):
        out = np.empty_like(x0)
        out[: n // 2] = x0[: n // 2] + x1[: n // 2]
        return out

    bad = v.check_kernel(half, vset, "numpy", "cpu")
    assert not bad.ok and bad.status == "wrong-result", bad
    assert v.check_kernel(lambda x0, x1: x0 + x1, vset, "numpy", "cpu").ok


@pytest.mark.parametrize("array", ["numpy", "torch"])
def test_an_input_is_unchanged_only_when_its_bits_are(rng, array):
    """validate._unchanged compares inputs bit for bit (as unsigned integers: 13 ms where the
    NaN-aware float comparison took 0.19 s at 16M elements): NaN in place of NaN is unchanged;
    -0.0 over 0.0, another NaN payload or one ulp are changes; strided views and bfloat16 too.
    And check_kernel reports a kernel that writes its input as input-mutated."""
    from uhop.measure import validate as v
    from uhop.problem import Problem

    x = rnd(rng, 4096).reshape(64, 64)
    x[3, 3] = np.nan
    x[5, 5] = 0.0
    variants = {"ulp": (7, 7, np.nextafter(x[7, 7], np.float32(2))), "neg-zero": (5, 5, -0.0),
                "payload": (3, 3, np.uint32(0x7FC00001).view(np.float32))}  # fmt: skip
    if array == "torch":
        torch = pytest.importorskip("torch")
        conv = lambda a: torch.from_numpy(a.copy())  # noqa: E731
    else:
        conv = lambda a: a.copy()  # noqa: E731
    a = conv(x)
    assert v._unchanged(a, conv(x)) and v._unchanged(a.T, conv(x).T)
    for name, (i, j, val) in variants.items():
        y = x.copy()
        y[i, j] = val
        assert not v._unchanged(a, conv(y)), name
    if array == "torch":
        b = torch.from_numpy(x).to(torch.bfloat16)
        c = b.clone()
        assert v._unchanged(b, c)
        c[0, 0] = -c[0, 0]
        assert not v._unchanged(b, c)
    p = Problem.make("elementwise", {"N": 4096}, "float32", {"expr": "x0*2"})
    vset = v.ValidationSet(p, trials=2)

    def scribbles(x0):
        out = x0 * 2
        x0[17] = -x0[17] if x0[17] != 0 else -0.0
        return out

    bad = v.check_kernel(scribbles, vset, "numpy", "cpu")
    assert bad.status == "input-mutated" and "x0" in bad.reason, bad
    assert v.check_kernel(lambda x0: x0 * np.float32(2), vset, "numpy", "cpu").ok


@pytest.mark.parametrize("n", [1000, (1 << 20) + 3])
def test_elementwise_reference_upcasts_inputs_itself(rng, n):
    """The elementwise reference takes inputs in their own dtypes (validation passes them so,
    :attr:`Op.reference_upcasts`) and gives exactly the float64 reference of their values, on
    the whole-array and the chunked path, with an integer input and a row-broadcast one."""
    spec = get("elementwise")
    assert spec.reference_upcasts
    x = rng.uniform(-4, 4, n).astype(np.float32)
    k = rng.integers(-3, 3, n).astype(np.int32)
    expr = "sigmoid(x0*1.5+0.5)*x0-0.25+exp(x1)*1e-3"
    got = spec.reference(x, k, expr=expr)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, spec.reference(x.astype(np.float64), k.astype(np.float64), expr=expr))
    row = rng.uniform(-1, 1, 10).astype(np.float16)
    m = x[: 100 * 10].reshape(100, 10)
    np.testing.assert_array_equal(spec.reference(m, row, expr="x0*x1"), m.astype(np.float64) * row.astype(np.float64))


@pytest.mark.parametrize("lib", ["numpy", "torch", "cuda"])
def test_empty_inputs_give_what_torch_gives_and_tune_nothing(lib, uhop_home):
    """A batch of zero rows (an expert that got no tokens, an empty detection list) is valid:
    ``uhop.ops`` returns torch's result (empty outputs; a matmul with K = 0 is its bias, through
    the activation) in the caller's library and dtype; nothing is tuned or stored. Shape errors
    are still errors; attention over zero keys, which has no value, names the empty input."""
    import torch

    import uhop
    from uhop.store import open_store

    if lib == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rng = np.random.default_rng()
    if lib == "numpy":
        mk, to_np = (lambda *s: rng.standard_normal(s).astype(np.float32)), (lambda r: r)
    else:
        dev = "cuda" if lib == "cuda" else "cpu"
        mk, to_np = (lambda *s: torch.randn(*s, device=dev)), (lambda r: r.cpu().numpy())
    cases = [
        (uhop.ops.softmax, (mk(0, 7),), {}, (0, 7)),
        (uhop.ops.softmax, (mk(3, 0),), {}, (3, 0)),
        (uhop.ops.matmul, (mk(0, 4), mk(4, 5)), {}, (0, 5)),
        (uhop.ops.layernorm, (mk(0, 8), mk(8), mk(8)), {}, (0, 8)),
        (uhop.ops.rmsnorm, (mk(2, 0, 8), mk(8)), {}, (2, 0, 8)),
        (uhop.ops.attention, (mk(2, 0, 8), mk(2, 5, 8), mk(2, 5, 8)), {}, (2, 0, 8)),
        (uhop.ops.conv2d, (mk(0, 3, 8, 8), mk(4, 3, 3, 3)), {}, (0, 4, 6, 6)),
    ]
    for fn, args, params, shape in cases:
        for _ in range(2):  # the second call through the cached signature
            out = fn(*args, **params)
            assert type(out) is type(args[0]) and tuple(out.shape) == shape and out.dtype == args[0].dtype
            assert getattr(out, "device", None) == getattr(args[0], "device", None)
    bias = mk(5)
    for _ in range(2):
        out = uhop.ops.matmul(mk(3, 0), mk(0, 5), bias, activation="relu")
        np.testing.assert_array_equal(to_np(out), np.broadcast_to(np.maximum(to_np(bias), 0), (3, 5)))
    out = uhop.ops.elementwise("x0*2+x1", mk(0), mk(0))
    assert tuple(out.shape) == (0,)
    with pytest.raises(InputError, match=r"K=4.*\(3\)"):
        uhop.ops.matmul(mk(0, 4), mk(3, 5))
    with pytest.raises(InputError, match="k is empty"):
        uhop.ops.attention(mk(2, 3, 8), mk(2, 0, 8), mk(2, 0, 8))
    uhop.wait()
    assert not open_store().entries()


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_softmax_along_any_axis(lib, uhop_home, monkeypatch):
    """``uhop.ops.softmax(x, axis=...)`` (numpy's name) or ``dim=...`` (torch's), as the libraries
    call it: the last axis by default, another moved last around the kernel; checked against a
    float64 softmax on fresh inputs. A bad axis names the argument."""
    import uhop

    monkeypatch.setenv("UHOP_POLICY", "fast")  # served by the baseline: the axis handling is under test
    rng = np.random.default_rng()
    x64 = rng.uniform(-4, 4, (5, 33, 7))
    x = x64.astype(np.float32)
    if lib == "torch":
        torch = pytest.importorskip("torch")
        x, name, to_np = torch.from_numpy(x), "dim", (lambda r: r.numpy())
    else:
        name, to_np = "axis", (lambda r: r)
    for a in (0, 1, 2, -1, -2, -3):
        e = np.exp(x64 - x64.max(axis=a, keepdims=True))
        want = e / e.sum(axis=a, keepdims=True)
        got = uhop.ops.softmax(x, **{name: a})
        assert tuple(got.shape) == x64.shape and type(got) is type(x)
        np.testing.assert_allclose(to_np(got), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(to_np(uhop.ops.softmax(x, **{name: -1})), to_np(uhop.ops.softmax(x)))
    for bad, match in [({name: 3}, rf"{name} must be an int in \[-3, 3\).*got 3"),
                       ({name: 1.5}, rf"{name} must be an int.*got 1.5"),
                       ({"axis": 0, "dim": 0}, "give axis or dim, not both")]:  # fmt: skip
        with pytest.raises(InputError, match=match):
            uhop.ops.softmax(x, **bad)


def _attention64(q, k, v, mask=None, causal=False, scale=None):
    """softmax(q k^T * scale [masked]) v in float64 numpy, written out (the test's reference)."""
    from uhop.ops.attention import apply_mask

    s = q @ np.swapaxes(k, -1, -2) * (1 / np.sqrt(q.shape[-1]) if scale is None else scale)
    s = apply_mask(s, mask, causal)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def _array_lib(lib):
    """(numpy array -> the library's array, the library's array -> numpy) for ``lib``."""
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return (lambda a: torch.from_numpy(np.ascontiguousarray(a))), (lambda r: r.numpy())
    return (lambda a: a), (lambda r: r)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_attention_takes_sdpa_keywords(lib, uhop_home, monkeypatch):
    """``uhop.ops.attention`` as torch's SDPA is called: ``attn_mask=`` / ``mask=`` (boolean or
    additive), ``is_causal=``, ``scale=`` (the op's parameter), ``dropout_p=0``; checked against a
    float64 reference on fresh inputs. Conflicting or bad keywords name the argument."""
    import math

    import uhop

    monkeypatch.setenv("UHOP_POLICY", "fast")
    rng = np.random.default_rng()
    q64, k64, v64 = (rng.uniform(-1, 1, (2, 3, n, 8)) for n in (5, 6, 6))
    keep = rng.uniform(size=(5, 6)) > 0.3
    keep[:, 0] = True  # every query keeps a key
    add64 = rng.uniform(-2, 0, (3, 5, 6))

    def ref(mask=None, causal=False, scale=None):
        return _attention64(q64, k64, v64, mask, causal, scale)

    conv, to_np = _array_lib(lib)
    q, k, v = (conv(a.astype(np.float32)) for a in (q64, k64, v64))
    m, add = conv(keep), conv(add64.astype(np.float32))
    cases = [
        ({"attn_mask": m}, ref(keep)),
        ({"mask": add}, ref(add64)),
        ({"is_causal": True}, ref(causal=True)),
        ({"attn_mask": add, "is_causal": True, "dropout_p": 0.0}, ref(add64, True)),
        ({"scale": 0.7}, ref(scale=0.7)),
        ({"scale": 1 / math.sqrt(8)}, ref()),
    ]
    for kw, want in cases:
        np.testing.assert_allclose(to_np(uhop.ops.attention(q, k, v, **kw)), want, rtol=2e-5, atol=2e-6, err_msg=str(kw))
    np.testing.assert_array_equal(to_np(uhop.ops.attention(q, k, v, m)), to_np(uhop.ops.attention(q, k, v, mask=m)))
    for kw, match in [({"mask": m, "attn_mask": m}, "mask or attn_mask, not both"),
                      ({"is_causal": True, "causal": True}, "causal or is_causal, not both"),
                      ({"dropout_p": 0.1}, "dropout_p must be 0"),
                      ({"scale": -1.0}, "scale must be a positive finite number"),
                      ({"scale": "0.5"}, "scale must be a positive finite number")]:  # fmt: skip
        with pytest.raises(InputError, match=match):
            uhop.ops.attention(q, k, v, **kw)
    with pytest.raises(InputError, match="mask is given twice"):
        uhop.ops.attention(q, k, v, m, attn_mask=m)
    if lib == "numpy":  # a Buffer's scale is the op's parameter too
        bq, bk_, bv = (uhop.Buffer(a) for a in (q, k, v))
        for scale, want in ((1 / math.sqrt(8), ref()), (0.7, ref(scale=0.7))):
            np.testing.assert_allclose(uhop.ops.attention(bq, bk_, bv, scale=scale).numpy(), want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_attention_grouped_query(lib, uhop_home, monkeypatch):
    """``enable_gqa=True`` (torch's SDPA keyword) or ``kv_groups=``: k and v with fewer heads than
    q, query head h reading k/v head h // groups; against a float64 reference on fresh inputs,
    causal and with a mask. Heads that do not divide, or both keywords, name the argument."""
    import uhop

    monkeypatch.setenv("UHOP_POLICY", "fast")
    rng = np.random.default_rng()
    q64 = rng.uniform(-1, 1, (2, 6, 5, 8))
    k64, v64 = rng.uniform(-1, 1, (2, 2, 7, 8)), rng.uniform(-1, 1, (2, 2, 7, 4))
    add64 = rng.uniform(-2, 0, (5, 7))

    def ref(mask=None, causal=False):
        return _attention64(q64, np.repeat(k64, 3, axis=1), np.repeat(v64, 3, axis=1), mask, causal)

    conv, to_np = _array_lib(lib)
    q, k, v, add = (conv(a.astype(np.float32)) for a in (q64, k64, v64, add64))
    for kw, want in [({"enable_gqa": True}, ref()), ({"kv_groups": 3, "causal": True}, ref(causal=True)),
                     ({"enable_gqa": True, "attn_mask": add}, ref(add64))]:  # fmt: skip
        got = to_np(uhop.ops.attention(q, k, v, **kw))
        assert got.shape == (2, 6, 5, 4)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=str(kw))
    np.testing.assert_allclose(to_np(uhop.ops.attention(q, q, q, enable_gqa=True)),
                               to_np(uhop.ops.attention(q, q, q)), rtol=1e-6)  # same heads: plain attention
    with pytest.raises(InputError, match="enable_gqa=True"):
        uhop.ops.attention(q, k, v)
    with pytest.raises(InputError, match="kv_groups=4"):
        uhop.ops.attention(q, k, v, kv_groups=4)
    with pytest.raises(InputError, match="enable_gqa or kv_groups"):
        uhop.ops.attention(q, k, v, enable_gqa=True, kv_groups=3)
    with pytest.raises(InputError, match="enable_gqa needs"):
        uhop.ops.attention(q, conv(np.ones((2, 4, 7, 8), np.float32)), conv(np.ones((2, 4, 7, 4), np.float32)),
                           enable_gqa=True)
    with pytest.raises(InputError, match="kv_groups must be a positive int"):
        uhop.ops.attention(q, k, v, kv_groups=0)
