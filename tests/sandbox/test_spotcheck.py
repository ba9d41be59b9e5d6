"""Dispatch-time spot checks (issue 14): a kernel file right during the sandbox check and wrong
after N calls is caught on a random sample of dispatch calls and quarantined in the store; from
the detecting call on, callers get the reference result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uhop.backends.user import SandboxedKernel
from uhop.measure.validate import compare
from uhop.problem import Problem
from uhop.sandbox.kernelfile import StaticPolicy
from uhop.sandbox.kernelfile import load as load_kernel
from uhop.sandbox.spotcheck import SpotChecked, spot_checked, spotcheck_rate

H2 = Path(__file__).parent / "hostile2"


def test_wrong_after_n_calls_is_quarantined_and_never_returned(uhop_home):
    from uhop.store import open_store

    store = open_store()
    key = "softmax:13x17:float32:spot"
    problem = Problem.make("softmax", {"R": 13, "N": 17}, "float32", {})
    store.record(key, {"op": "softmax"}, {"backend": "user", "template": "wrong_after_n", "config": {}}, [],
                 median_s=1e-5, gflops=None, gbps=None, policy="tune", fingerprint={}, content_hash="abc123")  # fmt: skip
    dropped = []
    sk = SandboxedKernel(load_kernel(H2 / "wrong_after_n.py", StaticPolicy(enabled=False)))
    kernel = SpotChecked(sk, problem, key, store=store, rate=0.05, on_quarantine=lambda: dropped.append(key))
    rng = np.random.default_rng()
    wrong_before = 0
    try:
        for i in range(700):
            x = rng.uniform(-3, 3, (13, 17)).astype(np.float32)
            was = bool(kernel.quarantined)
            out = kernel(x)
            ok = compare(out, problem.spec.reference(x.astype(np.float64)), problem).ok
            if kernel.quarantined:  # the detecting call and every later one get a right output
                assert ok, i
            else:
                assert ok or i >= 200  # right during its first 200 calls, as written
                wrong_before += not ok
            assert was <= bool(kernel.quarantined)
    finally:
        sk.close()
    # sampled at 5%: detection within a few dozen wrong calls (0.95**300 < 2e-7)
    assert wrong_before < 300
    assert kernel.quarantined and kernel.failures == 1, kernel.quarantined
    assert dropped == [key]
    assert store.get(key) is None
    assert store.quarantined("abc123") and not store.quarantined("other")
    rows = [m for m in store.measurements(key) if m["status"] == "quarantined"]
    assert len(rows) == 1 and "spot check" in rows[0]["reason"]


def test_trusted_kernels_and_a_zero_rate_are_not_wrapped(monkeypatch):
    problem = Problem.make("softmax", {"R": 2, "N": 3}, "float32", {})

    def k(x):
        return x

    assert spot_checked(k, problem, "k", trusted=True) is k
    monkeypatch.setenv("UHOP_SPOTCHECK_RATE", "0")
    assert spot_checked(k, problem, "k", trusted=False) is k
    monkeypatch.setenv("UHOP_SPOTCHECK_RATE", "1")
    assert isinstance(spot_checked(k, problem, "k", trusted=False), SpotChecked)
    monkeypatch.setenv("UHOP_SPOTCHECK_RATE", "lots")
    with pytest.raises(ValueError, match="UHOP_SPOTCHECK_RATE"):
        spotcheck_rate()


def test_rate_one_checks_every_call_of_an_honest_kernel():
    problem = Problem.make("softmax", {"R": 4, "N": 5}, "float64", {})

    def honest(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    k = SpotChecked(honest, problem, "k", rate=1.0)
    for _ in range(5):
        k(np.random.default_rng().normal(size=(4, 5)))
    assert k.checks == 5 and k.failures == 0 and not k.quarantined


def test_dispatch_hook_wraps_only_untrusted_backends(uhop_home, monkeypatch):
    from types import SimpleNamespace

    from uhop.dispatch import _spot_checked

    monkeypatch.setenv("UHOP_SPOTCHECK_RATE", "0.5")
    problem = Problem.make("softmax", {"R": 2, "N": 3}, "float32", {})

    def k(x):
        return x

    assert _spot_checked(k, SimpleNamespace(trusted=True), problem, "key") is k
    wrapped = _spot_checked(k, SimpleNamespace(trusted=False), problem, "key")
    assert isinstance(wrapped, SpotChecked) and wrapped.rate == 0.5 and wrapped.store is not None
