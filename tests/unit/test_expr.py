"""The elementwise expression IR: parsing, tracing numpy and torch functions, evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from uhop.ops import expr as ex


def test_parse_and_canonical_text():
    e = ex.parse("sigmoid(x*1.5+0.5)*x-0.25")
    assert e.text() == "sub(mul(sigmoid(add(mul(x0,1.5),0.5)),x0),0.25)"
    assert ex.n_vars(e) == 1 and ex.op_count(e) == 5
    assert ex.parse("a*b+c").text() == "add(mul(x0,x1),x2)"
    assert ex.parse("x1*x0").text() == "mul(x1,x0)"
    assert ex.parse("max(x0, 0)").text() == "maximum(x0,0.0)"
    assert ex.parse("2*3+x0").text() == "add(6.0,x0)"  # constants folded


@pytest.mark.parametrize("bad,match", [("x0 +", "not a valid expression"), ("foo(x0)", "unknown function"),
                                        ("x0[1]", "unsupported syntax"), ("__import__('os')", "unknown function"),
                                        ("x0 if x0 else 1", "unsupported syntax")])  # fmt: skip
def test_parse_rejects(bad, match):
    with pytest.raises(ex.InputError, match=match):
        ex.parse(bad)


def test_trace_numpy_function_matches_numpy():
    def f(x, y):
        return np.maximum(np.exp(-x) * 2.0 + y, 0.0) / (1.0 + np.abs(y)) - np.sqrt(np.abs(x))

    e = ex.trace(f, 2)
    rng = np.random.default_rng()
    x, y = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50)
    np.testing.assert_allclose(ex.evaluate(e, [x, y]), f(x, y), rtol=1e-14)


def test_trace_torch_function_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def f(x, y):
        return torch.sigmoid(x * 1.5 + 0.5) * x - 0.25 + F.gelu(y) + torch.clamp(x, min=-0.5, max=0.5) + F.silu(x).tanh()

    e = ex.trace(f, 2)
    xt, yt = torch.rand(64, dtype=torch.float64) * 2 - 1, torch.rand(64, dtype=torch.float64) * 2 - 1
    np.testing.assert_allclose(ex.evaluate(e, [xt.numpy(), yt.numpy()]), f(xt, yt).numpy(), rtol=1e-12)


def test_trace_rejects_non_elementwise():
    with pytest.raises(ex.TraceError, match="np.sum is not elementwise"):
        ex.trace(lambda x: np.sum(x), 1)
    with pytest.raises(ex.TraceError, match="branch"):
        ex.trace(lambda x: x if x > 0 else -x, 1)
    with pytest.raises(ex.TraceError, match="does not return"):
        ex.trace(lambda x: 3.0, 1)
    torch = pytest.importorskip("torch")
    with pytest.raises(ex.TraceError, match="torch.softmax"):
        ex.trace(lambda x: torch.softmax(x, -1), 1)


def test_nan_inf_semantics_follow_numpy():
    e = ex.parse("log(x0) + sqrt(x0)")
    x = np.array([np.nan, np.inf, -1.0, 0.0, 2.0])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(ex.evaluate(e, [x]), np.log(x) + np.sqrt(x))
