"""torch.compile(backend="uhop") on CPU: numerics vs eager (float64) for a module zoo, a training
step's gradients, graph breaks, dynamic shapes without per-length recompiles, the report."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from zoo import GPT2, MLP, GPT2Block, ResNetSmall  # noqa: E402

import uhop.compile  # noqa: E402,F401 - registers backend="uhop" for a source checkout
from uhop.compile import REPORT  # noqa: E402
from uhop.compile.backend import CompileOptions  # noqa: E402
from uhop.compile.report import format_report  # noqa: E402

EAGER = {"rest": "eager"}  # the rest without Inductor's C++ compile: fast tests


def _check(model: torch.nn.Module, x: torch.Tensor, options=EAGER, atol: float = 2e-4) -> torch.Tensor:
    want = copy.deepcopy(model).double()(x.double() if x.is_floating_point() else x)
    got = torch.compile(model, backend="uhop", options=options)(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=atol)
    return got


def _kinds() -> list[str]:
    return [r.kind for g in REPORT.graphs for r in g.regions]


@pytest.fixture
def regions_everywhere(monkeypatch):
    """Regions even where the aten op is UHOP's only candidate (a CPU with the default region
    backends leaves those as written): the tests that exercise the region machinery on CPU."""
    from uhop.compile import runtime

    monkeypatch.setattr(runtime, "_aten_only", lambda problem, aten_id: False)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit-attention"])
def test_gpt2_block_matches_float64_eager(sdpa, regions_everywhere):
    m = GPT2Block(64, 4, sdpa=sdpa).eval()
    with torch.no_grad():
        _check(m, torch.randn(2, 12, 64))
    kinds = _kinds()
    assert kinds.count("attention") == 1 and kinds.count("layer_norm") == 2 and kinds.count("linear") == 4
    assert "matmul" not in kinds and "softmax" not in kinds  # the explicit pattern is one region
    mlp_in = next(r for g in REPORT.graphs for r in g.regions if r.kind == "linear" and "gelu" in r.ops)
    assert mlp_in.bytes_saved > 0
    assert all(r.status == "uhop" for r in REPORT.runs), [r for r in REPORT.runs if r.status != "uhop"]


@pytest.mark.parametrize("act", ["relu", "gelu", "silu", "tanh_gelu"])
def test_mlp_activation_fused_into_linear(act):
    m = MLP(32, act)
    with torch.no_grad():
        _check(m, torch.randn(5, 7, 32))
    first = next(r for g in REPORT.graphs for r in g.regions if r.kind == "linear")
    assert len(first.ops) == 2, first  # linear + activation
    assert _kinds().count("softmax") == 1


def _nontrivial_bn(m: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for mod in m.modules():  # non-trivial running statistics
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


def test_conv_net_folds_batchnorm_in_eval_under_no_grad(monkeypatch, regions_everywhere):
    from uhop.compile import runtime

    monkeypatch.setattr(runtime, "vendor_first", lambda kind, device: False)  # regions at once (CPU rule: below)
    m = _nontrivial_bn(ResNetSmall(8, 2).eval())
    with torch.no_grad():
        _check(m, torch.randn(2, 3, 12, 12))
    kinds = _kinds()
    assert kinds.count("conv_bn") == 5 and kinds.count("linear") == 1
    assert all(r.note == "" for g in REPORT.graphs for r in g.regions)  # UHOP regions, the bn folded


def test_convs_on_cpu_stay_as_written_for_inductor_until_uhop_measured_them(regions_everywhere):
    """On a CPU, Inductor carries activations channels-last from conv to conv (oneDNN's fast
    layout; a region takes and returns NCHW): a conv with nothing measured stays as written while
    it tunes in the background, and a later compile keeps it so when the measured winner is the
    aten op."""
    m = _nontrivial_bn(ResNetSmall(8, 2).eval())
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        _check(m, x)
    first = [r for r in REPORT.graphs[0].regions if r.kind == "conv_bn"]
    assert len(first) == 5 and all("vendor kernel until UHOP measures a faster one" in r.note for r in first)
    uhop.wait()
    torch._dynamo.reset()
    with torch.no_grad():
        _check(m, x)
    second = [r for r in REPORT.graphs[1].regions if r.kind == "conv_bn"]
    assert len(second) == 5 and all(r.note.startswith("left as written: served torch/eager") for r in second), second


def test_convs_stay_with_inductor_untuned_when_it_compiles_the_rest(regions_everywhere):
    """With Inductor compiling the rest, convolutions (with their folded batchnorm) are never
    regions and never tuned for the graph: Inductor keeps activations in its conv layout from conv
    to conv, and every measured conv region lost to that (see ``runtime.CONVS``)."""
    from uhop.store import open_store

    m = _nontrivial_bn(ResNetSmall(8, 2).eval())
    with torch.no_grad():
        _check(m, torch.randn(2, 3, 12, 12), options={"rest": "inductor"})
    convs = [r for r in REPORT.graphs[0].regions if r.kind == "conv_bn"]
    assert len(convs) == 5 and all("Inductor's convolution" in r.note for r in convs), convs
    uhop.wait()
    assert not open_store().entries("conv2d")


def test_small_gpt2_with_embeddings_and_inductor_rest():
    m = GPT2(vocab=97, ctx=32, d=32, heads=2, layers=2).eval()
    idx = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        _check(m, idx, options={"rest": "inductor"}, atol=5e-4)
    assert _kinds().count("embedding") == 2
    assert REPORT.graphs[0].rest == "inductor"


class _Gated(torch.nn.Module):
    """A gated MLP as Llama-style code writes it: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, d: int = 24, ff: int = 40, act: str = "silu", bias: bool = False, share: bool = False) -> None:
        super().__init__()
        self.gate, self.up = torch.nn.Linear(d, ff, bias=bias), torch.nn.Linear(d, ff, bias=False)
        self.down = torch.nn.Linear(ff, d, bias=False)
        self.act, self.share = act, share

    def forward(self, x):
        g = self.gate(x)
        a = F.silu(g) if self.act == "silu" else F.gelu(g, approximate="tanh" if self.act == "gelu_tanh" else "none")
        y = self.down(a * self.up(x))
        return y + g.sum(-1, keepdim=True) if self.share else y  # share: the gate's product is used twice


