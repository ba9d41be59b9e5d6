"""``uhop.ops`` and ``@uhop.optimize`` functions inside ``torch.compile``: one custom op node per
call (no graph break, ``fullgraph=True`` works), numerics and gradients against float64 torch
references written out here, and UHOP's dispatch serving the node when the graph runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import uhop
from uhop import config
from uhop.ops import in_graph

D = torch.float64


@pytest.fixture(autouse=True)
def _fast_policy():
    torch._dynamo.reset()
    with config.override(policy="fast"):  # choose without timing: these tests are about the graph
        yield
    torch._dynamo.reset()


def _r(*shape, dtype=D, grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def _gelu_tanh(y):
    return 0.5 * y * (1 + torch.tanh(0.7978845608028654 * (y + 0.044715 * y**3)))


def _ln(x, w, b, eps):
    m = x.mean(-1, keepdim=True)
    return (x - m) / torch.sqrt(((x - m) ** 2).mean(-1, keepdim=True) + eps) * w + b


def _attn(q, k, v, mask, causal):
    s = q @ k.mT / q.shape[-1] ** 0.5
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v


# (name, uhop call, the same computed by hand, input shapes, the inputs that take gradients)
CASES = [
    ("matmul", lambda a, b, c: uhop.ops.matmul(a, b, c, activation="gelu_tanh", trans_b=True),
     lambda a, b, c: _gelu_tanh(a @ b.T + c), [(6, 16), (24, 16), (24,)]),
    ("softmax", lambda x: uhop.ops.softmax(x * 3), lambda x: torch.exp(3 * x) / torch.exp(3 * x).sum(-1, keepdim=True),
     [(5, 33)]),
    ("layernorm", lambda x, w, b: uhop.ops.layernorm(x, w, b, eps=1e-3), lambda x, w, b: _ln(x, w, b, 1e-3),
     [(7, 40), (40,), (40,)]),
    ("rmsnorm", lambda x, w: uhop.ops.rmsnorm(x, w), lambda x, w: x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w,
     [(7, 40), (40,)]),
    ("elementwise", lambda x, y: uhop.ops.elementwise("x0*sigmoid(x0)+x1", x, y, reduce="sum"),
     lambda x, y: (x * torch.sigmoid(x) + y).sum(-1), [(9, 20), (20,)]),
    ("gated_mlp", lambda x, g, u: uhop.ops.gated_mlp(x, g, u),
     lambda x, g, u: x @ g.T * torch.sigmoid(x @ g.T) * (x @ u.T), [(5, 16), (24, 16), (24, 16)]),
    # SDPA's keywords: grouped-query heads (2 per k/v head) and a scale of its own
    ("attention", lambda q, k, v: uhop.ops.attention(q, k, v, is_causal=True, enable_gqa=True, scale=0.3),
     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=0.3),
     [(2, 4, 6, 8), (2, 2, 6, 8), (2, 2, 6, 8)]),
    ("conv2d", lambda x, w, b: uhop.ops.conv2d(x, w, b, stride=2, padding=1),
     lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [(2, 3, 9, 9), (4, 3, 3, 3), (4,)]),
]  # fmt: skip


@pytest.mark.parametrize("name,call,want,shapes", CASES, ids=[c[0] for c in CASES])
def test_each_op_is_one_node_and_matches_float64(name, call, want, shapes):
    args = [_r(*s) for s in shapes]
    explained = torch._dynamo.explain(call)(*args)
    assert explained.graph_break_count == 0, explained.break_reasons
    targets = [str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert f"uhop_ops.{name}.default" in targets, targets
    got = torch.compile(call, backend="aot_eager", fullgraph=True)(*args)
    torch.testing.assert_close(got, want(*args), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,call,want,shapes", CASES, ids=[c[0] for c in CASES])
def test_gradients_through_each_op_match_float64(name, call, want, shapes):
    args = [_r(*s, grad=True) for s in shapes]
    ref = [a.detach().clone().requires_grad_() for a in args]
    w = torch.randn_like(want(*ref))
    (torch.compile(call, backend="aot_eager", fullgraph=True)(*args) * w).sum().backward()
    (want(*ref) * w).sum().backward()
    for a, r in zip(args, ref, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-8, atol=1e-9)


def test_attention_with_a_mask_and_embedding_in_one_graph():
    q, k, v = (_r(2, 6, 8, grad=True) for _ in range(3))
    mask = torch.rand(6, 6) > 0.3
    mask[:, 0] = True  # every query keeps a key
    emb, idx = _r(50, 8, grad=True), torch.randint(0, 50, (2, 6))

    def f(q, k, v, emb):
        return uhop.ops.attention(q + uhop.ops.embedding(emb, idx), k, v, mask, causal=True)

    got = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v, emb)
    refs = [t.detach().clone().requires_grad_() for t in (q, k, v, emb)]
    want = _attn(refs[0] + refs[3][idx], refs[1], refs[2], mask, True)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    got.pow(2).sum().backward()
    want.pow(2).sum().backward()
    for a, r in zip((q, k, v, emb), refs, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-8, atol=1e-9)


def test_the_compiled_node_runs_uhops_dispatch_and_its_store():
    from uhop.store import open_store

    x = torch.randn(12, 70)
    with config.override(policy="tune"):
        torch.compile(lambda x: uhop.ops.softmax(x) + 1, fullgraph=True)(x)
    keys = [e.key for e in open_store().entries("softmax")]
    assert any(k.startswith("softmax:12x70:float32") for k in keys), keys


def test_nodes_keep_guards_of_their_own_and_leave_eagers_alone():
    """torch's tensor guards check the dispatch-key state, which differs inside a node (autograd
    keys excluded): an eager guard never passes there. Before, every node call added an entry to
    the eager op's list (4 slots a name) that eager calls then failed in turn."""
    from uhop.dispatch import _direct_cache

    x = torch.randn(9, 31)
    with torch.no_grad():
        uhop.ops.softmax(x)
        uhop.ops.softmax(x)  # the key path's hit: one guard for the eager list
        eager = _direct_cache.guarded.get("softmax", ())
        assert len(eager) == 1 and eager[0][2].check(x)
        node = torch.ops.uhop_ops.softmax.default
        for _ in range(5):
            torch.testing.assert_close(node(x), torch.softmax(x, -1))
        assert _direct_cache.guarded.get("softmax", ()) == eager  # untouched by the nodes
        assert len(_direct_cache.guarded.get("softmax@node", ())) == 1  # one guard, passing in nodes
        uhop.ops.softmax(x)
        assert _direct_cache.guarded.get("softmax", ()) == eager


