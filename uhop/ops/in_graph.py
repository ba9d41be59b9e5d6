"""``uhop.ops`` inside ``torch.compile``: each op is a torch custom op (``torch.ops.uhop_ops.<op>``).

Without this, Dynamo traced into UHOP's dispatcher (kernel caches, guards, the tuner) when a
compiled model called ``uhop.ops.softmax``: graph breaks, pages of warnings, and
``fullgraph=True`` failed. Now, while Dynamo traces (``torch.compiler.is_compiling()``), a
``uhop.ops`` call on torch tensors becomes one node of the graph, opaque to the compiler, which
runs UHOP's dispatch when the compiled graph runs (same store, same tuned kernel as eager):

- fake kernel (shapes and dtypes while tracing): the op computed by torch on the fake inputs;
- autograd: the vjp of torch's own op for the problem, recomputed from the saved inputs in the
  backward (UHOP has no backward kernels); the forward is UHOP's kernel. In eager mode a call that
  needs gradients still runs torch's op outright (``dispatch._grad_guard``), no recompute.
- ``cudagraph_unsafe``: a first call may tune in the background, which a CUDA graph capture
  must not record; Inductor's CUDA graphs split around these nodes.

``torch.compile(backend="uhop")`` sees the same nodes and leaves them as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Optional  # noqa: UP035 - torch.library infers schemas from typing.Optional

import torch
import torch.nn.functional as F

import uhop.ops as _uops  # imported only while Dynamo traces a call, uhop.ops long since loaded
from uhop.ops.matmul import activate_torch as _act

_Tensor = torch.Tensor
_TAGS = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()


def _eager(op: str) -> Any:
    """``uhop.ops.<op>`` as a node calls it: with a guard list of its own (``_uops._direct``'s
    ``slot``; the dispatch-key state inside a node fails every eager guard), elementwise as is."""
    return _IN_NODE.get(op) or getattr(_uops, op)


def _fresh(out: _Tensor, args: tuple[Any, ...]) -> _Tensor:
    """A custom op may not return (a view of) an input: copy in the rare case a kernel does."""
    ptr = out.untyped_storage().data_ptr()
    if any(isinstance(a, _Tensor) and a.untyped_storage().data_ptr() == ptr for a in args):
        return out.clone()
    return out


# ---- torch's own op per UHOP op: fake kernels and gradients ------------------------------------
def _native_matmul(a, b, bias, activation, trans_b):
    y = torch.matmul(a, b.mT if trans_b else b)
    return _act(y if bias is None else y + bias, activation)


def _native_attention(q, k, v, mask, causal, scale=None, kv_groups=None):
    from uhop.backends.torch import _sdpa

    return _sdpa(q, k, v, mask, causal, scale, bool(kv_groups and kv_groups > 1))


def _native_elementwise(expr, reduce, xs):
    from uhop.backends.torch import _chain_funcs
    from uhop.ops import expr as ex
    from uhop.ops.elementwise import reduce_last

    out = ex.evaluate(ex.parse(expr), tuple(xs), _chain_funcs())
    if not isinstance(out, _Tensor) or any(out is x for x in xs):  # a constant, or an input as is
        shape = torch.broadcast_shapes(*[x.shape for x in xs])
        out = torch.broadcast_to(torch.as_tensor(out, dtype=xs[0].dtype, device=xs[0].device), shape).clone()
    return reduce_last(out, reduce)


def _native_gated(x, w_gate, w_up, activation):
    return _act(F.linear(x, w_gate), activation) * F.linear(x, w_up)


def _native_rms(x, weight, eps):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


NATIVE: dict[str, Any] = {
    "matmul": _native_matmul,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "log_softmax": lambda x: torch.log_softmax(x, dim=-1),
    "layernorm": lambda x, weight, bias, eps: F.layer_norm(x, (x.shape[-1],), weight, bias, eps),
    "rmsnorm": _native_rms,
    "attention": _native_attention,
    "conv2d": lambda x, weight, bias, stride, padding: F.conv2d(x, weight, bias, stride=stride, padding=padding),
    "embedding": lambda weight, indices: F.embedding(indices, weight),
    "gated_mlp": _native_gated,
    "elementwise": _native_elementwise,
}

# ---- the custom ops: eager UHOP dispatch at run time ------------------------------------------
# Defined with ``torch.library.Library`` as the regions are (uhop/compile/regions.py, which says
# why): ``torch.library.custom_op`` wraps every call in a Dynamo-disable frame and an output
# aliasing check (a call 12.0-18.6 us on the 2-core VM, 10.0-12.4 us this way, 4.9-6.7 eager); ``_fresh``
# keeps the no-alias promise. (``uhop::`` holds the regions' ops, hence ``uhop_ops::``.)
_LIB = torch.library.Library("uhop_ops", "DEF")
_FNS: dict[str, Any] = {}  # each op's Python function: its signature is the schema and binds the fake kernel's arguments


def _custom_op(name: str) -> Any:
    def define(fn: Any) -> Any:
        _FNS[name] = fn
        _LIB.define(name + torch.library.infer_schema(fn, mutates_args=()), tags=_TAGS)
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        return fn

    return define


@_custom_op("matmul")
def matmul(a: _Tensor, b: _Tensor, bias: Optional[_Tensor] = None, activation: str = "none",  # noqa: UP045
           trans_b: bool = False) -> _Tensor:  # fmt: skip
    args = (a, b) if bias is None else (a, b, bias)
    return _fresh(_eager("matmul")(*args, activation=activation, trans_b=trans_b), args)


@_custom_op("softmax")
def softmax(x: _Tensor) -> _Tensor:
    return _fresh(_eager("softmax")(x), (x,))


@_custom_op("log_softmax")
def log_softmax(x: _Tensor) -> _Tensor:
    return _fresh(_eager("log_softmax")(x), (x,))


@_custom_op("layernorm")
def layernorm(x: _Tensor, weight: Optional[_Tensor] = None, bias: Optional[_Tensor] = None,  # noqa: UP045
              eps: float = 1e-5) -> _Tensor:  # fmt: skip
    args = (x, weight, bias) if bias is not None else (x, weight) if weight is not None else (x,)
    return _fresh(_eager("layernorm")(*args, eps=eps), args)


@_custom_op("rmsnorm")
def rmsnorm(x: _Tensor, weight: Optional[_Tensor] = None, eps: float = 1e-6) -> _Tensor:  # noqa: UP045
    args = (x,) if weight is None else (x, weight)
    return _fresh(_eager("rmsnorm")(*args, eps=eps), args)


@_custom_op("attention")
def attention(q: _Tensor, k: _Tensor, v: _Tensor, mask: Optional[_Tensor] = None,  # noqa: UP045
              causal: bool = False, scale: Optional[float] = None, kv_groups: Optional[int] = None) -> _Tensor:  # noqa: UP045
    args = (q, k, v) if mask is None else (q, k, v, mask)
    params: dict[str, Any] = {"causal": causal}
    if scale is not None:
        params["scale"] = scale
    if kv_groups is not None:
        params["kv_groups"] = kv_groups
    return _fresh(_eager("attention")(*args, **params), args)


@_custom_op("conv2d")
def conv2d(x: _Tensor, weight: _Tensor, bias: Optional[_Tensor] = None, stride: int = 1,  # noqa: UP045
           padding: int = 0) -> _Tensor:  # fmt: skip
    args = (x, weight) if bias is None else (x, weight, bias)
    return _fresh(_eager("conv2d")(*args, stride=stride, padding=padding), args)


@_custom_op("embedding")
def embedding(weight: _Tensor, indices: _Tensor) -> _Tensor:
    return _fresh(_eager("embedding")(weight, indices), (weight, indices))


@_custom_op("gated_mlp")
def gated_mlp(x: _Tensor, w_gate: _Tensor, w_up: _Tensor, activation: str = "silu") -> _Tensor:
    return _fresh(_eager("gated_mlp")(x, w_gate, w_up, activation=activation), (x, w_gate, w_up))


@_custom_op("elementwise")
def elementwise(expr: str, reduce: str, xs: list[_Tensor]) -> _Tensor:
    return _fresh(_eager("elementwise")(expr, *xs, reduce=reduce), tuple(xs))


# ---- fake kernels and autograd -----------------------------------------------------------------


def _differentiable(x: Any) -> bool:
    return isinstance(x, _Tensor) and x.is_floating_point()


def vjp_grads(fn: Any, args: Sequence[Any], grad: _Tensor) -> list[Any]:
    """The gradients of ``fn(*args)`` for its floating-point tensor arguments (None for the rest),
    by torch's vjp: the backward of an op that UHOP serves forward only."""
    diff = [i for i, a in enumerate(args) if _differentiable(a)]

    def f(*d: _Tensor) -> _Tensor:
        full = list(args)
        for i, t in zip(diff, d, strict=True):
            full[i] = t
        return fn(*full)

    _, vjp = torch.func.vjp(f, *[args[i] for i in diff])
    out: list[Any] = [None] * len(args)
    for i, g in zip(diff, vjp(grad), strict=True):
        out[i] = g
    return out


