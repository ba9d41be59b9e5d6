"""torch backend: the vendor paths exposed as candidates (MKL/oneDNN on CPU; cuBLAS, cuDNN and
SDPA/flash attention on CUDA), with torch's eager ops for norms, softmax and chains."""

from __future__ import annotations

import math
from typing import Any

from uhop.backends.base import Backend, Candidate, Kernel
from uhop.ops import expr as ex
from uhop.problem import Problem

_TORCH_FUNCS: dict[str, Any] = {}


def _torch_funcs() -> dict[str, tuple[int, Any]]:
    if not _TORCH_FUNCS:
        import torch
        import torch.nn.functional as F

        table = {
            "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
            "maximum": lambda a, b: torch.clamp_min(a, b) if not torch.is_tensor(b) else torch.maximum(a, b),
            "minimum": lambda a, b: torch.clamp_max(a, b) if not torch.is_tensor(b) else torch.minimum(a, b),
            "neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
            "rsqrt": torch.rsqrt, "tanh": torch.tanh, "sin": torch.sin, "cos": torch.cos,
            "sigmoid": torch.sigmoid, "relu": torch.relu, "silu": F.silu, "gelu": F.gelu, "erf": torch.erf,
            "square": torch.square, "reciprocal": torch.reciprocal,
        }  # fmt: skip
        for k, f in table.items():
            _TORCH_FUNCS[k] = (ex.FUNCS[k][0], f)
    return _TORCH_FUNCS


def _scalar_first(f):
    """torch.sub(1.0, t) etc. need a tensor first; rewrite scalar-first binaries."""
    import torch

    def g(a, b):
        if not torch.is_tensor(a) and torch.is_tensor(b):
            return f(torch.full_like(b, a), b)
        return f(a, b)

    return g


class TorchBackend(Backend):
    name = "torch"
    array = "torch"
    devices = ("cpu", "cuda")
    vendor = True
    ops = ("matmul", "softmax", "layernorm", "rmsnorm", "elementwise", "attention", "conv2d")
    dtypes = ("float32", "float64", "float16", "bfloat16")

    def _probe(self) -> tuple[bool, str]:
        import torch

        cuda = torch.cuda.is_available()
        return True, f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if cuda else ", CPU only")

    def supports(self, problem: Problem) -> bool:
        if not super().supports(problem):
            return False
        if problem.device.startswith("cuda"):
            import torch

            return torch.cuda.is_available()
        return True

    def synchronize(self, device: str) -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def candidates(self, problem: Problem) -> list[Candidate]:
        c = Candidate.of
        if problem.op == "attention":
            return [c("torch", "sdpa"), c("torch", "eager")]
        return [c("torch", "eager")]

    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        import torch
        import torch.nn.functional as F

        p = problem.param
        op = problem.op
        if op == "matmul":
            act = {"none": None, "relu": torch.relu, "gelu": F.gelu, "silu": F.silu}[p["activation"]]

            def mm(a, b, bias=None):
                if bias is not None and a.dim() == 2:
                    y = torch.addmm(bias, a, b)
                else:
                    y = torch.matmul(a, b)
                    if bias is not None:
                        y = y + bias
                return act(y) if act is not None else y

            return mm
        if op == "softmax":
            return lambda x: torch.softmax(x, dim=-1)
        if op == "layernorm":
            eps = p["eps"]
            return lambda x, w=None, b=None: F.layer_norm(x, (x.shape[-1],), w, b, eps)
        if op == "rmsnorm":
            eps = p["eps"]
            if hasattr(F, "rms_norm"):
                return lambda x, w=None: F.rms_norm(x, (x.shape[-1],), w, eps)

            def rms(x, w=None):
                y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                return y * w if w is not None else y

            return rms
        if op == "attention":
            causal = p["causal"]
            if candidate.template == "sdpa":
                return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            def naive(q, k, v):
                s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
                if causal:
                    S, L = s.shape[-2], s.shape[-1]
                    mask = torch.ones(S, L, dtype=torch.bool, device=s.device).triu(1)
                    s = s.masked_fill(mask, float("-inf"))
                return torch.matmul(torch.softmax(s, dim=-1), v)

            return naive
        if op == "conv2d":
            st, pd = p["stride"], p["padding"]
            return lambda x, w, b=None: F.conv2d(x, w, b, stride=st, padding=pd)
        if op == "elementwise":
            e = ex.parse(p["expr"])
            funcs = dict(_torch_funcs())
            for k in ("sub", "div", "pow"):
                funcs[k] = (2, _scalar_first(funcs[k][1]))

            def chain(*xs):
                out = ex.evaluate(e, xs, funcs)
                if not torch.is_tensor(out) or out.data_ptr() == xs[0].data_ptr():
                    out = torch.broadcast_to(torch.as_tensor(out, dtype=xs[0].dtype, device=xs[0].device), xs[0].shape).clone()
                return out

            return chain
        raise NotImplementedError(op)
