"""log_softmax, the op (issue #20 lists it with the row kernels): every CPU backend's candidates
validate against a float64 reference, the product path (``uhop.ops``, a decorated function,
``uhop.ops`` inside ``torch.compile``) gives torch's result on fresh inputs, gradients included,
and rows that overflow a naive log(softmax(x)) stay finite. The Triton templates run under the
interpreter in ``tests/backends/test_triton.py``; the compile region in
``tests/compile/test_log_softmax_region.py``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import uhop
from uhop import config
from uhop.errors import InputError, UhopWarning

torch = pytest.importorskip("torch")


def _ref(x64: np.ndarray, axis: int = -1) -> np.ndarray:
    s = x64 - x64.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_cpu_candidate_validates_and_the_pick_is_stored(dtype, uhop_home):
    from uhop.store import open_store
    from uhop.tune.tuner import tune

    with config.override(tune_budget_s=120):
        res = tune(op="log_softmax", dims={"R": 67, "N": 1031}, dtype=dtype)
    by_backend = {m.candidate.backend for m in res.measurements}
    assert {"numpy", "torch"} <= by_backend
    bad = [(m.candidate.id, m.status, m.reason) for m in res.measurements if m.status not in ("ok", "too-slow")]
    assert not bad, bad
    assert res.best is not None and res.best.ok
    (entry,) = open_store().entries("log_softmax")
    assert entry.candidate["backend"] == res.best.candidate.backend


def test_numba_kernel_matches_float64_on_wide_range_rows():
    pytest.importorskip("numba")
    from uhop.backends.numba import OutputPool, softmax_kernel

    rng = np.random.default_rng()
    x64 = rng.uniform(-1, 1, (33, 517)) * rng.uniform(1, 400, (33, 1))  # exp(x) over/underflows float32
    for dt, tol in (("float32", 2e-5), ("float64", 1e-12)):
        k = softmax_kernel(dt, True, False, 4, OutputPool(False), log=True)
        x = x64.astype(dt)
        got = k(x)
        assert got.dtype == np.dtype(dt) and np.isfinite(got).all()
        np.testing.assert_allclose(got, _ref(x.astype(np.float64)), rtol=tol, atol=tol)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_uhop_ops_log_softmax_along_any_axis(lib, uhop_home, monkeypatch):
    monkeypatch.setenv("UHOP_POLICY", "tune")
    rng = np.random.default_rng()
    x64 = rng.uniform(-30, 30, (6, 41, 9))
    x = x64.astype(np.float32)
    if lib == "torch":
        x, name, to_np = torch.from_numpy(x), "dim", (lambda r: r.numpy())
    else:
        name, to_np = "axis", (lambda r: r)
    for a in (-1, 0, 1):
        got = uhop.ops.log_softmax(x, **{name: a})
        assert type(got) is type(x) and tuple(got.shape) == x64.shape
        np.testing.assert_allclose(to_np(got), _ref(x64, a), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match=f"log_softmax: {name} must be an int"):
        uhop.ops.log_softmax(x, **{name: 5})
    with pytest.raises(InputError, match="log_softmax has no parameter"):
        uhop.ops.log_softmax(x, eps=1e-5)


def test_buffers_take_the_last_axis_and_name_the_others(uhop_home, monkeypatch):
    monkeypatch.setenv("UHOP_POLICY", "fast")
    x = np.random.default_rng().uniform(-3, 3, (16, 77)).astype(np.float32)
    buf = uhop.Buffer(x)
    for kw in ({}, {"axis": -1}, {"dim": 1}):
        out = uhop.ops.log_softmax(buf, **kw)
        assert isinstance(out, uhop.Buffer)
        np.testing.assert_allclose(out.numpy(), _ref(x.astype(np.float64)), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="other than the last needs a numpy array or torch tensor; got Buffer"):
        uhop.ops.log_softmax(buf, axis=0)
    with pytest.raises(InputError, match="x must be a numpy array or torch tensor, got list"):
        uhop.ops.log_softmax([[1.0, 2.0]], axis=0)


def test_masked_positions_and_infinities_give_torchs_result(uhop_home):
    x = torch.randn(4, 37)
    x[0, :5] = float("-inf")  # a masked prefix: -inf out, the rest normalized over the others
    x[1, 3] = float("inf")  # +inf: NaN for the whole row, as torch gives
    x[2, 7] = float("nan")
    with config.override(policy="tune"):
        got = uhop.ops.log_softmax(x)
    want = torch.log_softmax(x, -1)
    torch.testing.assert_close(got, want, equal_nan=True)


def test_decorated_function_is_recognized_and_served(uhop_home):
    @uhop.optimize("log_softmax")
    def logp(logits):
        return torch.log_softmax(logits, dim=-1)

    x = torch.randn(64, 503) * 8
    with warnings.catch_warnings():
        warnings.simplefilter("error", UhopWarning)
        with config.override(policy="tune"):
            got = logp(x)
    np.testing.assert_allclose(got.numpy(), _ref(x.double().numpy()), rtol=1e-5, atol=1e-5)


def test_uhop_ops_call_inside_compile_has_gradients(uhop_home):
    torch._dynamo.reset()
    w = torch.randn(8, 70)

    def f(z):
        return (uhop.ops.log_softmax(z) * w).sum()

    z = torch.randn(8, 70, requires_grad=True)
    torch.compile(f, backend="eager", fullgraph=True)(z).backward()
    z64 = z.detach().double().requires_grad_()
    (torch.log_softmax(z64, -1) * w.double()).sum().backward()
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-5, atol=1e-6)