def _register(name: str, fn: Any) -> None:
    native = NATIVE[name]
    sig = inspect.signature(fn)

    def fake(*args: Any, **kwargs: Any) -> _Tensor:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return native(*bound.arguments.values()).contiguous()

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        # tensors go through save_for_backward (version checks); the rest (params) kept as is
        ctx.inputs = [None if isinstance(x, (_Tensor, list)) else x for x in inputs]
        if name in ("softmax", "log_softmax"):
            ctx.save_for_backward(output)
            return
        ctx.tensor_at = [isinstance(x, _Tensor) for x in inputs]
        flat = [x for x in inputs if isinstance(x, _Tensor)]
        if name == "elementwise":
            flat = list(inputs[2])
        ctx.save_for_backward(*flat)

    def backward(ctx: Any, grad: _Tensor) -> tuple[Any, ...]:
        inputs = ctx.inputs
        if name == "softmax":  # from the output alone, no recompute
            (y,) = ctx.saved_tensors
            return ((grad - (grad * y).sum(-1, keepdim=True)) * y,)
        if name == "log_softmax":  # d/dx (x - lse(x)) = grad - softmax(x) * sum(grad), softmax = exp(y)
            (y,) = ctx.saved_tensors
            return (grad - y.exp() * grad.sum(-1, keepdim=True),)
        saved = list(ctx.saved_tensors)
        if name == "elementwise":
            return None, None, vjp_grads(lambda *xs: native(inputs[0], inputs[1], list(xs)), saved, grad)
        it = iter(saved)  # the saved tensors back in place of the inputs
        args = [next(it) if t else a for a, t in zip(inputs, ctx.tensor_at, strict=True)]
        return tuple(vjp_grads(native, args, grad))

    torch.library.register_fake(f"uhop_ops::{name}", fake, lib=_LIB)
    torch.library.register_autograd(f"uhop_ops::{name}", backward, setup_context=setup_context, lib=_LIB)


