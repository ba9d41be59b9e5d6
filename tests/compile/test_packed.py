"""CPU inference under backend="uhop": linear layers on MKL-packed weights (uhop.compile.packed).
Numerics against float64 on fresh random inputs; one pack per parameter across calls; a repack
(never a stale result) after an in-place update or for another model; no packing for training
graphs, with the option off, or outside the packed row range."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import uhop.compile  # noqa: F401 - registers backend="uhop" for a source checkout
from uhop.compile import REPORT, packed

sys.path.insert(0, str(Path(__file__).parent))
from zoo import GPT2Block  # noqa: E402

pytestmark = pytest.mark.skipif(not packed.available(), reason="this torch has no MKL packed linear ops")


class Net(nn.Module):
    def __init__(self, d: int = 64, h: int = 192) -> None:
        super().__init__()
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x), approximate="tanh")) + x


def _ref(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(m).double()(x.double())


def _packed_rewrites() -> list[str]:
    return [r for g in REPORT.graphs for r in g.rewrites if "MKL-packed" in r]


def test_packed_weights_match_float64_and_pack_once():
    m = Net().eval()
    c = torch.compile(m, backend="uhop")
    before = packed.STATS["packs"]
    with torch.no_grad():
        for _ in range(4):
            x = torch.randn(2, 16, 64)  # 32 rows: the packed range
            torch.testing.assert_close(c(x).double(), _ref(m, x), rtol=1e-4, atol=1e-4)
    assert packed.STATS["packs"] - before == 2  # one per parameter, not per call
    assert len(_packed_rewrites()) == 2, [g.rewrites for g in REPORT.graphs]
    notes = [r.note for g in REPORT.graphs for r in g.regions if r.kind == "linear"]
    assert notes and all("MKL-packed" in n for n in notes), notes


def test_in_place_update_and_another_model_repack():
    m = Net().eval()
    c = torch.compile(m, backend="uhop")
    x = torch.randn(3, 8, 64)
    with torch.no_grad():
        c(x)
        new = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
        m.load_state_dict(new)  # in place: the version counters move, the storages stay
        before = packed.STATS["packs"]
        torch.testing.assert_close(c(x).double(), _ref(m, x), rtol=1e-4, atol=1e-4)
        assert packed.STATS["packs"] - before == 2
        m.up.weight.mul_(0.5)
        torch.testing.assert_close(c(x).double(), _ref(m, x), rtol=1e-4, atol=1e-4)
        other = Net().eval()  # same architecture: Dynamo may reuse the graph, never the packs
        got = torch.compile(other, backend="uhop")(x)
        torch.testing.assert_close(got.double(), _ref(other, x), rtol=1e-4, atol=1e-4)


def test_rows_outside_the_packed_range_and_odd_layouts_run_aten():
    m = Net().eval()
    c = torch.compile(m, backend="uhop", dynamic=True)
    with torch.no_grad():
        for rows in (1, 5, 200, packed.PACK_MAX_M + 3):  # 1: MKL's GEMV path; the last above PACK_MAX_M
            x = torch.randn(rows, 64)
            torch.testing.assert_close(c(x).double(), _ref(m, x), rtol=1e-4, atol=1e-4)
    # the op itself: a transposed (non-contiguous) weight, an inference tensor, float64
    w, b = torch.randn(48, 32), torch.randn(48)
    x = torch.randn(7, 32)
    for ww, xx in ((w.t().contiguous().t(), x), (w.double(), x.double())):
        torch.testing.assert_close(packed.OP(xx, ww, b.to(xx.dtype)), F.linear(xx, ww, b.to(xx.dtype)))
    with torch.inference_mode():
        wi = torch.randn(48, 32)
        before = packed.STATS["packs"]
        torch.testing.assert_close(packed.OP(x, wi, b), F.linear(x, wi, b))
        assert packed.STATS["packs"] == before  # no version counter: never cached, never packed


def test_training_graphs_and_the_option_off_do_not_pack():
    m = Net()
    x = torch.randn(4, 8, 64)
    out = torch.compile(m, backend="uhop")(x)  # grad enabled, parameters require grad
    out.sum().backward()
    assert m.up.weight.grad is not None and not _packed_rewrites()
    torch._dynamo.reset()
    REPORT.clear()
    with torch.no_grad():
        torch.compile(m.eval(), backend="uhop", options={"pack_weights": False})(x)
    assert not _packed_rewrites()
    from uhop.compile.backend import CompileOptions

    with pytest.raises(ValueError, match="pack_weights must be True or False"):
        CompileOptions.make({"pack_weights": "yes"})


def test_gpt2_blocks_both_layouts_match_float64():
    """nn.Linear projections and Hugging Face's Conv1D (addmm on (in, out) weights) both run on
    packed weights, against float64."""
    for hf in (False, True):
        torch._dynamo.reset()
        REPORT.clear()
        m = GPT2Block(64, 4, hf=hf).eval()
        x = torch.randn(1, 24, 64)
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(m, backend="uhop")(x).double(), _ref(m, x), rtol=2e-4,
                                       atol=2e-4)  # fmt: skip
        assert len(_packed_rewrites()) == 4, (hf, [g.rewrites for g in REPORT.graphs])


def test_packed_bytes_are_capped(monkeypatch):
    """Past the cap on packed bytes held, a weight runs unpacked (F.linear), with one warning; the
    bytes held come back when a packed weight is freed."""
    import gc
    import warnings

    m = Net().eval()
    x = torch.randn(4, 64)
    with torch.no_grad():
        packed.OP(x, m.up.weight, m.up.bias)  # packed: within the default cap
        held = packed.STATS["bytes"]
        assert held > 2 * m.up.weight.numel() * 4
        monkeypatch.setattr(packed, "budget_bytes", lambda: held + 1000)  # no room for another
        before, over = packed.STATS["packs"], packed.STATS["over_budget"]
        h = torch.randn(4, 192)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            y = packed.OP(h, m.down.weight, None)
        assert packed.STATS["packs"] == before and packed.STATS["over_budget"] == over + 1
        torch.testing.assert_close(y.double(), F.linear(h.double(), m.down.weight.double()), rtol=1e-4, atol=1e-4)
    del m
    gc.collect()
    assert packed.STATS["bytes"] <= held - 2 * 192 * 64 * 4  # the up projection's pack is gone


def test_one_pack_serves_every_row_count_in_the_range():
    # MKL packs for PACK_BATCH rows; the same pack must give float64-close results at any count
    w = torch.randn(96, 80, requires_grad=False)
    b = torch.randn(96)
    before = packed.STATS["packs"]
    with torch.no_grad():
        for rows in (packed.PACK_MIN_M, 17, 64, packed.PACK_BATCH, 1000, packed.PACK_MAX_M):
            x = torch.randn(rows, 80)
            want = F.linear(x.double(), w.double(), b.double())
            torch.testing.assert_close(packed.OP(x, w, b).double(), want, rtol=1e-4, atol=1e-4)
    assert packed.STATS["packs"] - before == 1


def test_packed_addmm_matches_float64_and_follows_updates():
    """``addmm(b, x, w)`` on (in, out) weights: the transpose packed once per parameter, float64
    close at every row count of the range, repacked after an in-place update; outside the range,
    with another dtype or with autograd on, ``torch.addmm`` itself."""
    w = torch.nn.Parameter(torch.randn(80, 96))  # (in, out)
    b = torch.nn.Parameter(torch.randn(96))
    before = packed.STATS["packs"]
    with torch.no_grad():
        for rows in (packed.PACK_MIN_M, 33, packed.PACK_BATCH, packed.PACK_MAX_M):
            x = torch.randn(rows, 80)
            want = torch.addmm(b.double(), x.double(), w.double())
            torch.testing.assert_close(packed.ADDMM(b, x, w).double(), want, rtol=1e-4, atol=1e-4)
        assert packed.STATS["packs"] - before == 1
        w.mul_(-1)  # in place: a new version, a repack
        x = torch.randn(5, 80)
        torch.testing.assert_close(packed.ADDMM(b, x, w).double(), torch.addmm(b.double(), x.double(), w.double()),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
        assert packed.STATS["packs"] - before == 2
        for xx in (torch.randn(1, 80), torch.randn(packed.PACK_MAX_M + 1, 80)):  # outside the range
            torch.testing.assert_close(packed.ADDMM(b, xx, w), torch.addmm(b, xx, w))
        assert packed.STATS["packs"] - before == 2
    x = torch.randn(4, 80)
    torch.testing.assert_close(packed.ADDMM(b, x, w), torch.addmm(b, x, w))  # autograd on: addmm itself
    assert packed.STATS["packs"] - before == 2