@pytest.mark.parametrize("rest", ["inductor", "eager"])
def test_activation_feeding_an_elementwise_op_is_left_to_inductor(rest, regions_everywhere):
    """silu(gate(x)) * up(x) where the gate has a bias (no gated_mlp region): with Inductor for the
    rest, the silu stays outside the gate's linear region (Inductor fuses it into the multiply, one
    pass); run eagerly, it is fused into the region (a GEMM epilogue where the pick has one)."""
    with torch.no_grad():
        _check(_Gated(32, 48, bias=True).eval(), torch.randn(3, 5, 32), options={"rest": rest})
    linears = [r for g in REPORT.graphs for r in g.regions if r.kind == "linear"]
    assert len(linears) == 3 and "gated_mlp" not in _kinds(), linears
    with_act = [r for r in linears if len(r.ops) == 2]
    assert len(with_act) == (0 if rest == "inductor" else 1), linears


@pytest.mark.parametrize("rest", ["inductor", "eager"])
def test_norm_after_a_residual_add_is_left_to_inductor(rest, regions_everywhere):
    """A pre-norm block's second norm reads x + attn(...): Inductor fuses that add into the
    norm, so with Inductor for the rest the norm stays as written (the block's first norm, on
    the graph's input, is a region); run eagerly, both are regions."""
    with torch.no_grad():
        _check(GPT2Block(64, 4).eval(), torch.randn(2, 12, 64), options={"rest": rest})
    norms = [r for g in REPORT.graphs for r in g.regions if r.kind == "layer_norm"]
    assert len(norms) == 2, norms
    left = [r for r in norms if r.note]
    if rest == "eager":
        assert not left, norms
    else:
        assert len(left) == 1 and "Inductor fuses the elementwise op before it" in left[0].note, norms


