"""The region runtime's hot path and choices: the aten op called directly when it is the tuned
kernel, a failed check holding for the whole shape class, and SDPA's fused kernel for 3-D inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import uhop.compile  # noqa: F401 - registers torch.ops.uhop.*
from uhop.compile import REPORT, runtime


def _served_fn(kind: str):
    """The function the region's cached kernel calls now (after its first call)."""
    (k,) = [v for s, v in runtime._kernels.items() if s[0] == kind]
    return k.current()


def test_region_served_by_torch_eager_calls_the_aten_op_directly():
    x, w, b = torch.randn(2, 5, 16), torch.randn(24, 16), torch.randn(24)
    with torch.inference_mode():
        got = torch.ops.uhop.linear(x, w, b, "gelu_tanh")
        uhop.wait()
        got = torch.ops.uhop.linear(x, w, b, "gelu_tanh")
    torch.testing.assert_close(got, F.gelu(F.linear(x, w, b), approximate="tanh"))
    assert _served_fn("linear") is runtime._aten_linear  # no adapters between region and aten


def test_failed_check_holds_for_every_signature_of_the_shape_class(monkeypatch):
    monkeypatch.setattr(runtime, "_check", lambda *a: ("made to fail", 1.0, None))
    with torch.inference_mode():
        torch.ops.uhop.softmax(torch.randn(3, 33))
        torch.ops.uhop.softmax(torch.randn(3, 40))  # same pow2 class (64), another signature
    assert all(v is runtime.REFERENCE["softmax"] for v in runtime._kernels.values())
    assert [r.status for r in REPORT.runs] == ["fallback"]  # checked once per class


def test_sdpa_candidate_takes_the_fused_kernel_for_3d_inputs():
    from torch.profiler import ProfilerActivity, profile

    from uhop.backends.torch import _sdpa

    q, k, v = (torch.randn(12, 64, 32) for _ in range(3))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        got = _sdpa(q, k, v, None, True)
    names = {e.key for e in prof.key_averages()}
    assert any("flash_attention" in n for n in names), sorted(names)
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    mask = torch.randn(12, 64, 64)  # a 3-D additive mask still broadcasts
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
    torch.testing.assert_close(_sdpa(q, k, v, mask, False).double(), want, rtol=1e-4, atol=1e-5)


