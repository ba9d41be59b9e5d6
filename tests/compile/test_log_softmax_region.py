"""``F.log_softmax`` over the last dim in a compiled model is a UHOP region (``log_softmax``):
eager's numbers forward (float64 eager as the reference), and eager's gradients in training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import uhop.compile  # noqa: F401 - registers backend="uhop" for a source checkout
from uhop.compile import REPORT


class Head(torch.nn.Module):
    """An LM head's last steps: projection, then log-probabilities (three spellings)."""

    def __init__(self, spelling: str):
        super().__init__()
        self.proj = torch.nn.Linear(32, 301)
        self.spelling = spelling

    def forward(self, h):
        z = self.proj(h)
        if self.spelling == "F":
            return F.log_softmax(z, dim=-1)
        if self.spelling == "torch":
            return torch.log_softmax(z, z.dim() - 1)
        return z.log_softmax(-1)


@pytest.fixture
def regions_everywhere(monkeypatch):
    from uhop.compile import runtime

    monkeypatch.setattr(runtime, "_aten_only", lambda problem, aten_id: False)


@pytest.mark.parametrize("spelling", ["F", "torch", "method"])
def test_log_softmax_region_matches_float64_eager(spelling, regions_everywhere):
    m = Head(spelling).eval()
    x = torch.randn(3, 7, 32) * 4
    want = copy.deepcopy(m).double()(x.double())
    with torch.no_grad():
        got = torch.compile(m, backend="uhop", options={"rest": "eager"})(x)
    torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-4)
    kinds = [r.kind for g in REPORT.graphs for r in g.regions]
    assert kinds.count("log_softmax") == 1, kinds
    runs = [r for r in REPORT.runs if r.kind == "log_softmax"]
    assert runs and all(r.status == "uhop" for r in runs), runs


def test_other_dims_and_dtype_casts_stay_with_aten():
    class Odd(torch.nn.Module):
        def forward(self, z):
            return F.log_softmax(z, dim=0) + torch.log_softmax(z, -1, torch.float64).float()

    z = torch.randn(5, 9)
    torch.testing.assert_close(torch.compile(Odd(), backend="uhop", options={"rest": "eager"})(z), Odd()(z))
    assert "log_softmax" not in [r.kind for g in REPORT.graphs for r in g.regions]


def test_training_through_the_region_has_eagers_gradients(regions_everywhere):
    m = Head("F")
    ref = copy.deepcopy(m)
    x, y = torch.randn(16, 32), torch.randint(0, 301, (16,))
    F.nll_loss(torch.compile(m, backend="uhop", options={"rest": "eager"})(x), y).backward()
    F.nll_loss(ref(x), y).backward()
    torch.testing.assert_close(m.proj.weight.grad, ref.proj.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m.proj.bias.grad, ref.proj.bias.grad, rtol=1e-4, atol=1e-6)
