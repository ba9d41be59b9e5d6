"""The op registry, and ``uhop.ops.<op>(...)`` for direct use.

``uhop.ops.matmul(a, b)`` dispatches to the best cached kernel for the problem (tuning it on
first use, per the policy in force); ``uhop.ops.get("matmul")`` returns the op's definition.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from uhop.errors import InputError, UnknownOpError
from uhop.ops.attention import Attention, Conv2d
from uhop.ops.base import Op, Param
from uhop.ops.elementwise import Elementwise
from uhop.ops.embedding import Embedding
from uhop.ops.matmul import GatedMLP, Matmul
from uhop.ops.norms import LayerNorm, LogSoftmax, RMSNorm, Softmax

REGISTRY: dict[str, Op] = {
    op.name: op for op in (Matmul(), Softmax(), LayerNorm(), RMSNorm(), Elementwise(), Attention(), Conv2d(),
                           Embedding(), GatedMLP(), LogSoftmax())
}


def get(name: str) -> Op:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownOpError(f"unknown op {name!r}; known ops: {', '.join(sorted(REGISTRY))}") from None


def names() -> list[str]:
    return list(REGISTRY)


_call_op: Any = None  # uhop.dispatch.call_op, bound on first use (dispatch imports this module)
_hit: Any = None  # (call_sig, the kernel cache): a call whose signature is cached runs from here
_tensor_types: Any = ()  # uhop.dispatch._TENSORS: the torch tensor types seen


def _dispatcher() -> Any:
    global _call_op, _hit, _tensor_types
    from uhop.dispatch import _TENSORS, _direct_cache, call_op, call_sig

    _call_op, _hit, _tensor_types = call_op, (call_sig, _direct_cache), _TENSORS
    return call_op


def _torch_not_imported() -> bool:
    """``_compiling`` until torch is imported: then it becomes ``torch.compiler.is_compiling``."""
    global _compiling
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "compiler"):
        return False
    _compiling = torch.compiler.is_compiling
    return _compiling()


_compiling: Any = _torch_not_imported  # True while Dynamo traces a call (torch.compile)


def _traced(op_name: str, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """A call met while Dynamo traces: the op's torch custom op (one opaque node; UHOP dispatches
    when the compiled graph runs), where it takes the call; else traced as before. numpy arrays
    (numpy code under ``uhop.jit`` / ``torch.compile``, which Dynamo traces as tensors) go in
    as the tensors they are traced as and come out as arrays again: traced into the dispatcher,
    ``uhop.ops.softmax(x @ w)`` in a jitted numpy function failed to compile
    ("'ndarray' object has no attribute 'is_contiguous'")."""
    import torch

    from uhop.ops import in_graph

    if in_graph.takes(op_name, args, params):
        return in_graph.call(op_name, args, params)
    if any(isinstance(a, np.ndarray) for a in args):
        ts = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args)
        if in_graph.takes(op_name, ts, params):
            return in_graph.call(op_name, ts, params).numpy()
    return _dispatcher()(op_name, args, params)


def _direct(op_name: str, slot: str = "", keywords: tuple[frozenset[str], Any, str] | None = None):
    """``uhop.ops.<op_name>``. ``slot`` names its guard list in the kernel cache (the op's name by
    default): torch's tensor guards check the thread's dispatch-key state, which differs inside a
    custom op node (autograd keys excluded), so the nodes keep a list of their own
    (``uhop.ops.in_graph``) rather than failing every check of the eager list and filling it.
    ``keywords``: (names, handler, doc) for call forms beyond the op's own params (``axis=``,
    SDPA's ``attn_mask=``): a call naming one goes to ``handler(run, args, params)``, which
    rewrites it into the op's form; other calls pay one truth test of their keywords."""
    slot = slot or op_name
    names, handler, extra_doc = keywords or (frozenset(), None, "")

    def run(*args: Any, _op_form: bool = False, **params: Any) -> Any:
        # (``_op_form``: a handler's call in the op's own form, where a keyword is also an op
        # parameter, attention's ``scale``)
        if params and handler is not None and not _op_form and not names.isdisjoint(params):
            return handler(run, args, params)
        if _compiling():
            return _traced(op_name, args, params)
        if _hit is not None:  # the hot path: a guard check, or the key and one dict lookup
            key, cache = _hit
            for n, p, g, k in cache.guarded.get(slot, ()):
                if n == len(args) and p == params and g.check(*args):
                    return k(*args)
            try:
                sig = key(op_name, args, params)
                k = cache.get(sig)
            except TypeError:  # unhashable argument: call_op names it
                sig = k = None
            if k is not None:
                if args and type(args[0]) in _tensor_types:  # numpy calls skip it
                    cache.remember(slot, args, params, k)
                return k(*args)
            return _call_op(op_name, args, params, sig)
        return _dispatcher()(op_name, args, params)

    run.__name__ = op_name
    run.__doc__ = f"{REGISTRY[op_name].description}{extra_doc}\n\nDispatches to UHOP's best kernel for the inputs."
    return run


matmul = _direct("matmul")