def test_training_step_gradients_match_eager():
    torch.manual_seed(0)
    ref = GPT2Block(32, 2, sdpa=False).train()
    m = copy.deepcopy(ref)
    x = torch.randn(2, 6, 32)
    compiled = torch.compile(m, backend="uhop", options=EAGER)
    loss = compiled(x).square().mean()
    assert loss.requires_grad
    loss.backward()
    ref(x).square().mean().backward()
    for (name, p), (_, q) in zip(m.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert "conv_bn" not in _kinds()


def test_training_conv_net_keeps_batchnorm_unfolded():
    m = ResNetSmall(4, 1).train()
    x = torch.randn(2, 3, 8, 8)
    out = torch.compile(m, backend="uhop", options=EAGER)(x)
    out.sum().backward()
    assert "conv_bn" not in _kinds() and _kinds().count("conv2d") == 3
    assert all(p.grad is not None for p in m.parameters())


def test_graph_break_is_counted_and_both_sides_run():
    def f(x, w):
        y = F.linear(x, w).softmax(-1)
        print("graph break here")
        return F.layer_norm(y, (y.shape[-1],))

    x, w = torch.randn(4, 8), torch.randn(16, 8)
    got = torch.compile(f, backend="uhop", options=EAGER)(x, w)
    y = F.linear(x.double(), w.double()).softmax(-1)
    torch.testing.assert_close(got.double(), F.layer_norm(y, (16,)), rtol=1e-4, atol=1e-5)
    assert len(REPORT.graphs) == 2
    assert sum(REPORT.graph_breaks.values()) >= 1


def test_graph_breaks_count_from_the_reports_clear():
    """Dynamo counts graph breaks for the process: a model compiled after a cleared report shows
    its own (none), not an earlier model's."""

    def broken(x):
        y = x.softmax(-1)
        print("graph break here")
        return y * 2

    torch.compile(broken, backend="uhop", options=EAGER)(torch.randn(3, 4))
    assert sum(REPORT.graph_breaks.values()) >= 1
    REPORT.clear()
    torch.compile(lambda x: F.layer_norm(x, (4,)) * 3, backend="uhop", options=EAGER)(torch.randn(3, 4))
    assert len(REPORT.graphs) == 1 and REPORT.graph_breaks == {}, REPORT.graph_breaks


def test_generate_loop_does_not_recompile_per_token():
    m = GPT2Block(32, 2).eval()
    compiled = torch.compile(m, backend="uhop", options=EAGER)
    with torch.no_grad():
        for t in range(3, 21):
            x = torch.randn(1, t, 32)
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)
    # one graph for the first length, one dynamic graph for every later length
    assert len(REPORT.graphs) <= 2 and REPORT.recompiles <= 1
    assert REPORT.graphs[-1].dynamic
    # region problems are tuned/checked per power-of-two shape class, not per length
    assert sum(r.kind == "attention" for r in REPORT.runs) <= 4


def test_region_uhop_cannot_serve_falls_back_and_says_why(regions_everywhere):
    def f(a, b):
        return a @ b  # batch dims that broadcast: no UHOP matmul problem

    a, b = torch.randn(2, 5, 8), torch.randn(3, 1, 8, 4)
    got = torch.compile(f, backend="uhop", options=EAGER)(a, b)
    torch.testing.assert_close(got, f(a, b))
    (run,) = REPORT.runs
    assert run.status == "fallback" and "broadcast batch dims" in run.reason


def test_attention_with_its_own_scale_is_a_region(regions_everywhere):
    """SDPA with ``scale=`` (T5 uses 1): the attention op's scale parameter, checked vs float64."""

    def f(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, scale=0.3)

    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    got = torch.compile(f, backend="uhop", options=EAGER)(q, k, v)
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.3)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    (run,) = REPORT.runs
    assert run.status == "uhop", run
    assert "scale" in run.problem or run.kernel, run


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention_is_a_region(regions_everywhere, causal):
    """SDPA with ``enable_gqa`` (Llama 3, Mistral, Qwen: 4 query heads per key/value head) is one
    region served by the attention op's kv_groups, checked vs float64; autograd through it."""

    def f(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    q = torch.randn(2, 8, 7, 16, requires_grad=True)
    k, v = torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    got = torch.compile(f, backend="uhop", options=EAGER)(q, k, v)
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal, enable_gqa=True)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    (run,) = REPORT.runs
    assert run.status == "uhop", run
    assert "kv_groups=4" in run.problem, run
    got.sum().backward()
    qd = q.detach().double().requires_grad_()
    F.scaled_dot_product_attention(qd, k.double(), v.double(), is_causal=causal, enable_gqa=True).sum().backward()
    torch.testing.assert_close(q.grad.double(), qd.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["sdpa", "written_out"])
def test_repeated_kv_heads_become_grouped_query_attention(regions_everywhere, form):
    """transformers' ``repeat_kv`` before SDPA (its path with a padding mask): the region reads the
    key/value heads as they are (kv_groups=4), no repeated copy; float64 numerics, gradients."""

    def repeat_kv(h, n):
        b, kv, s, d = h.shape
        return h[:, :, None, :, :].expand(b, kv, n, s, d).reshape(b, kv * n, s, d)

    def sdpa(q, k, v, m):
        return F.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4), attn_mask=m)

    def written_out(q, k, v, m):  # a model's own attention
        s = (q @ repeat_kv(k, 4).transpose(-2, -1)) * 0.25
        return torch.softmax(s.masked_fill(~m, float("-inf")), dim=-1) @ repeat_kv(v, 4)

    f = sdpa if form == "sdpa" else written_out
    q = torch.randn(2, 8, 6, 16, requires_grad=True)
    k, v = torch.randn(2, 2, 6, 16, requires_grad=True), torch.randn(2, 2, 6, 16)
    m = torch.rand(2, 1, 6, 6) > 0.3
    m[..., 0] = True
    got = torch.compile(f, backend="uhop", options=EAGER)(q, k, v, m)
    ref = [t.detach().double().requires_grad_() for t in (q, k)]
    want = f(ref[0], ref[1], v.double(), m)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    (run,) = REPORT.runs
    assert run.status == "uhop" and "kv_groups=4" in run.problem, run
    assert any(r.kind == "attention" and "expand" in r.ops for g in REPORT.graphs for r in g.regions), REPORT.graphs
    got.sum().backward()
    want.sum().backward()
    for t, r in zip((q, k), ref, strict=True):
        torch.testing.assert_close(t.grad.double(), r.grad, rtol=1e-4, atol=1e-5)


