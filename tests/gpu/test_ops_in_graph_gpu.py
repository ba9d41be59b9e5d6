"""``uhop.ops`` inside ``torch.compile`` on a GPU: the custom op nodes under Inductor, under
``reduce-overhead`` (CUDA graphs split around them: they are ``cudagraph_unsafe``) and under
``backend="uhop"``, bf16 against a float64 reference, with gradients. Skipped without a CUDA GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

import uhop  # noqa: E402
import uhop.compile  # noqa: E402,F401 - registers backend="uhop" for a source checkout (no entry point)
from uhop import config  # noqa: E402


def _block(x, w, g):
    h = uhop.ops.rmsnorm(x, g)
    return uhop.ops.softmax(uhop.ops.matmul(h, w, activation="gelu_tanh"))


def _want(x, w, g):
    x, w, g = x.double(), w.double(), g.double()
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g
    return torch.softmax(torch.nn.functional.gelu(h @ w, approximate="tanh"), -1)


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_inductor_runs_the_nodes_on_the_gpu(mode):
    torch._dynamo.reset()
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(512, 1024, device="cuda") / 23).bfloat16()
    g = torch.randn(512, device="cuda", dtype=torch.bfloat16)
    f = torch.compile(_block, mode=mode, fullgraph=True)
    with torch.no_grad():
        for _ in range(4):  # reduce-overhead records after warm-up runs
            got = f(x, w, g)
        uhop.wait(120)
        got = f(x, w, g)
    torch.testing.assert_close(got.double(), _want(x, w, g), rtol=3e-2, atol=2e-3)


def test_gradients_and_the_uhop_backend_on_the_gpu():
    torch._dynamo.reset()
    args = [torch.randn(64, 128, device="cuda"), torch.randn(128, 96, device="cuda") / 11,
            torch.randn(128, device="cuda")]  # fmt: skip
    args = [a.requires_grad_() for a in args]
    refs = [a.detach().double().requires_grad_() for a in args]
    with config.override(policy="tune"):
        out = torch.compile(_block, backend="uhop", fullgraph=True)(*args)
    want = _want(*refs)
    torch.testing.assert_close(out.double(), want, rtol=1e-3, atol=1e-5)
    (out.double() * want.detach()).sum().backward()
    (want * want.detach()).sum().backward()
    for a, r in zip(args, refs, strict=True):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=2e-3, atol=1e-5)
