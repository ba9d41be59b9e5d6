"""Region kinds: each is a ``torch.library`` custom op (``torch.ops.uhop.<kind>``) with a fake
kernel (shapes for Dynamo/AOTAutograd/Inductor), a backward and a runtime that dispatches to
UHOP's tuned kernel for the op it computes.

Every kind has an aten *reference* (``REFERENCE[kind]``): the float64 check on first use, the
fallback when UHOP cannot serve a region, and the backward (``torch.func.vjp`` of the reference:
vendor/aten gradients where UHOP has no backward kernel).
"""

# ruff: noqa: UP045 - torch.library infers op schemas from Optional[...], not from X | None
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

#: activation names as UHOP's matmul spells them (``gelu_tanh``: GELU's tanh approximation)
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")


def activate(y: Tensor, activation: str) -> Tensor:
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
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _fold_bn(w: Tensor, b: Optional[Tensor], mean: Tensor, var: Tensor, gamma: Optional[Tensor],
             beta: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """Eval-mode batchnorm folded into the conv before it: w' = w*s, b' = (b - mean)*s + beta."""
    s = torch.rsqrt(var + eps)
    if gamma is not None:
        s = s * gamma
    b0 = b if b is not None else torch.zeros_like(mean)
    b2 = (b0 - mean) * s
    if beta is not None:
        b2 = b2 + beta
    return w * s.reshape(-1, 1, 1, 1), b2


def _conv_bn_ref(x, w, b, mean, var, gamma, beta, eps, stride, padding, activation):
    y = F.conv2d(x, w, b, stride, padding)
    y = F.batch_norm(y, mean, var, gamma, beta, False, 0.0, eps)
    return activate(y, activation)


#: aten semantics of each region kind (positional: tensors first, then non-tensor params)
REFERENCE: dict[str, Callable[..., Tensor]] = {
    "linear": lambda x, w, b, activation: activate(F.linear(x, w, b), activation),
    "matmul": lambda a, b, activation: activate(torch.matmul(a, b), activation),
    "layer_norm": lambda x, w, b, eps: F.layer_norm(x, (x.shape[-1],), w, b, eps),
    "rms_norm": lambda x, w, eps: F.rms_norm(x, (x.shape[-1],), w, eps),
    "softmax": lambda x: torch.softmax(x, -1),
    "attention": lambda q, k, v, mask, is_causal, scale: F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale),
    "embedding": lambda w, idx: F.embedding(idx, w),
    "conv2d": lambda x, w, b, stride, padding, activation: activate(F.conv2d(x, w, b, stride, padding), activation),
    "conv_bn": _conv_bn_ref,
}

#: how many leading positional arguments are tensors (or None) per kind
N_TENSORS = {"linear": 3, "matmul": 2, "layer_norm": 3, "rms_norm": 2, "softmax": 1, "attention": 4,
             "embedding": 2, "conv2d": 3, "conv_bn": 7}


def conform(kind: str, out: Tensor) -> Tensor:
    """The output layout a region promises (its fake kernel and its runtime agree on it, as
    Inductor asserts): 4-D attention as aten's fused SDPA kernels lay it out, (B, H, S, D) over
    (B, S, H, D) memory, so the usual ``transpose(1, 2).reshape(B, S, H*D)`` after it is free;
    everything else contiguous. A kernel that already matches is returned as is (no copy)."""
    if kind == "attention" and out.dim() == 4:
        bshd = out.transpose(1, 2)
        return out if bshd.is_contiguous() else bshd.contiguous().transpose(1, 2)
    return out if out.is_contiguous() else out.contiguous()


def _run(kind: str, *args):
    from uhop.compile.runtime import run_region

    return run_region(kind, args)


# ---- the custom ops ---------------------------------------------------------------------------
@torch.library.custom_op("uhop::linear", mutates_args=())
def linear(x: Tensor, w: Tensor, b: Optional[Tensor], activation: str) -> Tensor:
    """act(x @ w.T + b), ``w`` in F.linear's (N, K) layout."""
    return _run("linear", x, w, b, activation)


@torch.library.custom_op("uhop::matmul", mutates_args=())
def matmul(a: Tensor, b: Tensor, activation: str) -> Tensor:
    return _run("matmul", a, b, activation)


@torch.library.custom_op("uhop::layer_norm", mutates_args=())
def layer_norm(x: Tensor, w: Optional[Tensor], b: Optional[Tensor], eps: float) -> Tensor:
    return _run("layer_norm", x, w, b, eps)


@torch.library.custom_op("uhop::rms_norm", mutates_args=())
def rms_norm(x: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    return _run("rms_norm", x, w, eps)


@torch.library.custom_op("uhop::softmax", mutates_args=())
def softmax(x: Tensor) -> Tensor:
    return _run("softmax", x)


@torch.library.custom_op("uhop::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool,
              scale: Optional[float]) -> Tensor:
    """SDPA semantics: ``mask`` additive (float) or boolean (True = keep), broadcastable."""
    return _run("attention", q, k, v, mask, is_causal, scale)


@torch.library.custom_op("uhop::embedding", mutates_args=())
def embedding(w: Tensor, idx: Tensor) -> Tensor:
    return _run("embedding", w, idx)


@torch.library.custom_op("uhop::conv2d", mutates_args=())
def conv2d(x: Tensor, w: Tensor, b: Optional[Tensor], stride: int, padding: int, activation: str) -> Tensor:
    return _run("conv2d", x, w, b, stride, padding, activation)


@torch.library.custom_op("uhop::conv_bn", mutates_args=())
def conv_bn(x: Tensor, w: Tensor, b: Optional[Tensor], mean: Tensor, var: Tensor, gamma: Optional[Tensor],
            beta: Optional[Tensor], eps: float, stride: int, padding: int, activation: str) -> Tensor:
    """Inference only (eval batchnorm folded into the conv): the partitioner emits it under no_grad."""
    return _run("conv_bn", x, w, b, mean, var, gamma, beta, eps, stride, padding, activation)


OPS = {"linear": linear, "matmul": matmul, "layer_norm": layer_norm, "rms_norm": rms_norm, "softmax": softmax,
       "attention": attention, "embedding": embedding, "conv2d": conv2d, "conv_bn": conv_bn}


# ---- fake kernels and backward: both from the reference --------------------------------------
def _register(kind: str) -> None:
    ref, op, nt = REFERENCE[kind], OPS[kind], N_TENSORS[kind]

    def fake(*args):
        # on fake tensors the aten reference computes only shapes, dtypes and (via conform) the
        # layout the runtime promises: Inductor asserts the strides a fake kernel returns
        return conform(kind, ref(*args))

    op.register_fake(fake)

    def setup_context(ctx, inputs, output):
        ctx.inputs = inputs
        ctx.save_for_backward(*[t if isinstance(t, Tensor) else None for t in inputs[:nt]])

    def backward(ctx, grad):
        saved = list(ctx.saved_tensors)
        rest = ctx.inputs[nt:]
        diff = [i for i, t in enumerate(saved) if t is not None and t.is_floating_point()]

        def f(*xs):
            full = list(saved)
            for i, x in zip(diff, xs, strict=True):
                full[i] = x
            return ref(*full, *rest)

        _, vjp = torch.func.vjp(f, *[saved[i] for i in diff])
        grads = vjp(grad)
        out: list = [None] * len(ctx.inputs)
        for i, g in zip(diff, grads, strict=True):
            out[i] = g
        return tuple(out)

    op.register_autograd(backward, setup_context=setup_context)


for _kind in OPS:
    _register(_kind)