def test_repeated_kv_against_one_broadcast_query_head_is_left_as_written(regions_everywhere):
    """One query head broadcast against k/v repeated to 4 heads is not grouped-query attention
    (kv_groups would be 1/2): no fold, the model's own result."""

    def f(q, k, v):
        kk = k[:, :, None].expand(2, 2, 2, 6, 16).reshape(2, 4, 6, 16)
        vv = v[:, :, None].expand(2, 2, 2, 6, 16).reshape(2, 4, 6, 16)
        s = (q @ kk.transpose(-2, -1)) * 0.25
        return torch.softmax(s, dim=-1) @ vv

    q, k, v = torch.randn(2, 1, 6, 16), torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)
    got = torch.compile(f, backend="uhop", options=EAGER)(q, k, v)
    torch.testing.assert_close(got.double(), f(q.double(), k.double(), v.double()), rtol=1e-5, atol=1e-6)
    assert not any("kv_groups" in r.problem for r in REPORT.runs), REPORT.runs


def test_written_out_attention_through_casts_and_no_dropout(regions_everywhere):
    """softmax in float32, cast back to bf16, dropout that drops nothing (transformers' eager
    attention in a bf16 model): one attention region, within bf16's tolerance of float64."""

    def f(q, k, v):
        s = torch.matmul(q, k.transpose(2, 3)) * 0.25
        p = F.dropout(torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype), p=0.0, training=False)
        return torch.matmul(p, v)

    q, k, v = (torch.randn(2, 4, 9, 16, dtype=torch.bfloat16) for _ in range(3))
    got = torch.compile(f, backend="uhop", options=EAGER)(q, k, v)
    want = f(q.double(), k.double(), v.double())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)
    assert _kinds() == ["attention"], _kinds()
    (region,) = [r for g in REPORT.graphs for r in g.regions]
    assert {"to", "dropout", "softmax"} <= set(region.ops), region


def test_additive_mask_attention_region():
    def f(q, k, v, bias):
        s = (q @ k.transpose(-2, -1)) / 4.0
        return torch.softmax(s + bias, dim=-1) @ v

    q, k, v = (torch.randn(2, 3, 6, 16) for _ in range(3))
    bias = torch.randn(1, 1, 6, 6)
    got = torch.compile(f, backend="uhop", options=EAGER)(q, k, v, bias)
    torch.testing.assert_close(got.double(), f(q.double(), k.double(), v.double(), bias.double()), rtol=1e-4, atol=1e-5)
    assert _kinds() == ["attention"] and REPORT.runs[0].status == "uhop"