for _name in _FNS:
    _register(_name, _FNS[_name])
_IN_NODE = {name: _uops._direct(name, name + "@node") for name in _FNS if name != "elementwise"}
OPS: dict[str, Any] = {name: getattr(torch.ops.uhop_ops, name).default for name in _FNS}
_ORDER = {name: tuple(inspect.signature(fn).parameters) for name, fn in _FNS.items()}  # arguments by position


def takes(op: str, args: tuple[Any, ...], params: dict[str, Any]) -> bool:
    """Whether the custom op takes this call: torch tensors (None for an optional one), params
    its schema names."""
    names = _ORDER[op]
    if op == "elementwise":
        return set(params) <= {"expr", "reduce"} and all(isinstance(a, _Tensor) for a in args)
    n = len(args)
    return (n <= len(names) and all(a is None or isinstance(a, _Tensor) for a in args)
            and all(p in names[n:] for p in params))  # fmt: skip


def call(op: str, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """``uhop.ops.<op>(*args, **params)`` while Dynamo traces: the custom op, arguments by name."""
    names = _ORDER[op]
    if op == "elementwise":
        return OPS["elementwise"](params["expr"], params.get("reduce", "none"), list(args))
    kw = dict(zip(names, args, strict=False))
    kw.update(params)
    return OPS[op](**kw)
