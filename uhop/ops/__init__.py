"""The op registry, and ``uhop.ops.<op>(...)`` for direct use.

``uhop.ops.matmul(a, b)`` dispatches to the best cached kernel for the problem (tuning it on
first use, per the policy in force); ``uhop.ops.get("matmul")`` returns the op's definition.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from uhop.errors import UnknownOpError
from uhop.ops.attention import Attention, Conv2d
from uhop.ops.base import Op, Param
from uhop.ops.elementwise import Elementwise
from uhop.ops.embedding import Embedding
from uhop.ops.matmul import GatedMLP, Matmul
from uhop.ops.norms import LayerNorm, RMSNorm, Softmax

REGISTRY: dict[str, Op] = {
    op.name: op for op in (Matmul(), Softmax(), LayerNorm(), RMSNorm(), Elementwise(), Attention(), Conv2d(),
                           Embedding(), GatedMLP())
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
softmax = _direct("softmax")
layernorm = _direct("layernorm")
rmsnorm = _direct("rmsnorm")
attention = _direct("attention")
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
