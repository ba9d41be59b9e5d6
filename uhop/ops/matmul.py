"""matmul: ``act(a @ b + bias)``, 2-D or batched, with a fused epilogue."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from uhop.errors import InputError
from uhop.ops.base import Op, Param

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")


def _erf(x: np.ndarray) -> np.ndarray:
    """float64 erf for references: scipy's ufunc; math.erf per element for small arrays while
    scipy.special is not imported yet (its import, 0.3-1 s, would be most of a warm start's first
    call, which checks the served kernel on a small instance) or when scipy is absent."""
    import sys

    x = np.asarray(x, dtype=np.float64)
    if x.size > 4096 or "scipy.special" in sys.modules:
        try:
            from scipy.special import erf

            return erf(x)
        except ImportError:
            pass
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def apply_activation(y: np.ndarray, activation: str) -> np.ndarray:
    """float64 activation; ``gelu`` is the exact erf form (torch's default), ``gelu_tanh`` its tanh
    approximation (``F.gelu(approximate="tanh")``, GPT-2's)."""
    if activation == "none":
        return y
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "gelu":
        return 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
    if activation == "gelu_tanh":
        return 0.5 * y * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y**3)))
    if activation == "silu":
        return y / (1.0 + np.exp(-y))
    raise InputError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def activate_torch(y: Any, activation: str) -> Any:
    """:func:`apply_activation` on a torch tensor (torch's ops; ``gelu`` the exact erf form)."""
    import torch
    import torch.nn.functional as F

    if activation == "none":
        return y
    if activation == "relu":
        return torch.relu(y)
    if activation == "gelu":
        return F.gelu(y)
    if activation == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if activation == "silu":
        return F.silu(y)
    raise InputError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


PRECISIONS = ("ieee", "tf32")
#: (rtol, atol) at unit scale for tf32 products: each input rounded to 11 significant bits
#: (relative error up to 2**-11), so a K-term dot product of unit-scale values errs by about
#: 4e-4 * sqrt(K) (one sigma) in absolute terms: atol scales with sqrt(K); rtol is at least
#: float32's (which already grows with sqrt(K))
TF32_TOLERANCE = (3e-3, 3e-3)


class Matmul(Op):
    name = "matmul"
    inputs = ("a", "b", "bias")
    optional = 1
    #: ``precision`` (float32 only): ``ieee`` products, or ``tf32`` (inputs rounded to a 10-bit
    #: mantissa, fp32 accumulation: what ``torch.backends.cuda.matmul.allow_tf32`` gives), which
    #: admits tensor-core kernels under a tolerance sized for that rounding
    #: ``trans_b``: b given as (..., N, K), F.linear's weight layout (read transposed, never copied);
    #: stated, not probed (no choices), so ``@optimize("matmul")`` keeps its probe count
    #: ``batched_b``: b has batch dims of its own (B x (K, N), attention's q @ k^T) rather than one
    #: (K, N) shared by every row of a; derived from the inputs and part of the key (a kernel tuned
    #: on a shared b may take b 2-D only: IREE's compiled signature, cuBLASLt's epilogue), and left
    #: out of it when false, so keys of the shared form are what they were
    params = (Param("activation", "none", ACTIVATIONS, str), Param("precision", "ieee", PRECISIONS, str),
              Param("trans_b", False, None, bool), Param("batched_b", False, None, bool))
    dims = ("B", "M", "N", "K")
    description = ("act(a @ b + bias); a (...,M,K), b (...,K,N) or (K,N), bias (N,); --shape MxNxK or BxMxNxK; "
                   "precision=tf32 admits TF32 tensor-core kernels for float32")  # fmt: skip

    def defaulted_dims(self) -> dict[str, int]:
        return {"B": 1}

    def normalize_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        out = super().normalize_params(given)
        if not out.get("batched_b"):
            out.pop("batched_b", None)  # the shared-b form: keys as they were before the param
        return out

    def check(self, args: Sequence[Any], params: Mapping[str, Any]) -> dict[str, int]:
        self.check_arrays(args)
        a, b = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        if a.ndim < 2:
            raise InputError(f"matmul: a must have at least 2 dims (M, K), got shape {tuple(a.shape)}")
        if b.ndim < 2:
            raise InputError(f"matmul: b must have at least 2 dims (K, N), got shape {tuple(b.shape)}")
        M, K = a.shape[-2], a.shape[-1]
        K2, N = b.shape[-2], b.shape[-1]
        if params.get("trans_b"):
            K2, N = N, K2
        if K != K2:
            which = "last dim (trans_b=True: b is (N, K))" if params.get("trans_b") else "second-to-last dim"
            raise InputError(
                f"matmul: a is {tuple(a.shape)} and b is {tuple(b.shape)}: a's last dim (K={K}) "
                f"must equal b's {which} ({K2})"
            )
        batch_a, batch_b = tuple(a.shape[:-2]), tuple(b.shape[:-2])
        if batch_b and batch_b != batch_a:
            raise InputError(
                f"matmul: batch dims of a {batch_a} and b {batch_b} must match (or b must be 2-D)"
            )
        if bias is not None and tuple(bias.shape) != (N,):
            raise InputError(f"matmul: bias must have shape ({N},), got {tuple(bias.shape)}")
        B = math.prod(batch_a) if batch_a else 1
        batched = bool(batch_b) and B > 1
        if "batched_b" in params and bool(params["batched_b"]) != batched:
            raise InputError(f"matmul: batched_b={params['batched_b']!r} does not match b's shape {tuple(b.shape)} "
                             f"(a is {tuple(a.shape)}); leave batched_b out, it is derived")  # fmt: skip
        if isinstance(params, dict):
            if batched:
                params["batched_b"] = True
            else:
                params.pop("batched_b", None)
        return {"B": B, "M": M, "N": N, "K": K}

    def output_shape(self, shapes: Sequence[tuple[int, ...]], params: Mapping[str, Any]) -> tuple[int, ...]:
        return (*shapes[0][:-1], shapes[1][-2] if params.get("trans_b") else shapes[1][-1])

    def shapes_from_dims(self, dims: Mapping[str, int], params: Mapping[str, Any], arity: int) -> list[tuple[int, ...]]:
        B, M, N, K = dims["B"], dims["M"], dims["N"], dims["K"]
        lead = (B,) if B > 1 else ()
        blead = lead if params.get("batched_b") else ()
        return [(*lead, M, K), (*blead, N, K) if params.get("trans_b") else (*blead, K, N), (N,)][:arity]

    def reference(self, a, b, bias=None, activation="none", trans_b=False, **_: Any) -> np.ndarray:
        y = np.matmul(a, np.swapaxes(b, -1, -2) if trans_b else b)
        if bias is not None:
            y = y + bias
        return apply_activation(y, activation)

    def reference_torch(self, a, b, bias=None, activation="none", trans_b=False, **_: Any) -> Any:
        """:meth:`reference` on float64 torch tensors (a GPU computes a 4096³ one in milliseconds)."""
        import torch

        y = torch.matmul(a, b.mT if trans_b else b)
        if bias is not None:
            y = y + bias
        return activate_torch(y, activation)

    def flops(self, dims, params) -> float:
        return 2.0 * dims["B"] * dims["M"] * dims["N"] * dims["K"]

    def bytes(self, dims, dtype, params) -> float:
        from uhop.ops.base import ITEMSIZE

        B, M, N, K = dims["B"], dims["M"], dims["N"], dims["K"]
        return ITEMSIZE[dtype] * (B * M * K + (B if params.get("batched_b") else 1) * K * N + B * M * N)

    def error_scale(self, dims, params) -> float:
        return math.sqrt(dims["K"])

    def tolerance(self, dtype, dims, params) -> tuple[float, float]:
        rtol, atol = super().tolerance(dtype, dims, params)
        if dtype == "float32" and params.get("precision") == "tf32":
            return max(rtol, TF32_TOLERANCE[0]), max(atol, TF32_TOLERANCE[1] * self.error_scale(dims, params))
        return rtol, atol