def test_fusion_report_cli_and_env(tmp_path, monkeypatch, capfd):
    from uhop.config import settings

    monkeypatch.setenv("UHOP_FUSION_REPORT", "1")
    with torch.no_grad():
        torch.compile(MLP(16), backend="uhop", options=EAGER)(torch.randn(3, 16))
    assert "[uhop] graph 0" in capfd.readouterr().err
    home = settings().home
    env = {"UHOP_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[2]), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "uhop", "fusion", "report"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 graph(s) compiled" in out.stdout and "linear + relu" in out.stdout


def test_entry_point_declared():
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '[project.entry-points."torch_dynamo_backends"]' in text
    assert 'uhop = "uhop.compile.backend:uhop_backend"' in text


def test_backend_name_works_in_a_process_that_never_imported_uhop():
    """The entry point is the whole registration: ``torch.compile(backend="uhop")`` with no
    ``import uhop`` (it failed with "duplicate name: uhop": loading the entry point imported
    uhop.compile, which registered the name before torch did)."""
    from importlib.metadata import entry_points

    if "uhop" not in entry_points(group="torch_dynamo_backends").names:
        pytest.skip("uhop is not installed (a source checkout on PYTHONPATH has no entry point)")
    code = (
        "import sys, torch\n"
        "f = torch.compile(lambda x: torch.softmax(x * 2, -1), backend='uhop', options={'rest': 'eager'})\n"
        "x = torch.randn(4, 8)\n"
        "torch.testing.assert_close(f(x), torch.softmax(x * 2, -1))\n"
        "assert 'uhop' in sys.modules\n"
    )
    from uhop.config import settings

    home = settings().home
    out = subprocess.run([sys.executable, "-c", code], env={"UHOP_HOME": str(home), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]


def test_jit_numpy_function_matches_numpy():
    import uhop

    def block(x, w1, b1, w2):
        h = x @ w1 + b1
        h = 0.5 * h * (1.0 + np.tanh(0.7978845608 * (h + 0.044715 * h**3)))
        y = h @ w2
        e = np.exp(y - y.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    rng = np.random.default_rng()
    args = [rng.standard_normal(s).astype(np.float32) for s in ((6, 16), (16, 32), (32,), (32, 8))]
    got = uhop.jit(block)(*args)
    assert isinstance(got, np.ndarray)
    want = block(*[a.astype(np.float64) for a in args])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert sorted(_kinds()) == ["matmul", "matmul", "softmax"]  # the written-out softmax is one region
    fn = uhop.optimize()(block)  # the decorator without an op name compiles the function too
    np.testing.assert_allclose(fn(*args), want, rtol=2e-4, atol=2e-5)


def test_jit_numpy_attention_written_out_becomes_one_attention_region():
    import math

    import uhop

    def attend(q, k, v, mask):
        s = q @ k.transpose(0, 2, 1) * (1.0 / math.sqrt(q.shape[-1])) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        return (s / s.sum(-1, keepdims=True)) @ v

    rng = np.random.default_rng()
    q, k, v = (rng.standard_normal((4, 16, 8)).astype(np.float32) for _ in range(3))
    mask = np.triu(np.full((16, 16), -1e10, dtype=np.float32), 1)
    got = uhop.jit(attend)(q, k, v, mask)
    want = attend(*[a.astype(np.float64) for a in (q, k, v, mask)])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert _kinds() == ["attention"]


def test_small_integer_powers_are_written_out_as_products():
    """x**2, x**3, x**4 (int or integral float exponents, numpy or torch) become products: numpy
    code reaches Inductor with the exponent lifted to a tensor and a vector pow per element (a
    numpy GPT-2's tanh-GELU ran 3x slower). Other exponents and integer bases are left alone."""
    import uhop

    def f(x, n):
        ln = ((x - x.mean(-1, keepdims=True)) ** 2).mean(-1, keepdims=True)
        gelu = 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))
        return gelu + ln + x**4.0 - np.abs(x) ** 0.5 + np.abs(x) ** 2.5, n**2

    rng = np.random.default_rng()
    x = rng.standard_normal((5, 37)).astype(np.float32)
    n = rng.integers(-9, 9, size=7)
    got, got_n = uhop.jit(f)(x, n)
    want, want_n = f(x.astype(np.float64), n)
    assert got.dtype == np.float32 and got_n.dtype == n.dtype
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(got_n, want_n)
    (g,) = REPORT.graphs
    assert sorted(r.split(": ")[1] for r in g.rewrites) == ["x**2 as x*x", "x**3 as x*x*x", "x**4 as x*x*x*x"]
    assert "rewritten  " in format_report(REPORT.to_json())

    REPORT.clear()
    torch._dynamo.reset()

    def t(x):  # HF's NewGELU writes torch.pow(x, 3.0)
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0)))) + x.pow(2)

    xt = torch.randn(4, 33, dtype=torch.float64)
    torch.testing.assert_close(torch.compile(t, backend="uhop", options=EAGER)(xt), t(xt))
    assert len(REPORT.graphs[0].rewrites) == 2

    REPORT.clear()
    torch._dynamo.reset()
    xh = torch.randn(4, 33, dtype=torch.bfloat16)  # half precision: pow rounds once, products twice
    torch.testing.assert_close(torch.compile(t, backend="uhop", options=EAGER)(xh), t(xh))
    assert REPORT.graphs[0].rewrites == []


@pytest.mark.parametrize("fill, diagonal, causal", [(-1e10, 1, True), (-np.inf, 1, True), (-1e4, 1, False),
                                                   (-1e10, 2, False)])  # fmt: skip