def _along_axis(run: Any, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """A row op over ``axis`` (numpy's name) or ``dim`` (torch's): the last served as is, another
    moved last around the kernel (one copy each way)."""
    op_name = run.__name__
    axis, dim = params.pop("axis", None), params.pop("dim", None)
    if len(args) != 1 or params or axis is None and dim is None:  # the op names what is wrong
        return run(*args, **params)
    if axis is not None and dim is not None:
        raise InputError(f"{op_name}: give axis or dim, not both (axis={axis!r}, dim={dim!r})")
    x, a = args[0], axis if axis is not None else dim
    nd = getattr(x, "ndim", None)
    if nd is None and hasattr(x, "shape"):  # a uhop.Buffer
        nd = len(x.shape)
    if nd is None:  # not an array: the op names the input
        return run(x)
    if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not -nd <= a < max(nd, 1):
        name = "axis" if axis is not None else "dim"
        raise InputError(f"{op_name}: {name} must be an int in [{-max(nd, 1)}, {max(nd, 1)}) for an input "
                         f"of {nd} dimension(s); got {a!r}")  # fmt: skip
    a = int(a) % max(nd, 1)
    if a == nd - 1 or nd == 0:
        return run(x)
    if isinstance(x, np.ndarray):
        return np.moveaxis(run(np.ascontiguousarray(np.moveaxis(x, a, -1))), -1, a)
    if not hasattr(x, "movedim"):
        raise InputError(f"{op_name}: axis/dim other than the last needs a numpy array or torch tensor; "
                         f"got {type(x).__name__}")  # fmt: skip
    return run(x.movedim(a, -1).contiguous()).movedim(-1, a)


_AXIS = (frozenset({"axis", "dim"}), _along_axis,
         "; along ``axis=`` (numpy's name) or ``dim=`` (torch's), another axis moved last around the kernel")
softmax = _direct("softmax", keywords=_AXIS)
log_softmax = _direct("log_softmax", keywords=_AXIS)
layernorm = _direct("layernorm")
rmsnorm = _direct("rmsnorm")


def _sdpa_keywords(run: Any, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """Attention called as torch's SDPA is: ``mask=`` / ``attn_mask=`` (the fourth input),
    ``is_causal=`` (``causal``), ``scale`` (the op's parameter; 1/sqrt(D) given explicitly is
    the default problem), ``dropout_p`` (0 only), ``enable_gqa`` (``kv_groups`` from the heads
    of q and k, dim -3)."""
    mask, attn_mask = params.pop("mask", None), params.pop("attn_mask", None)
    if params.pop("enable_gqa", False) and len(args) >= 2:
        from uhop.ops.attention import kv_groups_of

        if "kv_groups" in params:
            raise InputError("attention: give enable_gqa or kv_groups, not both")
        if (g := kv_groups_of(getattr(args[0], "shape", ()), getattr(args[1], "shape", ()))) is not None:
            params["kv_groups"] = g
    is_causal, scale, dropout_p = params.pop("is_causal", None), params.pop("scale", None), params.pop("dropout_p", 0.0)
    if mask is not None and attn_mask is not None:
        raise InputError("attention: give mask or attn_mask, not both")
    m = mask if mask is not None else attn_mask
    if m is not None:
        if len(args) > 3:
            raise InputError("attention: the mask is given twice (a fourth input and mask=/attn_mask=)")
        args = (*args, m)
    if is_causal is not None:
        if "causal" in params:
            raise InputError("attention: give causal or is_causal, not both")
        params["causal"] = is_causal
    if dropout_p:
        raise InputError(f"attention: dropout_p must be 0 (UHOP's attention has no dropout; torch's SDPA has); "
                         f"got {dropout_p!r}")  # fmt: skip
    if scale is not None and args:
        q = args[0]
        shape = tuple(getattr(q, "shape", ()))  # numpy, torch, a uhop.Buffer
        d = shape[-1] if shape else 0
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) or not (
            math.isfinite(scale) and scale > 0
        ):
            raise InputError(f"attention: scale must be a positive finite number; got {scale!r}")
        from uhop.ops.attention import explicit_scale

        if (s := explicit_scale(scale, d)) is not None:
            params["scale"] = s
    return run(*args, _op_form=True, **params)


attention = _direct("attention", keywords=(
    frozenset({"mask", "attn_mask", "is_causal", "scale", "dropout_p", "enable_gqa"}), _sdpa_keywords,
    "; the mask also as ``mask=`` / ``attn_mask=``, ``is_causal=``, ``scale=`` (of q k^T, 1/sqrt(D) unless "
    "given), ``dropout_p=0``, ``enable_gqa=`` (k and v with fewer heads than q), as torch's SDPA is called"))


conv2d = _direct("conv2d")
embedding = _direct("embedding")
gated_mlp = _direct("gated_mlp")


def elementwise(expr: Any, *args: Any, reduce: str = "none") -> Any:
    """``elementwise("sigmoid(x*1.5+0.5)*x-0.25", x)``: evaluate a fused chain. Inputs have one
    shape, or broadcast as a row vector along the last dim or a scalar; ``reduce`` ("sum",
    "mean", "max") reduces the result over the last dim in the same pass."""
    params = {"expr": expr} if reduce == "none" else {"expr": expr, "reduce": reduce}
    if _compiling():
        return _traced("elementwise", args, params)
    return (_call_op or _dispatcher())("elementwise", args, params)


__all__ = ["Op", "Param", "REGISTRY", "get", "names", *REGISTRY]