def test_decorated_function_is_compiled_as_written():
    @uhop.optimize("layernorm")
    def ln(x, w, b):
        return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)

    x, w, b = _r(6, 32), _r(32), _r(32)
    explained = torch._dynamo.explain(lambda x: ln(x, w, b) * 2)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    got = torch.compile(lambda x: ln(x, w, b) * 2, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(got, 2 * _ln(x, w, b, 1e-5), rtol=1e-9, atol=1e-9)


def test_a_call_the_custom_op_cannot_take_is_traced_as_before():
    assert not in_graph.takes("matmul", (torch.ones(2, 2), torch.ones(2, 2)), {"precision": "tf32"})
    assert not in_graph.takes("softmax", ([1.0, 2.0],), {})
    assert in_graph.takes("layernorm", (torch.ones(2, 2), None, None), {"eps": 1e-3})


def test_numpy_arrays_in_a_compiled_numpy_function_are_one_node_each():
    """``uhop.ops`` on numpy arrays inside ``uhop.jit`` / ``torch.compile`` of numpy code (which
    Dynamo traces as tensors): one node per call, arrays in and out, no graph break, float64
    numerics. Traced into the dispatcher, the first compile failed ('ndarray' object has no
    attribute 'is_contiguous')."""
    import numpy as np

    rng = np.random.default_rng()
    x, w = rng.standard_normal((24, 16)).astype(np.float32), rng.standard_normal((16, 40)).astype(np.float32)
    g, b = rng.standard_normal(40).astype(np.float32), rng.standard_normal(40).astype(np.float32)

    def f(x, w, g, b):
        h = uhop.ops.layernorm(uhop.ops.softmax(x @ w) * 3.0, g, b, eps=1e-4)
        return uhop.ops.elementwise("x0*sigmoid(x0)", h)

    explained = torch._dynamo.explain(f)(x, w, g, b)
    assert explained.graph_break_count == 0, explained.break_reasons
    nodes = [str(n.target) for gm in explained.graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert sum("uhop_ops" in t for t in nodes) == 3, nodes
    torch._dynamo.reset()
    got = uhop.jit(f)(x, w, g, b)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (24, 40)
    h = x.astype(np.float64) @ w
    e = np.exp(h - h.max(-1, keepdims=True))
    s = 3 * e / e.sum(-1, keepdims=True)
    n = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-4) * g + b
    np.testing.assert_allclose(got, n / (1 + np.exp(-n)), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("op", ["softmax", "layernorm", "matmul", "elementwise"])
def test_custom_ops_pass_torch_opcheck(op):
    args = {
        "softmax": (_r(4, 9, grad=True),),
        "layernorm": (_r(4, 9, grad=True), _r(9, grad=True), None, 1e-4),
        "matmul": (_r(3, 5, grad=True), _r(5, 4, grad=True), _r(4), "silu", False),
        "elementwise": ("x0*x1-exp(x0)", "mean", [_r(3, 6, grad=True), _r(3, 6)]),
    }[op]
    torch.library.opcheck(in_graph.OPS[op], args)


def test_works_when_uhop_was_imported_before_torch():
    code = (
        "import uhop\n"
        "import torch\n"
        "x = torch.randn(4, 8)\n"
        "f = torch.compile(lambda x: uhop.ops.softmax(x) * 2, backend='eager', fullgraph=True)\n"
        "torch.testing.assert_close(f(x), torch.softmax(x, -1) * 2)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"UHOP_HOME": str(config.settings().home), "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": ":".join(p for p in sys.path if p)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


def test_inductor_and_the_uhop_backend_keep_the_node():
    x, w = torch.randn(16, 32), torch.randn(32, 32) / 6

    def f(x):
        return uhop.ops.rmsnorm(torch.relu(x @ w)) * 0.5

    want = f(x)
    for backend, options in (("inductor", None), ("uhop", {"rest": "eager"})):
        torch._dynamo.reset()
        got = torch.compile(f, backend=backend, options=options, fullgraph=True)(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_torch_export_keeps_the_nodes_and_a_saved_program_runs(tmp_path):
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(16, 24, dtype=D) / 4)
            self.g = torch.nn.Parameter(torch.rand(24, dtype=D) + 0.5)

        def forward(self, x):
            return uhop.ops.softmax(uhop.ops.rmsnorm(x @ self.w, self.g))

    m, x = M(), _r(5, 16)
    ep = torch.export.export(m, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"uhop_ops.rmsnorm.default", "uhop_ops.softmax.default"} <= targets, targets
    torch.export.save(ep, tmp_path / "m.pt2")
    got = torch.export.load(tmp_path / "m.pt2").module()(x)
    with torch.no_grad():
        h = x @ m.w
        want = torch.softmax(h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-6) * m.g, -1)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_a_script_that_exits_while_its_regions_tune_exits_cleanly(tmp_path):
    """A uhop.jit script whose last calls queued background tuning, exiting without waiting for
    it (UHOP_EXIT_WAIT_S=0, or past the wait): the tuning thread is stopped at its next candidate
    and joined before the interpreter finalizes. Left running, it aborted the process at exit
    ("terminate called without an active exception", status 134) after every such script."""
    code = textwrap.dedent("""
        import math
        import numpy as np
        import uhop

        def attn(q, k, v):
            s = q @ k.transpose(0, 2, 1) * (1.0 / math.sqrt(q.shape[-1]))
            s = np.exp(s - s.max(-1, keepdims=True))
            return (s / s.sum(-1, keepdims=True)) @ v

        rng = np.random.default_rng(0)
        f = uhop.jit(attn)
        for t in (8, 24):
            q, k, v = (rng.standard_normal((4, t, 16)).astype(np.float32) for _ in range(3))
            f(q, k, v)
        from uhop.tune.background import queue
        print("pending", queue().pending(), flush=True)
    """)
    env = {"UHOP_HOME": str(tmp_path), "UHOP_EXIT_WAIT_S": "0", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": ":".join(p for p in sys.path if p)}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert "pending 0" not in out.stdout, "nothing was tuning at exit: the test tests nothing"
