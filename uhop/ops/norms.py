"""Row-wise ops over the last dimension: softmax, log-softmax, layernorm, rmsnorm."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from uhop.errors import InputError
from uhop.ops.base import ITEMSIZE, Op, Param


class _RowOp(Op):
    """x (..., N) plus optional per-column vectors; dims R (rows = prod of leading dims), N."""

    dims = ("R", "N")

    def check(self, args: Sequence[Any], params: Mapping[str, Any]) -> dict[str, int]:
        self.check_arrays(args)
        x = args[0]
        if x.ndim < 1:
            raise InputError(f"{self.name}: x must have at least 1 dim, got a scalar")
        N = x.shape[-1]
        for name, v in zip(self.inputs[1:], args[1:], strict=False):
            if v is not None and tuple(v.shape) != (N,):
                raise InputError(f"{self.name}: {name} must have shape ({N},) to match x's last dim, got {tuple(v.shape)}")
        return {"R": math.prod(x.shape[:-1]) if x.ndim > 1 else 1, "N": N}

    def output_shape(self, shapes, params):
        return tuple(shapes[0])

    def shapes_from_dims(self, dims, params, arity):
        R, N = dims["R"], dims["N"]
        return ([(R, N)] + [(N,)] * (len(self.inputs) - 1))[:arity]

    def bytes(self, dims, dtype, params) -> float:
        return ITEMSIZE[dtype] * (2 * dims["R"] * dims["N"] + (len(self.inputs) - 1) * dims["N"])


class Softmax(_RowOp):
    name = "softmax"
    inputs = ("x",)
    description = "softmax over the last dim"

    def reference(self, x, **_: Any) -> np.ndarray:
        m = np.max(x, axis=-1, keepdims=True)
        e = np.exp(x - m)
        return e / np.sum(e, axis=-1, keepdims=True)

    def reference_torch(self, x, **_: Any) -> Any:
        """:meth:`reference` on float64 torch tensors (computed where they live: a GPU validates a
        GPU kernel without a host round trip)."""
        e = (x - x.amax(dim=-1, keepdim=True)).exp()
        return e / e.sum(dim=-1, keepdim=True)

    def flops(self, dims, params) -> float:
        return 5.0 * dims["R"] * dims["N"]

    def bytes(self, dims, dtype, params) -> float:
        return ITEMSIZE[dtype] * 2 * dims["R"] * dims["N"]


class LogSoftmax(Softmax):
    """log(softmax(x)) computed stably as x - max - log(sum(exp(x - max))): what a language
    model's loss and sampling take (``F.log_softmax``, ``F.cross_entropy``'s first step)."""

    name = "log_softmax"
    description = "log-softmax over the last dim (x - logsumexp(x))"

    def reference(self, x, **_: Any) -> np.ndarray:
        m = np.max(x, axis=-1, keepdims=True)
        s = x - m
        return s - np.log(np.sum(np.exp(s), axis=-1, keepdims=True))

    def reference_torch(self, x, **_: Any) -> Any:
        """:meth:`reference` on float64 torch tensors."""
        s = x - x.amax(dim=-1, keepdim=True)
        return s - s.exp().sum(dim=-1, keepdim=True).log()

    def flops(self, dims, params) -> float:
        return 4.0 * dims["R"] * dims["N"]


class LayerNorm(_RowOp):
    name = "layernorm"
    inputs = ("x", "weight", "bias")
    optional = 2
    params = (Param("eps", 1e-5, None, float),)
    description = "(x - mean) / sqrt(var + eps) * weight + bias over the last dim"

    def reference(self, x, weight=None, bias=None, eps=1e-5, **_: Any) -> np.ndarray:
        mu = np.mean(x, axis=-1, keepdims=True)
        var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps)
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y

    def reference_torch(self, x, weight=None, bias=None, eps=1e-5, **_: Any) -> Any:
        """:meth:`reference` on float64 torch tensors."""
        mu = x.mean(dim=-1, keepdim=True)
        var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
        y = (x - mu) / (var + eps).sqrt()
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y

    def flops(self, dims, params) -> float:
        return 8.0 * dims["R"] * dims["N"]

    def error_scale(self, dims, params) -> float:
        # Normalized outputs reach |y| ~ sqrt(N) for spiky rows; rounding in the variance adds ~log N.
        return 4.0


class RMSNorm(_RowOp):
    name = "rmsnorm"
    inputs = ("x", "weight")
    optional = 1
    params = (Param("eps", 1e-6, None, float),)
    description = "x / sqrt(mean(x^2) + eps) * weight over the last dim"

    def reference(self, x, weight=None, eps=1e-6, **_: Any) -> np.ndarray:
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        if weight is not None:
            y = y * weight
        return y

    def reference_torch(self, x, weight=None, eps=1e-6, **_: Any) -> Any:
        """:meth:`reference` on float64 torch tensors."""
        y = x / ((x * x).mean(dim=-1, keepdim=True) + eps).sqrt()
        return y * weight if weight is not None else y

    def flops(self, dims, params) -> float:
        return 4.0 * dims["R"] * dims["N"]

    def error_scale(self, dims, params) -> float:
        return 4.0
