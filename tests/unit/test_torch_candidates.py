"""Which vendor candidates the torch backend offers for a CUDA problem (listing needs no GPU;
the numerics of these candidates are tested on a GPU in tests/gpu/test_vendor_gpu.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from uhop.backends.torch import TorchBackend  # noqa: E402
from uhop.problem import Problem  # noqa: E402


def _templates(activation: str, dtype: str, arity: int = 3, device: str = "cuda:0") -> set[str]:
    p = Problem.make("matmul", {"B": 1, "M": 256, "N": 512, "K": 128}, dtype, {"activation": activation},
                     arity=arity, device=device, array="torch")  # fmt: skip
    return {c.template for c in TorchBackend().candidates(p)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_tanh_gelu_gets_cublaslt_epilogue_in_every_dtype(dtype):
    # cuBLASLt's GELU epilogue is the tanh form: exact for gelu_tanh (GPT-2's MLP), any dtype
    assert "lt_epilogue" in _templates("gelu_tanh", dtype)


def test_erf_gelu_gets_the_tanh_epilogue_only_in_half_precision():
    assert "lt_epilogue" in _templates("gelu", "bfloat16")
    assert "lt_epilogue" not in _templates("gelu", "float32")  # tanh vs erf: 3e-4, beyond fp32's tolerance


def test_no_epilogue_without_bias_or_activation_or_on_cpu():
    assert "lt_epilogue" not in _templates("gelu_tanh", "bfloat16", arity=2)
    assert "lt_epilogue" not in _templates("none", "bfloat16")
    assert "lt_epilogue" not in _templates("gelu_tanh", "bfloat16", device="cpu")


def test_lt_epilogue_keeps_autograd():
    # _addmm_activation has no derivative: with inputs that need grad the kernel runs addmm + the
    # activation instead (the kernel runs on CPU too; only the candidate listing is CUDA-only)
    import torch
    import torch.nn.functional as F

    p = Problem.make("matmul", {"B": 1, "M": 6, "N": 5, "K": 4}, "float64", {"activation": "gelu_tanh"}, arity=3,
                     device="cuda:0", array="torch")  # fmt: skip
    backend = TorchBackend()
    (cand,) = [c for c in backend.candidates(p) if c.template == "lt_epilogue"]
    kernel = backend._compile(cand, p)
    a, b, bias = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((6, 4), (4, 5), (5,)))
    y = kernel(a, b, bias)
    y.sum().backward()
    want = [t.grad.clone() for t in (a, b, bias)]
    for t in (a, b, bias):
        t.grad = None
    F.gelu(torch.addmm(bias, a, b), approximate="tanh").sum().backward()
    for got, ref in zip(want, (a.grad, b.grad, bias.grad), strict=True):
        torch.testing.assert_close(got, ref)