def test_causal_mask_written_out_becomes_is_causal(fill, diagonal, causal):
    """np.triu(np.full((T, T), c), 1) with c <= -1e9 is the causal mask: the attention region runs
    SDPA's is_causal (no T x T mask read); other fills or diagonals stay an additive mask."""
    import math

    import uhop

    def attend(q, k, v):
        T = q.shape[1]
        mask = np.triu(np.full((T, T), fill, dtype=np.float32), diagonal)
        s = q @ k.transpose(0, 2, 1) * (1.0 / math.sqrt(q.shape[-1])) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        return (s / s.sum(-1, keepdims=True)) @ v

    rng = np.random.default_rng()
    q, k, v = (rng.standard_normal((3, 19, 8)).astype(np.float32) for _ in range(3))
    got = uhop.jit(attend)(q, k, v)
    with np.errstate(invalid="ignore"):  # -inf - -inf in the float64 reference's masked rows: none here
        want = attend(*[a.astype(np.float64) for a in (q, k, v)])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert _kinds() == ["attention"]
    assert any("is_causal" in r for r in REPORT.graphs[0].rewrites) == causal


def test_softmax_written_out_in_torch_is_matched_but_tensor_max_is_not():
    def soft(x):
        e = torch.exp(x - x.amax(-1, keepdim=True))
        return e / e.sum(-1, keepdim=True)

    def not_soft(x):  # Tensor.max(dim) returns (values, indices): not the pattern's reduction
        e = torch.exp(x - x.max(-1, keepdim=True).values)
        return e / e.sum(-1, keepdim=True)

    x = torch.randn(3, 7)
    torch.testing.assert_close(torch.compile(soft, backend="uhop", options=EAGER)(x), torch.softmax(x, -1))
    assert _kinds() == ["softmax"]
    REPORT.clear()
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(not_soft, backend="uhop", options=EAGER)(x), torch.softmax(x, -1))
    assert _kinds() == []


def test_bad_option_names_the_option():
    with pytest.raises(Exception, match="rest must be 'inductor' or 'eager'"):
        torch.compile(MLP(8), backend="uhop", options={"rest": "tvm"})(torch.randn(2, 8))


def test_tune_rest_has_inductor_tune_the_rest(monkeypatch):
    """``tune_rest`` reaches Inductor as coordinate-descent tuning of the rest's kernels (a GPU-only
    effect: on CPU Inductor's C++ kernels are not tuned, the result must be the same)."""
    from torch._inductor import compile_fx as cfx

    seen = []
    real = cfx.compile_fx

    def spy(gm, ex, config_patches=None, **kw):
        seen.append(dict(config_patches or {}))
        return real(gm, ex, config_patches=config_patches, **kw)

    monkeypatch.setattr(cfx, "compile_fx", spy)
    m, x = MLP(8).eval(), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, backend="uhop", options={"tune_rest": True})(x), m(x))
    assert seen and seen[0].get("coordinate_descent_tuning") is True  # (compile_fx then calls itself)
    assert CompileOptions.make({}).tune_rest is False
    monkeypatch.setenv("UHOP_COMPILE_TUNE_REST", "1")
    assert CompileOptions.make({}).tune_rest is True
    with pytest.raises(ValueError, match="tune_rest must be True or False"):
        CompileOptions.make({"tune_rest": "yes"})


def test_regions_whose_only_candidate_is_the_aten_op_stay_as_written():
    """On a CPU with the default region backends (torch, triton) a GEMM or a norm has one
    candidate, the aten op: it stays in the graph for Inductor from the first compile, with the
    reason; attention (SDPA or UHOP's matmul+softmax) is still a region. With every backend
    allowed there is a choice, and the GEMM becomes a region."""
    m = GPT2Block(64, 4, sdpa=True).eval()
    x = torch.randn(2, 12, 64)
    with torch.no_grad():
        _check(m, x)
    regions = REPORT.graphs[0].regions
    kept = [r for r in regions if r.note]
    assert {r.kind for r in kept} == {"layer_norm", "linear"}, regions
    assert all("the aten op is UHOP's only candidate here (torch/eager)" in r.note for r in kept)
    assert [r.kind for r in regions if not r.note] == ["attention"]
    REPORT.clear()
    torch._dynamo.reset()
    with torch.no_grad():
        _check(m, x, options={"rest": "eager", "backends": "all"})
    assert any(r.kind == "linear" and not r.note for r in REPORT.graphs[0].regions), REPORT.graphs[0].regions


def test_regions_served_by_aten_are_left_as_written_on_recompile(regions_everywhere):
    """Once UHOP's kernel for a region is the aten op itself (CPU: nothing measured faster than
    torch's), a later compile leaves those ops in the graph (for Inductor) instead of a region op
    that would run the same call behind a dispatcher call; a rewrite (the explicit attention
    pattern) stays a region, and numerics still match float64 eager."""
    m = GPT2Block(64, 4, sdpa=False).eval()
    x = torch.randn(2, 12, 64)
    with torch.no_grad():
        _check(m, x)
        uhop.wait()  # the background tuning of every region's problem ends (torch only: aten)
        assert all(not r.note for r in REPORT.graphs[0].regions)
        torch._dynamo.reset()
        _check(m, x)
    second = REPORT.graphs[1].regions
    kept = [r for r in second if r.note]
    assert {r.kind for r in kept} == {"layer_norm", "linear"}, second
    assert all("served torch/eager" in r.note for r in kept)
    assert [r.kind for r in second if not r.note] == ["attention"]  # explicit pattern -> SDPA region
    from uhop.compile.report import format_graph

    assert "left as written" in format_graph(REPORT.graphs[1])


