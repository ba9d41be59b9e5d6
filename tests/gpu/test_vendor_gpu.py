"""The torch backend's vendor candidates on a real GPU, validated like any candidate (float64
reference, fresh random inputs): cuBLASLt's fused bias + GELU epilogue for the tanh-GELU of
GPT-2's MLP, in F.linear's (N, K) weight layout too. Skipped without a GPU."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="GPU tests, not the interpreter"),
]

from uhop.backends.torch import TorchBackend  # noqa: E402
from uhop.measure.validate import ValidationSet, check_kernel  # noqa: E402
from uhop.problem import Problem  # noqa: E402


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("activation", ["gelu_tanh", "relu"])
def test_lt_epilogue_validates(dtype, trans_b, activation):
    p = Problem.make("matmul", {"B": 1, "M": 1000, "N": 768, "K": 384}, dtype,
                     {"activation": activation, "trans_b": trans_b}, arity=3, device="cuda:0", array="torch")  # fmt: skip
    backend = TorchBackend()
    (cand,) = [c for c in backend.candidates(p) if c.template == "lt_epilogue"]
    v = check_kernel(backend.compile(cand, p), ValidationSet(p, trials=2), "torch", "cuda:0")
    assert v.ok, f"{cand.id} on {p.describe()}: {v.status}: {v.reason}"
