"""What the CUDA row-kernel GPU tests share: the Hopper skip, float64 references of the four row
ops, inputs with a weight and bias, and the per-dtype check."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

DEV = "cuda:0"
TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 2e-4}
#: thread-block clusters and bulk asynchronous copies are Hopper's
needs_hopper = pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] < 9,
    reason="needs compute capability 9.0 or newer (clusters, cp.async.bulk)",
)


def ref(op, x, w, b):
    x = x.double()
    w = None if w is None else w.double()
    b = None if b is None else b.double()
    if op == "softmax":
        return torch.softmax(x, -1)
    if op == "log_softmax":
        return torch.log_softmax(x, -1)
    if op == "layernorm":
        return torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, 1e-5)
    return torch.nn.functional.rms_norm(x, x.shape[-1:], w, 1e-6)


def inputs(op, R, N, dt, with_w=True):
    x = torch.randn(R, N, device=DEV, dtype=dt) * 3 + 0.5
    w = b = None
    if op in ("layernorm", "rmsnorm") and with_w:
        w = torch.randn(N, device=DEV, dtype=dt)
    if op == "layernorm" and with_w:
        b = torch.randn(N, device=DEV, dtype=dt)
    return x, w, b


def check(y, expected, dt):
    err = (y.double() - expected).abs()
    bound = TOL[dt] * (1 + expected.abs())
    assert torch.isfinite(y).all()
    assert bool((err <= bound).all()), f"max err {err.max().item():.3e} (bound {TOL[dt]} x (1 + |ref|))"


def filtered_logits(R, N=50257, keep=40):
    """Rows of logits filtered to their top k (sampling): all -inf but ``keep`` random entries."""
    x = torch.full((R, N), float("-inf"), device=DEV, dtype=torch.bfloat16)
    idx = torch.randint(0, N, (R, keep), device=DEV)
    return x.scatter_(1, idx, torch.randn(R, keep, device=DEV, dtype=torch.bfloat16) * 3)


def check_filtered(op, y, x):
    """finite exactly where the reference is, within bf16's tolerance there; softmax 0 elsewhere"""
    y, expected = y.double(), ref(op, x, None, None)
    fin = torch.isfinite(expected)
    assert bool((torch.isfinite(y) == fin).all()), "finite exactly where the reference is"
    assert bool(((y[fin] - expected[fin]).abs() <= 2e-2 * (1 + expected[fin].abs())).all())
    if op == "softmax":
        assert bool((y[~fin] == 0).all())


def check_or_refused(run, op, x, w, b, smem, smem_max):
    """``run(x, w, b)`` against float64 at x's dtype, or refused with a shared-memory error when
    the launch would need ``smem`` bytes of it and the device allows ``smem_max``."""
    if smem > smem_max:
        with pytest.raises(ValueError, match="shared memory"):
            run(x, w, b)
        return
    y = run(x, w, b)
    assert y.shape == x.shape and y.dtype == x.dtype
    check(y, ref(op, x, w, b), x.dtype)
