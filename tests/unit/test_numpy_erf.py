"""numpy's erf without scipy (issue #13, warm start): float32 arithmetic within a few ulps of
math.erf, float64 references exact, and a numpy warm start that never imports scipy."""

import math
import subprocess
import sys

import numpy as np

from uhop.backends.numpy import _erf, erf32
from uhop.ops.matmul import _erf as erf64

ERF = np.vectorize(math.erf, otypes=[np.float64])


def test_erf32_within_a_few_ulps_everywhere():
    rng = np.random.default_rng()
    x = np.concatenate([
        np.linspace(-7, 7, 400_001), rng.standard_normal(100_000) * 3,
        np.logspace(-38, 0.8, 50_000), -np.logspace(-38, 0.8, 50_000), [0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, 4.0],
    ]).astype(np.float32)  # fmt: skip
    ref = ERF(x.astype(np.float64))
    got = erf32(x, np.empty_like(x))
    ulps = np.abs(got - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 4, (ulps.max(), x[np.argmax(ulps)])
    assert np.array_equal(np.signbit(got[ref != 0]), np.signbit(ref[ref != 0]))
    assert np.isnan(erf32(np.array([np.nan], np.float32), np.empty(1, np.float32))).all()


def test_erf_inplace_strided_and_half():
    rng = np.random.default_rng()
    x = rng.standard_normal((70, 333)).astype(np.float32) * 2
    ref = ERF(x.astype(np.float64))
    y = x.copy()
    _erf(y, y)  # in place, several chunks
    np.testing.assert_allclose(y, ref, rtol=0, atol=3e-7)
    t = x.T  # not contiguous
    np.testing.assert_allclose(_erf(t, np.empty(t.shape, np.float32)), ref.T, rtol=0, atol=3e-7)
    h = x.astype(np.float16)
    np.testing.assert_allclose(_erf(h, np.empty_like(h)).astype(np.float64), ERF(h.astype(np.float64)), rtol=0, atol=5e-4)


def test_float64_reference_erf_exact_small_and_large():
    rng = np.random.default_rng()
    for n in (100, 10_000):
        x = rng.standard_normal(n) * 3
        np.testing.assert_allclose(erf64(x), ERF(x), rtol=2e-15, atol=1e-300)


def test_numpy_matmul_gelu_never_imports_scipy(tmp_path):
    """A float32 numpy gelu (the served baseline of a warm start, checked on a small instance)
    runs and validates without importing scipy.special, right against float64."""
    code = """
import sys, numpy as np, math
from uhop.backends import get
from uhop.problem import Problem
from uhop.ops import get as op
import uhop.dispatch as d
rng = np.random.default_rng()
a = rng.standard_normal((16, 40), dtype=np.float32); b = rng.standard_normal((40, 16), dtype=np.float32)
p = d.make_problem(op("matmul"), (a, b), {"activation": "gelu"})
be = get("numpy")
assert be.supports(p)
y = be.compile(be.candidates(p)[0], p)(a, b)
z = a.astype(float) @ b.astype(float)
ref = 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
from uhop.measure.validate import ValidationSet, check_kernel
v = check_kernel(be.compile(be.candidates(p)[0], p), ValidationSet(p, trials=1), "numpy", "cpu")
assert v.ok, v
print("scipy.special" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "UHOP_HOME": str(tmp_path)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_elementwise_erf_expression_validates():
    rng = np.random.default_rng()
    x = rng.standard_normal(50_000).astype(np.float32)
    from uhop import dispatch
    from uhop.backends import get
    from uhop.measure.validate import ValidationSet, check_kernel
    from uhop.ops import get as op

    p = dispatch.make_problem(op("elementwise"), (x,), {"expr": "add(erf(x0), gelu(x0))"})
    be = get("numpy")
    for cand in be.candidates(p):
        v = check_kernel(be.compile(cand, p), ValidationSet(p, trials=1), "numpy", "cpu")
        assert v.ok, (cand.id, v)
