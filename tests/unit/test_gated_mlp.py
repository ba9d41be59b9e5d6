"""``uhop.ops.gated_mlp``: ``act(x @ w_gate.T) * (x @ w_up.T)`` through the product path on CPU
(numpy and torch inputs), against float64; bad inputs named."""

from __future__ import annotations

import math

import numpy as np
import pytest

import uhop
from uhop.errors import InputError


def _ref(x, wg, wu, act):
    h = x.astype(np.float64) @ wg.astype(np.float64).T
    if act == "silu":
        g = h / (1 + np.exp(-h))
    elif act == "gelu":
        g = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    else:
        g = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    return g * (x.astype(np.float64) @ wu.astype(np.float64).T)


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize(("lead", "n", "k"), [((37,), 50, 64), ((2, 13), 33, 17), ((1,), 1, 5)])
def test_numpy_inputs_match_float64(act, lead, n, k):
    rng = np.random.default_rng()
    x = rng.standard_normal((*lead, k)).astype(np.float32)
    wg, wu = (rng.standard_normal((n, k)).astype(np.float32) / math.sqrt(k) for _ in range(2))
    got = uhop.ops.gated_mlp(x, wg, wu, activation=act)
    assert got.shape == (*lead, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, _ref(x, wg, wu, act), rtol=1e-4, atol=1e-5)


def test_torch_inputs_match_float64_and_keep_autograd():
    torch = pytest.importorskip("torch")
    x = torch.randn(3, 11, 24, requires_grad=True)
    wg, wu = (torch.randn(40, 24) / 5 for _ in range(2))
    got = uhop.ops.gated_mlp(x, wg, wu)
    want = _ref(x.detach().numpy(), wg.numpy(), wu.numpy(), "silu")
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-4, atol=1e-5)
    uhop.wait()
    y = uhop.ops.gated_mlp(x, wg, wu)  # the served kernel, which must keep autograd working
    y.sum().backward()
    xd = x.detach().double().requires_grad_()
    torch.nn.functional.silu(xd @ wg.double().T).mul(xd @ wu.double().T).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-4, atol=1e-5)


def test_bad_inputs_name_the_argument():
    x = np.zeros((4, 8), np.float32)
    w = np.zeros((6, 8), np.float32)
    with pytest.raises(InputError, match=r"w_gate must be \(N, K=8\)"):
        uhop.ops.gated_mlp(x, w.T, w)
    with pytest.raises(InputError, match="must have one shape"):
        uhop.ops.gated_mlp(x, w, w[:5])
    with pytest.raises(InputError, match="activation must be one of"):
        uhop.ops.gated_mlp(x, w, w, activation="relu")


def test_bias_free_linear_region_is_served_by_its_baseline():
    """A bias-free ``nn.Linear`` as a region is a matmul with b as (N, K) and no bias: torch's
    baseline is ``torch.matmul`` itself, which the (N, K) wrapper once called with a third
    argument (None): the baseline failed its small check and the region tuned before serving."""
    torch = pytest.importorskip("torch")
    from uhop.compile.report import REPORT
    from uhop.compile.runtime import run_region
    from uhop.config import override

    x, w = torch.randn(3, 5, 16), torch.randn(12, 16)
    with override(policy="background"):  # the product default: the baseline serves while tuning runs
        got = run_region("linear", (x, w, None, "none"))
        uhop.wait()
    torch.testing.assert_close(got, x @ w.T)
    assert REPORT.runs[-1].kernel == "torch/eager (interim; tuning in the background)", REPORT.runs[-1]
