"""uhop.Buffer: where copies live, what a copy costs (counted), DLPack, dispatch taking and
returning Buffers, and the placement policy."""

from __future__ import annotations

import numpy as np
import pytest

import uhop
from uhop import buffer as ub
from uhop.buffer import TRANSFERS, Buffer, place
from uhop.errors import InputError


@pytest.fixture(autouse=True)
def _fresh_log():
    TRANSFERS.reset()
    yield
    TRANSFERS.reset()


def _opencl_or_skip():
    from uhop import backends as bk

    b = bk.get("opencl")
    if not b.available:
        pytest.skip(f"OpenCL unavailable: {b.availability[1]}")


def _softmax64(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _rms64(x, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)


def test_wraps_where_the_data_is_without_copying():
    x = np.random.default_rng().standard_normal((4, 5)).astype(np.float32)
    b = Buffer(x)
    assert b.locations == ("host",) and b.shape == (4, 5) and b.dtype == np.float32 and b.nbytes == 80
    assert b.numpy() is x
    assert TRANSFERS.count == 0


def test_torch_cpu_is_shared_not_copied():
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = Buffer(t)
    assert b.locations == ("host",)
    b.numpy()[0, 0] = 42.0  # one memory: the tensor sees it
    assert t[0, 0].item() == 42.0
    assert b.torch().data_ptr() == t.data_ptr()
    assert TRANSFERS.count == 0


def test_dlpack_export():
    x = np.random.default_rng().standard_normal(7)
    b = Buffer(x)
    np.testing.assert_array_equal(np.from_dlpack(b), x)
    assert b.__dlpack_device__() == (1, 0)


def test_bad_inputs_name_what_was_expected():
    with pytest.raises(InputError, match="expected a numpy array"):
        Buffer("not an array")
    b = Buffer(np.zeros(3))
    with pytest.raises(InputError, match="already a Buffer"):
        Buffer(b)
    with pytest.raises(InputError, match="where='opencl' holds no copy"):
        b.mark_written("opencl")


def test_opencl_copies_once_per_write_and_counts_bytes():
    _opencl_or_skip()
    x = np.random.default_rng().standard_normal((8, 16)).astype(np.float32)
    b = Buffer(x)
    d = b.opencl()
    assert b.opencl() is d  # valid copy reused
    snap = TRANSFERS.snapshot()
    assert snap["count"] == 1 and snap["bytes"] == x.nbytes and snap["routes"]["host->opencl"]["count"] == 1
    assert snap["seconds"] > 0
    d += 1  # the program writes the device copy in place, then says so
    b.mark_written("opencl")
    assert b.locations == ("opencl",)
    np.testing.assert_array_equal(b.numpy(), x + 1)  # one copy back
    assert TRANSFERS.snapshot()["routes"]["opencl->host"]["count"] == 1
    b.numpy()
    assert TRANSFERS.count == 2


def test_ops_on_host_buffers_return_buffers_and_never_copy():
    rng = np.random.default_rng()
    x = rng.standard_normal((16, 32)).astype(np.float32)
    w = rng.standard_normal((32, 8)).astype(np.float32)
    y = uhop.ops.rmsnorm(uhop.ops.softmax(Buffer(x)))
    z = uhop.ops.matmul(y, Buffer(w))
    assert isinstance(y, Buffer) and isinstance(z, Buffer) and z.locations == ("host",)
    ref = _rms64(_softmax64(x.astype(np.float64))) @ w.astype(np.float64)
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-4, atol=1e-5)
    assert TRANSFERS.count == 0


def test_chain_on_opencl_stays_on_the_device():
    """Five ops on an OpenCL-resident buffer: one upload, no copies between ops, one download
    when the program reads the result."""
    _opencl_or_skip()
    rng = np.random.default_rng()
    x = rng.standard_normal((32, 64)).astype(np.float32)
    b = Buffer(x)
    b.opencl()
    b.mark_written("opencl")  # the data now lives in the OpenCL context only
    y = uhop.ops.softmax(b)
    y = uhop.ops.rmsnorm(y)
    y = uhop.ops.elementwise("x0 * 2.0 + 1.0", y)
    y = uhop.ops.layernorm(y)
    y = uhop.ops.elementwise("sigmoid(x0)", y)
    assert y.locations == ("opencl",)
    assert TRANSFERS.count == 1  # only the upload
    x64 = x.astype(np.float64)
    r = _rms64(_softmax64(x64)) * 2.0 + 1.0
    mu = r.mean(-1, keepdims=True)
    r = (r - mu) / np.sqrt(((r - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y.numpy(), 1 / (1 + np.exp(-r)), rtol=1e-4, atol=1e-5)
    assert TRANSFERS.count == 2 and TRANSFERS.snapshot()["routes"]["opencl->host"]["bytes"] == x.nbytes


def test_optimize_takes_and_returns_buffers():
    @uhop.optimize("softmax")
    def sm(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    x = np.random.default_rng().standard_normal((8, 24)).astype(np.float32)
    out = sm(Buffer(x))
    assert isinstance(out, Buffer)
    np.testing.assert_allclose(out.numpy(), _softmax64(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert isinstance(sm(x), np.ndarray)  # plain arrays still give plain arrays


def test_placement_stays_with_the_data_when_no_gpu():
    b = Buffer(np.zeros((64, 64), np.float32))
    p = place([b], flops=1e6, nbytes=b.nbytes * 2)
    assert p.where == "host" and "already" in p.reason


def test_placement_weighs_transfer_against_compute(monkeypatch):
    """With a GPU 100x faster than the host, a big product moves there, a small one does not.
    (Peaks injected: the policy's arithmetic, not a device, is under test.)"""
    monkeypatch.setattr(ub, "_cuda_available", lambda: True)
    monkeypatch.setitem(ub._peaks, ("cpu", "float32"), (1e11, 2e10))
    monkeypatch.setitem(ub._peaks, ("cuda:0", "float32"), (1e13, 2e12))
    n = 4096
    a, b = Buffer(np.zeros((n, n), np.float32)), Buffer(np.zeros((n, n), np.float32))
    big = place([a, b], flops=2.0 * n**3, nbytes=3 * n * n * 4)
    assert big.where == "cuda:0", big
    small = Buffer(np.zeros(1024, np.float32))
    tiny = place([small], flops=5 * 1024, nbytes=2 * 4096)
    assert tiny.where == "host", tiny
    assert set(big.estimates) == {"host", "cuda:0"}


@pytest.mark.gpu
def test_cuda_chain_and_managed_memory():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    x = np.random.default_rng().standard_normal((64, 128)).astype(np.float32)
    b = Buffer(torch.from_numpy(x).cuda())
    y = uhop.ops.rmsnorm(uhop.ops.softmax(b))
    assert y.locations == ("cuda:0",) and TRANSFERS.count == 0
    np.testing.assert_allclose(y.numpy(), _rms64(_softmax64(x.astype(np.float64))), rtol=1e-4, atol=1e-5)
    pytest.importorskip("cupy")
    m = Buffer(x, managed=True)
    assert m.managed and set(m.locations) == {"host", "cuda:0"}
    out = uhop.ops.softmax(m)
    np.testing.assert_allclose(out.numpy(), _softmax64(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
