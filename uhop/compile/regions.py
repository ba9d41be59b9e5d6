"""Region kinds: each is a ``torch.library`` custom op (``torch.ops.uhop.<kind>``) with a fake
kernel (shapes for Dynamo/AOTAutograd/Inductor), a backward and a runtime that dispatches to
UHOP's tuned kernel for the op it computes.

Every kind has an aten *reference* (``REFERENCE[kind]``): the float64 check on first use, the
fallback when UHOP cannot serve a region, and the backward (``torch.func.vjp`` of the reference:
vendor/aten gradients where UHOP has no backward kernel).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from uhop.ops.in_graph import vjp_grads
from uhop.ops.matmul import activate_torch as activate  # the ops' own: regions and references agree


def _fold_bn(w: Tensor, b: Tensor | None, mean: Tensor, var: Tensor, gamma: Tensor | None,
             beta: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
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
    "log_softmax": lambda x: torch.log_softmax(x, -1),
    "attention": lambda q, k, v, mask, is_causal, scale, enable_gqa=False: F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
        **({"enable_gqa": True} if enable_gqa else {})),  # (torch before 2.5 has no such keyword)
    "embedding": lambda w, idx: F.embedding(idx, w),
    "conv2d": lambda x, w, b, stride, padding, activation: activate(F.conv2d(x, w, b, stride, padding), activation),
    "conv_bn": _conv_bn_ref,
    "gated_mlp": lambda x, wg, wu, activation: activate(F.linear(x, wg), activation) * F.linear(x, wu),
}

#: how many leading positional arguments are tensors (or None) per kind
N_TENSORS = {"linear": 3, "matmul": 2, "layer_norm": 3, "rms_norm": 2, "softmax": 1, "log_softmax": 1, "attention": 4,
             "embedding": 2, "conv2d": 3, "conv_bn": 7, "gated_mlp": 3}


def conform(kind: str, out: Tensor) -> Tensor:
    """The output layout a region promises (its fake kernel and its runtime agree on it, as
    Inductor asserts): 4-D attention as aten's fused SDPA kernels lay it out, (B, H, S, D) over
    (B, S, H, D) memory, so the usual ``transpose(1, 2).reshape(B, S, H*D)`` after it is free;
    everything else contiguous. A kernel that already matches is returned as is (no copy)."""
    if kind == "attention" and out.dim() == 4:
        bshd = out.transpose(1, 2)
        return out if bshd.is_contiguous() else bshd.contiguous().transpose(1, 2)
    return out if out.is_contiguous() else out.contiguous()


# ---- the custom ops ---------------------------------------------------------------------------
# Defined with ``torch.library.Library`` rather than ``torch.library.custom_op``: the latter wraps
# each call in a Dynamo-disable frame and an output-aliasing check (~25 us per call on the 2-core
# CI machine, x7 regions per GPT-2 block); region outputs are always fresh tensors, never views of
# an input, so the check has nothing to find. Fake kernels and backward are registered below.
SCHEMAS = {
    "linear": "linear(Tensor x, Tensor w, Tensor? b, str activation) -> Tensor",
    "matmul": "matmul(Tensor a, Tensor b, str activation) -> Tensor",
    "layer_norm": "layer_norm(Tensor x, Tensor? w, Tensor? b, float eps) -> Tensor",
    "rms_norm": "rms_norm(Tensor x, Tensor? w, float eps) -> Tensor",
    "softmax": "softmax(Tensor x) -> Tensor",
    "log_softmax": "log_softmax(Tensor x) -> Tensor",
    # SDPA semantics: ``mask`` additive (float) or boolean (True = keep), broadcastable
    # (``enable_gqa``: k and v with fewer heads than q in dim -3, as SDPA's grouped-query attention)
    "attention": "attention(Tensor q, Tensor k, Tensor v, Tensor? mask, bool is_causal, float? scale, "
                 "bool enable_gqa=False) -> Tensor",
    "embedding": "embedding(Tensor w, Tensor idx) -> Tensor",
    "conv2d": "conv2d(Tensor x, Tensor w, Tensor? b, int stride, int padding, str activation) -> Tensor",
    # inference only (eval batchnorm folded into the conv): the partitioner emits it under no_grad
    "conv_bn": "conv_bn(Tensor x, Tensor w, Tensor? b, Tensor mean, Tensor var, Tensor? gamma, Tensor? beta, "
               "float eps, int stride, int padding, str activation) -> Tensor",
    # a gated MLP's projections: act(x @ wg.T) * (x @ wu.T), weights (N, K) as nn.Linear holds them
    "gated_mlp": "gated_mlp(Tensor x, Tensor wg, Tensor wu, str activation) -> Tensor",
}  # fmt: skip

_LIB = torch.library.Library("uhop", "DEF")


def _define(kind: str) -> None:
    def impl(*args):
        return _runtime.run_region(kind, args)

    _LIB.define(SCHEMAS[kind])
    _LIB.impl(kind, impl, "CompositeExplicitAutograd")


for _kind in SCHEMAS:
    _define(_kind)
OPS = {kind: getattr(torch.ops.uhop, kind) for kind in SCHEMAS}


# ---- fake kernels and backward: both from the reference --------------------------------------
def _register(kind: str) -> None:
    ref, nt = REFERENCE[kind], N_TENSORS[kind]

    def fake(*args):
        # on fake tensors the aten reference computes only shapes, dtypes and (via conform) the
        # layout the runtime promises: Inductor asserts the strides a fake kernel returns
        return conform(kind, ref(*args))

    torch.library.register_fake(f"uhop::{kind}", fake, lib=_LIB)

    def setup_context(ctx, inputs, output):
        ctx.inputs = inputs
        ctx.save_for_backward(*[t if isinstance(t, Tensor) else None for t in inputs[:nt]])

    def backward(ctx, grad):
        return tuple(vjp_grads(ref, [*ctx.saved_tensors, *ctx.inputs[nt:]], grad))

    torch.library.register_autograd(f"uhop::{kind}", backward, setup_context=setup_context, lib=_LIB)


for _kind in OPS:
    _register(_kind)

from uhop.compile import runtime as _runtime  # noqa: E402 - runtime imports this module's tables
