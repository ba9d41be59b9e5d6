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
    monkeypatch.setattr(runtime, "_check", lambda *a: ("made to fail", 1.0))
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
