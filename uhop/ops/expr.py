"""A small expression IR for elementwise chains, its text form, and tracing of plain functions.

Three ways in, one IR out:

* text: ``parse("sigmoid(x*1.5+0.5)*x-0.25")`` (Python syntax, checked node by node, never eval'd);
* tracing a plain numpy function: ``trace(lambda x: 1/(1+np.exp(-x)), 1)`` through
  ``__array_ufunc__``;
* tracing a plain torch function: ``torch.sigmoid(x) * x`` through ``__torch_function__``.

Variables are ``Var(i)``, the i-th positional input. The canonical text (:func:`Expr.text`) is
stable and is what problem keys hash, so two spellings of one chain share a cache entry only if
they trace to the same tree.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from uhop.errors import InputError


class TraceError(InputError):
    """The function is not a chain of supported elementwise operations."""


#: name -> (arity, float64 numpy implementation)
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _erf(x):
    from uhop.ops.matmul import _erf as erf

    return erf(x)


FUNCS: dict[str, tuple[int, Callable[..., Any]]] = {
    "add": (2, np.add),
    "sub": (2, np.subtract),
    "mul": (2, np.multiply),
    "div": (2, np.true_divide),
    "pow": (2, np.power),
    "maximum": (2, np.maximum),
    "minimum": (2, np.minimum),
    "neg": (1, np.negative),
    "abs": (1, np.abs),
    "exp": (1, np.exp),
    "log": (1, np.log),
    "sqrt": (1, np.sqrt),
    "rsqrt": (1, lambda x: 1.0 / np.sqrt(x)),
    "tanh": (1, np.tanh),
    "sin": (1, np.sin),
    "cos": (1, np.cos),
    "sigmoid": (1, _sigmoid),
    "relu": (1, lambda x: np.maximum(x, 0.0)),
    "silu": (1, lambda x: x * _sigmoid(x)),
    "gelu": (1, lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))),
    "erf": (1, _erf),
    "square": (1, np.square),
    "reciprocal": (1, lambda x: 1.0 / x),
}

_UFUNCS = {
    np.add: "add", np.subtract: "sub", np.multiply: "mul", np.true_divide: "div", np.power: "pow",
    np.maximum: "maximum", np.minimum: "minimum", np.negative: "neg", np.absolute: "abs", np.exp: "exp",
    np.log: "log", np.sqrt: "sqrt", np.tanh: "tanh", np.sin: "sin", np.cos: "cos", np.square: "square",
    np.reciprocal: "reciprocal", np.positive: "pos", np.fmax: "maximum", np.fmin: "minimum",
}  # fmt: skip

# torch function names (torch.X, torch.Tensor.X, F.X) that map onto FUNCS.
_TORCH_NAMES = {
    "add": "add", "__add__": "add", "__radd__": "radd", "sub": "sub", "subtract": "sub", "__sub__": "sub",
    "__rsub__": "rsub", "mul": "mul", "multiply": "mul", "__mul__": "mul", "__rmul__": "rmul", "div": "div",
    "divide": "div", "true_divide": "div", "__truediv__": "div", "__rtruediv__": "rdiv", "pow": "pow",
    "__pow__": "pow", "__rpow__": "rpow", "neg": "neg", "negative": "neg", "__neg__": "neg", "abs": "abs",
    "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "tanh": "tanh", "sin": "sin", "cos": "cos",
    "sigmoid": "sigmoid", "relu": "relu", "silu": "silu", "gelu": "gelu", "erf": "erf", "square": "square",
    "reciprocal": "reciprocal", "maximum": "maximum", "minimum": "minimum",
}  # fmt: skip


class Expr:
    """A node. Python operators build new nodes, so an ``Expr`` is also a tracer."""

    __array_priority__ = 1000  # ndarray (op) Expr defers to Expr's reflected operator

    # ---- building -------------------------------------------------------------------------
    def __add__(self, o): return call("add", self, o)  # noqa: E704
    def __radd__(self, o): return call("add", o, self)  # noqa: E704
    def __sub__(self, o): return call("sub", self, o)  # noqa: E704
    def __rsub__(self, o): return call("sub", o, self)  # noqa: E704
    def __mul__(self, o): return call("mul", self, o)  # noqa: E704
    def __rmul__(self, o): return call("mul", o, self)  # noqa: E704
    def __truediv__(self, o): return call("div", self, o)  # noqa: E704
    def __rtruediv__(self, o): return call("div", o, self)  # noqa: E704
    def __pow__(self, o): return call("pow", self, o)  # noqa: E704
    def __rpow__(self, o): return call("pow", o, self)  # noqa: E704
    def __neg__(self): return call("neg", self)  # noqa: E704
    def __pos__(self): return self  # noqa: E704
    def __abs__(self): return call("abs", self)  # noqa: E704

    def __getattr__(self, name: str):
        # Tensor-method spelling: x.exp(), x.sigmoid(), x.clamp(min=0), x.pow(2) ...
        if name.startswith("_"):
            raise AttributeError(name)
        if name in ("clamp", "clip"):
            return lambda *a, **k: Expr.__torch_function__(type(self).clamp_, (), (self, *a), k)
        fn = _TORCH_NAMES.get(name, name)
        if fn not in FUNCS:
            raise AttributeError(f"{name!r} is not an elementwise operation UHOP can trace")
        return lambda *a: call(fn, self, *a)

    clamp_ = type("clamp", (), {"__name__": "clamp"})  # stands in for torch.clamp in method calls

    def _compare(self, other):
        raise TraceError("comparisons (x > 0, branching on values) are not supported in elementwise chains; "
                         "use maximum/minimum/relu")

    __lt__ = __le__ = __gt__ = __ge__ = _compare

    def __bool__(self) -> bool:
        raise TraceError("elementwise functions cannot branch on tensor values (a Python `if` on a tensor)")

    # numpy protocol: ufuncs become nodes, any other numpy function is not elementwise.
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or kwargs.get("out") is not None:
            raise TraceError(f"np.{ufunc.__name__}.{method} is not an elementwise operation UHOP can fuse")
        name = _UFUNCS.get(ufunc)
        if name is None:
            raise TraceError(f"np.{ufunc.__name__} is not supported in elementwise chains; supported: {sorted(FUNCS)}")
        if name == "pos":
            return inputs[0]
        return call(name, *inputs)

    def __array_function__(self, func, types, args, kwargs):
        raise TraceError(f"np.{func.__name__} is not elementwise; UHOP can fuse chains of {sorted(FUNCS)}")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        fname = getattr(func, "__name__", str(func))
        name = _TORCH_NAMES.get(fname)
        if name is None:
            if fname in ("clamp", "clip"):
                x = args[0]
                lo = kwargs.pop("min", args[1] if len(args) > 1 else None)
                hi = kwargs.pop("max", args[2] if len(args) > 2 else None)
                if lo is not None:
                    x = call("maximum", x, lo)
                if hi is not None:
                    x = call("minimum", x, hi)
                return x
            raise TraceError(f"torch.{fname} is not supported in elementwise chains; supported: {sorted(FUNCS)}")
        if fname == "gelu" and kwargs.get("approximate", "none") != "none":
            raise TraceError("gelu(approximate='tanh') is not supported; use the exact form")
        alpha = kwargs.pop("alpha", 1)
        if name.startswith("r") and name[1:] in FUNCS and name not in FUNCS:  # reflected: radd, rsub, ...
            return call(name[1:], args[1], args[0])
        a = list(args)
        if alpha != 1 and name in ("add", "sub"):
            a[1] = call("mul", a[1], alpha)
        return call(name, *a)

    # ---- reading ------------------------------------------------------------------------
    def text(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Expr({self.text()})"


@dataclass(frozen=True, eq=True, repr=False)
class Var(Expr):
    index: int

    def text(self) -> str:
        return f"x{self.index}"


@dataclass(frozen=True, eq=True, repr=False)
class Const(Expr):
    value: float

    def text(self) -> str:
        return repr(float(self.value))


@dataclass(frozen=True, eq=True, repr=False)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...]

    def text(self) -> str:
        return f"{self.fn}({','.join(a.text() for a in self.args)})"


def _lift(x: Any) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, (bool, int, float, np.integer, np.floating)):
        return Const(float(x))
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return Const(float(x))
    raise TraceError(
        f"elementwise chains take tensors and Python scalars; got a constant {type(x).__name__} "
        "(pass tensors as arguments of the function instead)"
    )


def call(fn: str, *args: Any) -> Expr:
    arity, _ = FUNCS[fn]
    if len(args) != arity:
        raise TraceError(f"{fn} takes {arity} argument(s), got {len(args)}")
    lifted = tuple(_lift(a) for a in args)
    if all(isinstance(a, Const) for a in lifted):  # fold constants
        return Const(float(FUNCS[fn][1](*(np.float64(a.value) for a in lifted))))
    return Call(fn, lifted)


# ---- walking ------------------------------------------------------------------------------
def nodes(e: Expr) -> list[Expr]:
    """Post-order list of nodes (each distinct subtree once)."""
    seen: dict[Expr, None] = {}

    def walk(n: Expr) -> None:
        if n in seen:
            return
        if isinstance(n, Call):
            for a in n.args:
                walk(a)
        seen[n] = None

    walk(e)
    return list(seen)


def n_vars(e: Expr) -> int:
    idx = [n.index for n in nodes(e) if isinstance(n, Var)]
    return max(idx) + 1 if idx else 0


def op_count(e: Expr) -> int:
    return sum(1 for n in nodes(e) if isinstance(n, Call))


def evaluate(e: Expr, inputs: Sequence[Any], funcs: dict[str, tuple[int, Callable[..., Any]]] = FUNCS) -> Any:
    """Evaluate with numpy (float64 in, float64 out for the reference) or any array module whose
    implementations are given in ``funcs``."""
    memo: dict[Expr, Any] = {}
    for n in nodes(e):
        if isinstance(n, Var):
            memo[n] = inputs[n.index]
        elif isinstance(n, Const):
            memo[n] = n.value
        else:
            assert isinstance(n, Call)
            memo[n] = funcs[n.fn][1](*(memo[a] for a in n.args))
    return memo[e]


# ---- text form ------------------------------------------------------------------------------
_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}
_ALIASES = {"max": "maximum", "min": "minimum"}


def parse(text: str, names: Sequence[str] | None = None) -> Expr:
    """Parse ``"sigmoid(x*1.5+0.5)*x-0.25"``.

    Variables: ``x0, x1, ...`` by index, or any other names, numbered in ``names`` order if given,
    else alphabetically (so ``"a*b+c"`` takes inputs a, b, c).
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise InputError(f"expr is not a valid expression: {text!r} ({exc.msg})") from None
    found = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - set(FUNCS) - set(_ALIASES))
    if names is None:
        if all(n.startswith("x") and n[1:].isdigit() for n in found):
            index = {n: int(n[1:]) for n in found}
        else:
            index = {n: i for i, n in enumerate(found)}
    else:
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in found if n not in index]
        if missing:
            raise InputError(f"expr uses {missing}, not among the input names {list(names)}")

    def build(node: ast.AST) -> Expr:
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return call(_BINOPS[type(node.op)], build(node.left), build(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = build(node.operand)
            return call("neg", inner) if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Const(float(node.value))
        if isinstance(node, ast.Name):
            return Var(index[node.id])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            fn = _ALIASES.get(node.func.id, node.func.id)
            if fn not in FUNCS:
                raise InputError(f"expr: unknown function {node.func.id!r}; known: {sorted(FUNCS)}")
            return call(fn, *(build(a) for a in node.args))
        raise InputError(f"expr: unsupported syntax {ast.unparse(node)!r} in {text!r}")

    return build(tree)


def trace(fn: Callable[..., Any], n_inputs: int) -> Expr:
    """Trace a plain numpy or torch elementwise function of ``n_inputs`` tensors into an Expr."""
    try:
        out = fn(*(Var(i) for i in range(n_inputs)))
    except TraceError:
        raise
    except Exception as exc:  # the function did something a tracer cannot stand in for
        raise TraceError(f"could not trace {getattr(fn, '__name__', fn)!r} as an elementwise chain: {exc}") from None
    if not isinstance(out, Expr) or isinstance(out, Const):
        raise TraceError(f"{getattr(fn, '__name__', fn)!r} does not return an elementwise function of its inputs")
    return out
