"""Arrays of other libraries (CuPy, JAX, ...) cross into UHOP by DLPack, zero-copy, and the result
comes back in the caller's library. Exercised on CPU with a minimal DLPack array library; the GPU
suite runs the same path with CuPy on CUDA."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import uhop

torch = pytest.importorskip("torch")


def _fake_library() -> types.ModuleType:
    mod = types.ModuleType("fakedl")

    class Array:
        """Just enough of an array API: shape, dtype, strides, DLPack both ways."""

        def __init__(self, data: np.ndarray) -> None:
            self._d = data

        shape = property(lambda self: self._d.shape)
        dtype = property(lambda self: self._d.dtype)
        strides = property(lambda self: self._d.strides)
        ndim = property(lambda self: self._d.ndim)

        def __dlpack__(self, **kwargs):
            return self._d.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._d.__dlpack_device__()

    Array.__module__ = "fakedl"
    mod.Array = Array
    mod.from_dlpack = lambda x: Array(np.from_dlpack(x))
    sys.modules["fakedl"] = mod
    return mod


def test_foreign_arrays_through_ops_and_decorator():
    fk = _fake_library()
    rng = np.random.default_rng()
    a, b = rng.uniform(-1, 1, (17, 9)).astype(np.float32), rng.uniform(-1, 1, (9, 5)).astype(np.float32)
    out = uhop.ops.matmul(fk.Array(a), fk.Array(b))
    assert type(out) is fk.Array
    np.testing.assert_allclose(out._d, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)

    @uhop.optimize("softmax")
    def sm(x):
        t = torch.from_dlpack(x)
        return fk.from_dlpack(torch.softmax(t, -1))

    x = rng.uniform(-1, 1, (6, 33)).astype(np.float32)
    y = sm(fk.Array(x))
    assert type(y) is fk.Array
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    np.testing.assert_allclose(y._d, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    y2 = sm(fk.Array(x * 2))  # cache hit through the DLPack wrapper, fresh values
    e = np.exp(2 * x.astype(np.float64) - 2 * x.max(-1, keepdims=True))
    np.testing.assert_allclose(y2._d, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