GATES = ("silu", "gelu", "gelu_tanh")


class GatedMLP(Op):
    """A gated MLP's gate and up projections: ``act(x @ w_gate.T) * (x @ w_up.T)`` (SwiGLU with
    ``silu``, GeGLU with ``gelu`` / ``gelu_tanh``), the weights in ``nn.Linear``'s (N, K) layout.
    As two GEMMs and an elementwise pass, both products go to memory and are read back; one kernel
    (:mod:`uhop.backends.triton_kernels.swiglu`) writes only the gated product."""

    name = "gated_mlp"
    inputs = ("x", "w_gate", "w_up")
    params = (Param("activation", "silu", GATES, str),)
    dims = ("M", "N", "K")
    description = ("act(x @ w_gate.T) * (x @ w_up.T) (SwiGLU / GeGLU projections); x (..., K), w_gate and w_up "
                   "(N, K) as nn.Linear holds them; --shape MxNxK")  # fmt: skip

    def check(self, args: Sequence[Any], params: Mapping[str, Any]) -> dict[str, int]:
        self.check_arrays(args)
        x, wg, wu = args
        if x.ndim < 1:
            raise InputError(f"gated_mlp: x must have at least 1 dim (..., K), got shape {tuple(x.shape)}")
        K = x.shape[-1]
        for name, w in (("w_gate", wg), ("w_up", wu)):
            if w.ndim != 2 or w.shape[1] != K:
                raise InputError(f"gated_mlp: {name} must be (N, K={K}) as nn.Linear holds it, got shape {tuple(w.shape)}")
        if tuple(wg.shape) != tuple(wu.shape):
            raise InputError(f"gated_mlp: w_gate {tuple(wg.shape)} and w_up {tuple(wu.shape)} must have one shape")
        return {"M": math.prod(x.shape[:-1]), "N": wg.shape[0], "K": K}

    def output_shape(self, shapes: Sequence[tuple[int, ...]], params: Mapping[str, Any]) -> tuple[int, ...]:
        return (*shapes[0][:-1], shapes[1][0])

    def shapes_from_dims(self, dims: Mapping[str, int], params: Mapping[str, Any], arity: int) -> list[tuple[int, ...]]:
        M, N, K = dims["M"], dims["N"], dims["K"]
        return [(M, K), (N, K), (N, K)][:arity]

    def reference(self, x, w_gate, w_up, activation="silu", **_: Any) -> np.ndarray:
        return apply_activation(x @ w_gate.T, activation) * (x @ w_up.T)

    def reference_torch(self, x, w_gate, w_up, activation="silu", **_: Any) -> Any:
        return activate_torch(x @ w_gate.mT, activation) * (x @ w_up.mT)

    def flops(self, dims, params) -> float:
        return 4.0 * dims["M"] * dims["N"] * dims["K"]

    def bytes(self, dims, dtype, params) -> float:
        from uhop.ops.base import ITEMSIZE

        M, N, K = dims["M"], dims["N"], dims["K"]
        return ITEMSIZE[dtype] * (M * K + 2 * N * K + M * N)

    def error_scale(self, dims, params) -> float:
        return math.sqrt(dims["K"])