@pytest.mark.parametrize("rest", ["eager", "inductor"])
def test_in_place_update_of_an_input_is_kept(rest):
    """An unused ``x.add_(1)`` is a side effect: dead-code elimination after partitioning
    dropped it (the caller's tensor was never updated)."""

    def f(x, y):
        x.add_(1)
        x[0] = 5.0
        return x * y

    x, y = torch.randn(8), torch.randn(8)
    want = x.clone()
    want.add_(1)
    want[0] = 5.0
    c = torch.compile(f, backend="uhop", options={"rest": rest})
    with torch.no_grad():
        out = c(x, y)
    torch.testing.assert_close(x, want)
    torch.testing.assert_close(out, want * y)


def test_vendor_first_regions_stay_as_written_until_uhop_measured_them(monkeypatch, regions_everywhere):
    """The GPU rule, exercised on CPU: a GEMM region with nothing measured stays as written (for
    Inductor) while its problem tunes in the background; once measured, a later compile keeps it
    as written only because the measured winner is the aten op; norms become regions at once."""
    from uhop.compile import runtime
    from uhop.store import open_store

    monkeypatch.setattr(runtime, "vendor_first", lambda kind, device: kind in runtime.VENDOR_FIRST)
    m = GPT2Block(64, 4).eval()
    x = torch.randn(2, 12, 64)
    with torch.no_grad():
        _check(m, x)
    first = {r.kind: r.note for r in REPORT.graphs[0].regions}
    assert first["layer_norm"] == ""
    assert "vendor kernel until UHOP measures a faster one" in first["linear"]
    # the MLP's linear + tanh-GELU is a region at once: a fused epilogue, once measured, is
    # swapped in within this process
    fc = [r for r in REPORT.graphs[0].regions if r.kind == "linear" and len(r.ops) == 2]
    assert len(fc) == 1 and fc[0].note == "", REPORT.graphs[0].regions
    uhop.wait()
    assert {e.op for e in open_store().entries()} >= {"matmul", "attention"}  # queued at compile time
    torch._dynamo.reset()
    with torch.no_grad():
        _check(m, x)
    second = [r for r in REPORT.graphs[1].regions if r.kind == "linear"]
    assert second and all(r.note.startswith("left as written: served torch/eager") for r in second), second


def test_convs_stay_with_inductor_whatever_won(monkeypatch):
    """With Inductor compiling the rest a conv (and conv+bn) stays as written before anything is
    looked up or tuned, whether cuDNN/oneDNN or a generated kernel won its tuning; run eagerly,
    the vendor-first rule decides instead (see ``runtime.CONVS``)."""
    from uhop.compile import runtime

    x, w = torch.randn(2, 3, 10, 10), torch.randn(8, 3, 3, 3)
    conv = (x, w, None, 1, 1, "none")
    bn = (x, w, None, torch.randn(8), torch.rand(8) + 0.5, torch.randn(8), torch.randn(8), 1e-5, 1, 1, "relu")
    with runtime.using(runtime.RegionOptions.of(rest="inductor")):
        for kind, args in (("conv2d", conv), ("conv_bn", bn)):
            assert runtime.leave_as_written(kind, args).startswith("Inductor's convolution")
    with runtime.using(runtime.RegionOptions.of(rest="eager")):
        assert not (runtime.leave_as_written("conv2d", conv) or "").startswith("Inductor's convolution")


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh"])
def test_gated_mlp_is_one_region_and_trains(act, regions_everywhere):
    m = _Gated(act=act)
    x = torch.randn(3, 9, 24)
    with torch.no_grad():
        _check(m, x)
    region = next(r for g in REPORT.graphs for r in g.regions if r.kind == "gated_mlp")
    assert region.ops == ["linear", "silu" if act == "silu" else "gelu", "linear", "mul"] and not region.note
    assert region.bytes_saved == 2 * 3 * 3 * 9 * 40 * 4  # three M x N float32 intermediates, written and read
    run = next(r for r in REPORT.runs if r.kind == "gated_mlp")
    assert run.status == "uhop" and run.problem.startswith("gated_mlp[27x40x24]"), run
    # a training step: gradients through the region (the reference's vjp) match eager's
    REPORT.clear()
    torch._dynamo.reset()
    m2, xs = copy.deepcopy(m), x.clone().requires_grad_()
    torch.compile(m2, backend="uhop", options=EAGER)(xs).square().sum().backward()
    xe = x.clone().requires_grad_()
    m(xe).square().sum().backward()
    torch.testing.assert_close(xs.grad, xe.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m2.gate.weight.grad, m.gate.weight.grad, rtol=1e-4, atol=1e-5)
    assert "gated_mlp" in _kinds()


