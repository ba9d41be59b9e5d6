"""A convolution on channels-last torch tensors (what PyTorch vision models and Inductor run) is
its own problem, and its candidates are timed and validated on channels-last inputs: cuDNN and
oneDNN run other kernels in that layout, so a ranking made on NCHW inputs does not hold for it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import uhop  # noqa: E402
from uhop import config  # noqa: E402
from uhop.dispatch import make_problem  # noqa: E402
from uhop.measure.validate import ValidationSet  # noqa: E402
from uhop.ops import get as get_op  # noqa: E402

NHWC = torch.channels_last


def _conv_inputs():
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=NHWC)
    w = torch.randn(16, 8, 3, 3).contiguous(memory_format=NHWC)
    return x, w


def test_channels_last_conv_is_its_own_problem_with_inputs_in_that_layout():
    x, w = _conv_inputs()
    p = make_problem(get_op("conv2d"), (x, w), {"padding": 1})
    assert p.layout == "channels_last"
    q = make_problem(get_op("conv2d"), (x.contiguous(), w.contiguous()), {"padding": 1})
    assert q.layout == "contiguous" and q.key() != p.key()
    # a weight in NCHW with a channels-last input is channels-last too; a sliced input is not
    assert make_problem(get_op("conv2d"), (x, w.contiguous()), {"padding": 1}).layout == "channels_last"
    assert make_problem(get_op("conv2d"), (x[:, :, ::2], w), {"padding": 1}).layout == "strided"
    vset = ValidationSet(p, trials=1)
    xs = vset.native_inputs(vset.trials[0], "torch", "cpu")
    assert all(t.is_contiguous(memory_format=NHWC) and not t.is_contiguous() for t in xs)
    # the same trial for a numpy backend: plain C-contiguous arrays
    assert all(a.flags.c_contiguous for a in vset.native_inputs(vset.trials[0], "numpy", "cpu"))


def test_channels_last_conv_is_served_correctly():
    x, w = _conv_inputs()
    b = torch.randn(16)
    with config.override(policy="tune", tune_budget_s=5):
        y = uhop.ops.conv2d(x, w, b, padding=1)
    want = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    x2 = torch.randn(2, 8, 12, 12).contiguous(memory_format=NHWC)  # fresh inputs, same problem
    torch.testing.assert_close(uhop.ops.conv2d(x2, w, b, padding=1).double(),
                               F.conv2d(x2.double(), w.double(), b.double(), padding=1), rtol=1e-4, atol=1e-4)
