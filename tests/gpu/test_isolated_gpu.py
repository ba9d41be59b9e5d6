"""Isolated first-use tuning on a real GPU (the default for CUDA problems): a candidate that hits
an illegal address or never finishes is a recorded failure, the worker whose CUDA context it
poisoned is replaced, and the caller's own context stays usable. Skipped without a GPU."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="GPU tests, not the interpreter"),
]

from uhop import backends as bk  # noqa: E402
from uhop import config  # noqa: E402
from uhop.problem import Problem  # noqa: E402
from uhop.tune.tuner import tune  # noqa: E402


def test_illegal_address_and_hang_are_contained(monkeypatch):
    monkeypatch.setitem(bk.REGISTRY, "faulty_cuda", "faulty_cuda_backend:FaultyCudaBackend")
    bk._instances.pop("faulty_cuda", None)
    p = Problem.make("softmax", {"R": 512, "N": 1000}, "float32", device="cuda:0", array="torch")
    with config.override(isolate="auto", isolate_timeout_s=20, tune_budget_s=300, backends=("torch", "faulty_cuda")):
        res = tune(problem=p)
    by = {m.candidate.template: m for m in res.measurements if m.candidate.backend == "faulty_cuda"}
    assert by["illegal-address"].status in ("crash", "wrong-result"), by["illegal-address"]
    assert "unusable" in by["illegal-address"].reason or "illegal" in by["illegal-address"].reason.lower()
    assert by["hang"].status == "timeout", by["hang"]
    # the honest kernel ran, validated and timed in the worker that replaced the poisoned one; at
    # this size its first timed call may trail torch's by more than the 3x cutoff (launch cost)
    honest = by["honest"]
    assert honest.ok or (honest.status == "too-slow" and "first timed call" in honest.reason), honest
    assert res.best is not None and res.best.ok
    x = torch.randn(512, 1000, device="cuda")
    torch.testing.assert_close(res.kernel(x), torch.softmax(x.double(), -1).float(), rtol=1e-5, atol=1e-6)
    torch.cuda.synchronize()  # this process's context is untouched