def test_region_attention_served_by_sdpa_takes_the_fused_kernel_for_3d_inputs():
    """The region's direct aten call (no adapters) runs 3-D inputs as SDPA's candidate does: one
    4-D batch, the flash kernel (3-D takes the math path: 3.4x slower for a numpy GPT-2's
    12 x 1024 x 64 attention on the 2-core CPU), with the mask, is_causal and scale kept."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v = (torch.randn(12, 48, 32) for _ in range(3))
    mask = torch.triu(torch.full((48, 48), -1e10), 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        got = runtime._aten_attention(q, k, v, mask, False, None)
    assert any("flash_attention" in e.key for e in prof.key_averages())
    q64, k64, v64, m64 = (t.double() for t in (q, k, v, mask))
    want = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=m64)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    pad = torch.zeros(48, 48).masked_fill(torch.rand(48, 48) < 0.2, float("-inf")).fill_diagonal_(0.0)
    got = runtime._aten_attention(q, k, v, pad, True, 0.3)  # a mask and causal together, a scale
    causal = torch.ones(48, 48, dtype=torch.bool).tril()
    want = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=pad.double().masked_fill(~causal, float("-inf")),
                                          scale=0.3)  # fmt: skip
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def _problem(op: str, args, params):
    from uhop.dispatch import make_problem
    from uhop.ops import get as get_op

    return make_problem(get_op(op), args, params)


def test_first_use_check_on_a_sample_of_a_large_region_finds_a_wrong_edge_row():
    # 4 x 300 rows: over ROWS_CHECKED, so the check compares a sample that keeps both edges
    x, w, b = torch.randn(4, 300, 64), torch.randn(48, 64), torch.randn(48)
    args = (x, w, b, "gelu")
    p = _problem("matmul", (x.reshape(-1, 64), w, b), {"activation": "gelu", "trans_b": True})
    ref = runtime.REFERENCE["linear"]
    assert runtime._check("linear", args, ref, p)[0] == ""

    def last_row_wrong(*a):
        y = ref(*a).clone()
        y[-1, -1, 0] += 1.0
        return y

    reason, err, _ = runtime._check("linear", args, last_row_wrong, p)
    assert "differs from the float64 reference" in reason and err >= 0.5
    sampled = runtime._sample("linear", args, ref(*args))
    assert sampled is not None and sampled[0][0].shape == (runtime.ROWS_CHECKED, 64)


def test_first_use_check_samples_attention_by_batch_with_its_mask():
    B, H, L, D = 6, 2, 16, 8
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    mask = torch.rand(B, 1, L, L) > 0.3
    mask[..., 0] = True  # no fully masked row
    args = (q, k, v, mask, False, None)
    p = _problem("attention", (q, k, v, mask), {"causal": False})
    ref = runtime.REFERENCE["attention"]
    assert runtime._check("attention", args, ref, p)[0] == ""

    def ignores_mask(q, k, v, mask, causal, scale):
        return ref(q, k, v, None, causal, scale)

    assert "differs" in runtime._check("attention", args, ignores_mask, p)[0]
    (sq, sk, sv, smask, *_), out = runtime._sample("attention", args, ref(*args))
    assert sq.shape[0] == runtime.BATCH_CHECKED and smask.shape[0] == runtime.BATCH_CHECKED and out.shape[0] == 3


def test_small_regions_are_checked_whole():
    x = torch.randn(8, 33)
    assert runtime._sample("softmax", (x,), torch.softmax(x, -1)) is None


def test_first_use_check_refuses_a_wrong_output_shape_before_sampling():
    x, w, b = torch.randn(4, 300, 64), torch.randn(48, 64), torch.randn(48)
    args = (x, w, b, "none")
    p = _problem("matmul", (x.reshape(-1, 64), w, b), {"activation": "none", "trans_b": True})

    def flat(*a):  # right values, rows not unflattened
        return runtime.REFERENCE["linear"](*a).reshape(-1, 48)

    reason, err, out = runtime._check("linear", args, flat, p)
    assert reason.startswith("kernel returned shape (1200, 48), expected (4, 300, 48)") and out is None


def test_first_call_runs_the_region_kernel_once():
    calls = []
    x = torch.randn(512, 96)
    ref = runtime.REFERENCE["softmax"]
    runtime.clear()

    def counting(x):
        calls.append(1)
        return ref(x)

    import unittest.mock as um

    with um.patch.object(runtime, "_plan", lambda kind, args: (_problem("softmax", args, {}), counting, "test/count")):
        with torch.inference_mode():
            got = torch.ops.uhop.softmax(x)
    torch.testing.assert_close(got, ref(x))
    assert len(calls) == 1


def test_conv_bn_is_looked_up_and_tuned_as_the_folded_conv_it_runs(monkeypatch):
    """At compile time a conv+batchnorm region is judged by the problem it runs: the folded conv,
    which always has a bias, even when the conv had none (ResNet's). With the conv's own (absent)
    bias the compile step queued and looked up another problem than the region resolved: on the
    H100 a warm process formed the stem conv's region from a stored winner, then found nothing
    stored for the region's own problem and tuned it again (5 s, served by the interim meanwhile)."""
    import uhop
    from uhop.store import open_store

    x, w = torch.randn(2, 3, 10, 10), torch.randn(8, 3, 3, 3)
    mean, var, gamma, beta = torch.randn(8), torch.rand(8) + 0.5, torch.randn(8), torch.randn(8)
    args = (x, w, None, mean, var, gamma, beta, 1e-5, 1, 1, "relu")
    # more than the aten op to tune; run eagerly (with Inductor's rest convs are never regions)
    monkeypatch.setattr(runtime, "LAST", [runtime.RegionOptions.of("exact", ("torch", "numpy"), "eager")])
    why = runtime.leave_as_written("conv_bn", args)  # nothing stored: vendor first, tuning queued
    assert why is not None and "tuning in the background" in why
    assert uhop.wait(timeout=300)
    (entry,) = open_store().entries("conv2d")
    with torch.inference_mode():
        problem, _, _ = runtime._plan("conv_bn", args)
    assert entry.key == problem.key("exact")
    assert entry.problem["arity"] == 3


def test_folded_conv_bn_is_never_served_for_other_tensors_at_the_same_addresses():
    """The fold cache keys on the tensors themselves, not only their addresses and versions: a new
    model's parameters often land at a freed one's addresses with version 0 again."""
    mem = [torch.randn(8, 4, 3, 3), torch.randn(8), torch.randn(8), torch.rand(8) + 0.5, torch.randn(8), torch.randn(8)]

    def ref(ts):
        w, b, mean, var, gamma, beta = (t.double() for t in ts)
        scale = gamma / torch.sqrt(var + 1e-5)
        return w * scale.view(-1, 1, 1, 1), (b - mean) * scale + beta

    old = [m.data for m in mem]  # tensors over mem's storages, version 0
    wf, bf = runtime._fold(*old, 1e-5)
    torch.testing.assert_close((wf.double(), bf.double()), ref(old), rtol=1e-5, atol=1e-5)  # float32 fold
    del old, wf, bf
    for m in mem:
        m.data.copy_(torch.randn_like(m).abs() + 0.5)  # rewritten, as by a new owner
    new = [m.data for m in mem]  # other tensor objects at the same addresses, version 0
    assert all(n.data_ptr() == m.data_ptr() and n._version == 0 for n, m in zip(new, mem, strict=True))
    wf, bf = runtime._fold(*new, 1e-5)
    torch.testing.assert_close((wf.double(), bf.double()), ref(new), rtol=1e-5, atol=1e-5)
