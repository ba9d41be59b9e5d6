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


def _direct(op_name: str, slot: str = ""):
    """``uhop.ops.<op_name>``. ``slot`` names its guard list in the kernel cache (the op's name by
    default): torch's tensor guards check the thread's dispatch-key state, which differs inside a
    custom op node (autograd keys excluded), so the nodes keep a list of their own
    (``uhop.ops.in_graph``) rather than failing every check of the eager list and filling it."""
    slot = slot or op_name

    def run(*args: Any, **params: Any) -> Any:
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
    run.__doc__ = f"{REGISTRY[op_name].description}\n\nDispatches to UHOP's best kernel for the inputs."
    return run


matmul = _direct("matmul")


def _along_axis(op_name: str, what: str) -> Any:
    """``uhop.ops.<op_name>(x, axis=...)`` for a row op over the last dim: ``axis`` (numpy's name)
    or ``dim`` (torch's), the last by default; another axis is moved last around the kernel (one
    copy each way)."""
    last = _direct(op_name)

    def run(x: Any, *args: Any, axis: int | None = None, dim: int | None = None, **params: Any) -> Any:
        if args or params or axis is None and dim is None:  # the op takes neither: it names them
            return last(x, *args, **params)
        if axis is not None and dim is not None:
            raise InputError(f"{op_name}: give axis or dim, not both (axis={axis!r}, dim={dim!r})")
        a = axis if axis is not None else dim
        nd = getattr(x, "ndim", None)
        if nd is None and hasattr(x, "shape"):  # a uhop.Buffer
            nd = len(x.shape)
        if nd is None:  # not an array: the op names the input
            return last(x)
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not -nd <= a < max(nd, 1):
            name = "axis" if axis is not None else "dim"
            raise InputError(f"{op_name}: {name} must be an int in [{-max(nd, 1)}, {max(nd, 1)}) for an input "
                             f"of {nd} dimension(s); got {a!r}")  # fmt: skip
        a = int(a) % max(nd, 1)
        if a == nd - 1 or nd == 0:
            return last(x)
        if isinstance(x, np.ndarray):
            return np.moveaxis(last(np.ascontiguousarray(np.moveaxis(x, a, -1))), -1, a)
        if not hasattr(x, "movedim"):
            raise InputError(f"{op_name}: axis/dim other than the last needs a numpy array or torch tensor; "
                             f"got {type(x).__name__}")  # fmt: skip
        return last(x.movedim(a, -1).contiguous()).movedim(-1, a)

    run.__name__ = op_name
    run.__doc__ = (f"{what} along ``axis`` (numpy's name) or ``dim`` (torch's), the last by default; another "
                   "axis is moved last around the kernel (one copy each way).\n\nDispatches to UHOP's best "
                   "kernel for the inputs.")  # fmt: skip
    return run


softmax = _along_axis("softmax", "Softmax")
log_softmax = _along_axis("log_softmax", "Log-softmax")


layernorm = _direct("layernorm")
rmsnorm = _direct("rmsnorm")
_attention = _direct("attention")


def attention(q: Any, k: Any, v: Any, *args: Any, mask: Any = None, attn_mask: Any = None, is_causal: Any = None,
              scale: Any = None, dropout_p: float = 0.0, **params: Any) -> Any:  # fmt: skip
    """softmax(q k^T * scale [+ mask]) v, with the mask as a fourth input or ``mask=`` /
    ``attn_mask=`` (torch's SDPA name: boolean, True = attend, or additive; broadcastable to
    (..., S, L)), ``causal=`` or ``is_causal=`` (top-left aligned), ``scale`` 1/sqrt(D) by default
    (another is folded into q: one elementwise pass). No dropout: ``dropout_p`` must be 0.

    Dispatches to UHOP's best kernel for the inputs."""
    if mask is None and attn_mask is None and is_causal is None and scale is None and not dropout_p:
        return _attention(q, k, v, *args, **params)
    if mask is not None and attn_mask is not None:
        raise InputError("attention: give mask or attn_mask, not both")
    m = mask if mask is not None else attn_mask
    if m is not None:
        if args:
            raise InputError("attention: the mask is given twice (a fourth input and mask=/attn_mask=)")
        args = (m,)
    if is_causal is not None:
        if "causal" in params:
            raise InputError("attention: give causal or is_causal, not both")
        params["causal"] = is_causal
    if dropout_p:
        raise InputError(f"attention: dropout_p must be 0 (UHOP's attention has no dropout; torch's SDPA has); "
                         f"got {dropout_p!r}")  # fmt: skip
    if scale is not None:
        shape = tuple(getattr(q, "shape", ()))  # numpy, torch, a uhop.Buffer
        d = shape[-1] if shape else 0
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) or not (
            math.isfinite(scale) and scale > 0
        ):
            raise InputError(f"attention: scale must be a positive finite number; got {scale!r}")
        f = float(scale) * math.sqrt(d) if d else 1.0
        if abs(f - 1.0) > 1e-12:
            if not (isinstance(q, np.ndarray) or hasattr(q, "movedim")):
                raise InputError(f"attention: a scale other than 1/sqrt(D) needs q as a numpy array or torch tensor; "
                                 f"got {type(q).__name__}")  # fmt: skip
            q = q * (np.asarray(f, dtype=q.dtype) if isinstance(q, np.ndarray) else f)
    return _attention(q, k, v, *args, **params)


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
