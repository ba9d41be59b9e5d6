"""float32 matmul at tf32 precision on a real GPU: tf32 candidates validate under the tf32
tolerance and run several times faster than ieee fp32; a decorated ``a @ b`` under torch's
``allow_tf32`` is inferred as tf32, and without it as ieee. Skipped without a GPU."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="GPU tests, not the interpreter"),
]

import uhop  # noqa: E402
from uhop import config  # noqa: E402
from uhop.problem import Problem  # noqa: E402
from uhop.tune.tuner import tune  # noqa: E402


def test_tf32_problem_validates_and_beats_ieee():
    rates = {}
    for precision in ("ieee", "tf32"):
        p = Problem.make("matmul", {"B": 1, "M": 2048, "N": 2048, "K": 2048}, "float32", {"precision": precision},
                         device="cuda:0", array="torch")  # fmt: skip
        with config.override(tune_budget_s=60, backends=("torch", "triton")):
            res = tune(problem=p)
        assert res.best is not None and res.best.ok, [(m.candidate.id, m.status) for m in res.measurements]
        rates[precision] = p.flops() / res.best.median_s
    assert rates["tf32"] > 2 * rates["ieee"], rates


@pytest.mark.parametrize("allow", [True, False])
def test_decorator_infers_precision_from_the_function(allow):
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:

        @uhop.optimize("matmul")
        def mm(a, b):
            return a @ b

        a = torch.randn(512, 384, device="cuda")
        b = torch.randn(384, 256, device="cuda")
        with config.override(tune_budget_s=30, backends=("torch", "triton")):
            out = mm(a, b)
        ref = a.double() @ b.double()
        assert torch.allclose(out.double(), ref, rtol=1e-2, atol=1e-1)
        (params,) = [p for p in mm._semantics.values() if p is not None]
        assert params["precision"] == ("tf32" if allow else "ieee")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