@pytest.mark.parametrize("variant", ["bias", "share"])
def test_gated_mlp_needs_bias_free_projections_used_only_by_the_product(variant, regions_everywhere):
    m = _Gated(bias=variant == "bias", share=variant == "share")
    with torch.no_grad():
        _check(m, torch.randn(2, 5, 24))
    assert "gated_mlp" not in _kinds() and _kinds().count("linear") == 3


def test_llama_block_forms_the_gated_region(regions_everywhere):
    from zoo import LlamaBlock

    m = LlamaBlock(d=32, heads=4, ff=48, ctx=16).eval()
    with torch.no_grad():
        _check(m, torch.randn(2, 8, 32), atol=5e-4)
    kinds = _kinds()
    assert kinds.count("gated_mlp") == 1 and kinds.count("linear") == 5, kinds  # q, k, v, o, down


def test_frozen_weights_never_serve_stale_results(monkeypatch):
    """Under torch._inductor.config.freezing the rest is compiled with the weights as constants;
    a weight changed in place afterwards makes the graph run as written (one warning), with the
    new weights, instead of the frozen graph's stale result."""
    import torch._inductor.config as inductor_config

    from uhop.compile.frozen import FrozenGuard

    monkeypatch.setattr(inductor_config, "freezing", True)
    m = GPT2Block(32, 4).eval()
    x = torch.randn(2, 6, 32)
    guards = []
    import uhop.compile.frozen as fz

    real = fz.FrozenGuard

    def spy(*a, **k):
        g = real(*a, **k)
        guards.append(g)
        return g

    monkeypatch.setattr(fz, "FrozenGuard", spy)
    with torch.no_grad():
        c = torch.compile(m, backend="uhop")
        torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-5)
        assert guards and isinstance(guards[0], FrozenGuard) and not guards[0].thawed
        for p in m.parameters():
            p.mul_(0.9)
        with pytest.warns(UserWarning, match="changed after it was frozen"):
            got = c(x)
        torch.testing.assert_close(got, m(x), rtol=1e-4, atol=1e-5)  # the new weights, not the frozen ones
        assert guards[0].thawed
        torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-5)


def test_without_freezing_no_guard(monkeypatch):
    import uhop.compile.frozen as fz

    made = []
    monkeypatch.setattr(fz, "FrozenGuard", lambda *a, **k: made.append(1))
    with torch.no_grad():
        _check(GPT2Block(32, 4).eval(), torch.randn(2, 6, 32), options={"rest": "inductor"})
    assert not made


class _Lin(torch.nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(32, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x))


class _Lin2(_Lin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x)) * 2.0


def test_each_compiled_graph_keeps_its_own_options(regions_everywhere):
    """Two models compiled with different options: each graph's regions read its own when they
    first run for a new shape (options were module-wide, so the last compile's won: here the
    first model's linear of 9 rows was tuned over the second model's backends). The two differ
    in width (and shape class: 48 and 40 columns are one pow2 class): a problem stored by one
    model is served to the other whatever its backend."""
    torch.manual_seed(0)
    m1, m2 = _Lin(48).eval(), _Lin2(24).eval()
    c1 = torch.compile(m1, backend="uhop", dynamic=True, options={"rest": "eager", "backends": "numpy"})
    c2 = torch.compile(m2, backend="uhop", dynamic=True, options={"rest": "eager", "backends": "torch"})
    with torch.no_grad():
        for model, compiled, rows in ((m1, c1, 5), (m2, c2, 5), (m1, c1, 9), (m2, c2, 9)):
            x = torch.randn(rows, 32)
            want = copy.deepcopy(model).double()(x.double())
            torch.testing.assert_close(compiled(x).double(), want, rtol=2e-4, atol=2e-4)
    runs = [r for r in REPORT.runs if r.kind == "linear"]
    assert len(runs) == 4 and all(r.status == "uhop" for r in runs), runs
    # in call order: model 1's kernels are numpy's, model 2's torch's, for both shape classes
    assert [r.kernel.split("/")[0] for r in runs] == ["numpy", "torch", "numpy", "torch"], runs
