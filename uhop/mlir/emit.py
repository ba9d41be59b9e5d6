"""Emission: UHOP ops as MLIR modules of linalg on tensors, built through the MLIR Python bindings
shipped with IREE's compiler (``iree.compiler.ir`` and its dialects), never from string templates.

Every module has one public function ``@main`` taking the op's inputs as ranked tensors (in the
op's input order, ``problem.arity`` of them) and returning the output tensor. Ops are written the
way a frontend would hand them to a compiler: named structured ops where linalg has one
(``linalg.matmul``, ``linalg.conv_2d_nchw_fchw``), one ``linalg.generic`` per reduction or
elementwise step otherwise. Nothing is fused here: fusion, tiling and vectorization are decisions
of :mod:`uhop.mlir.passes`.

The text of an emitted module is deterministic (golden tests in ``tests/mlir/golden``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from uhop.errors import InputError
from uhop.ops import expr as ex
from uhop.ops import get as get_op

#: ops this module can emit
OPS = ("matmul", "softmax", "layernorm", "rmsnorm", "elementwise", "conv2d")
#: UHOP dtype -> MLIR element type name
DTYPES = {"float32": "f32", "float64": "f64", "float16": "f16"}


@dataclass(frozen=True)
class Emitted:
    """An emitted module and what it computes."""

    op: str
    dims: tuple[tuple[str, int], ...]
    dtype: str
    params: tuple[tuple[str, Any], ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    text: str
    entry: str = "main"


def emit(
    op: str,
    dims: Mapping[str, int],
    dtype: str = "float32",
    params: Mapping[str, Any] | None = None,
    arity: int | None = None,
) -> Emitted:
    """Build the linalg-on-tensors module for ``op`` at ``dims`` (canonical dims of the op).

    ``arity`` is the number of inputs present (optional inputs such as a bias change the module);
    by default only the required inputs. Raises :class:`~uhop.errors.InputError` for an op or dtype
    this emitter does not cover.
    """
    from iree.compiler import ir

    if op not in OPS:
        raise InputError(f"op must be one of {', '.join(OPS)} for MLIR emission, got {op!r}")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)} for MLIR emission, got {dtype!r}")
    spec = get_op(op)
    p = spec.normalize_params(params or {})
    if arity is None:
        arity = ex.n_vars(spec.expression(p)) if spec.variadic else len(spec.inputs) - spec.optional
    given = {**spec.defaulted_dims(), **dims}
    missing = [k for k in spec.dims if k not in given]
    if missing:
        raise InputError(f"dims for {op} must name {', '.join(spec.dims)}; missing {', '.join(missing)}")
    d = {k: int(given[k]) for k in spec.dims}
    shapes = [tuple(s) for s in spec.shapes_from_dims(d, p, arity)]
    out_shape = tuple(spec.output_shape(shapes, p))
    with ir.Context(), ir.Location.unknown():
        module = ir.Module.create()
        b = _Builder(DTYPES[dtype])
        with ir.InsertionPoint(module.body):
            _BUILDERS[op](b, shapes, out_shape, p)
        text = str(module)
    return Emitted(op, tuple(d.items()), dtype, tuple(sorted(p.items())), tuple(shapes), out_shape, text)


class _Builder:
    """Small helpers over the bindings: typed constants, empty/filled tensors, generics."""

    def __init__(self, elem: str) -> None:
        from iree.compiler import ir

        self.ir = ir
        self.elem = {"f32": ir.F32Type, "f64": ir.F64Type, "f16": ir.F16Type}[elem].get()

    def tensor(self, shape: Sequence[int]):
        return self.ir.RankedTensorType.get(list(shape), self.elem)

    def const(self, value: float):
        from iree.compiler.dialects import arith

        return arith.ConstantOp(self.elem, float(value)).result

    def empty(self, shape: Sequence[int]):
        from iree.compiler.dialects import tensor

        return tensor.EmptyOp(list(shape), self.elem).result

    def filled(self, shape: Sequence[int], value: float):
        from iree.compiler.dialects import linalg

        return linalg.fill(self.const(value), outs=[self.empty(shape)])

    def map(self, rank: int, dims: Sequence[int]):
        ir = self.ir
        return ir.AffineMap.get(rank, 0, [ir.AffineDimExpr.get(i) for i in dims])

    def generic(
        self,
        ins: Sequence[Any],
        out: Any,
        maps: Sequence[Any],
        iterators: Sequence[str],
        body: Callable[..., Any],
    ):
        """``linalg.generic`` with ``body(*scalars) -> scalar`` over the input and output elements."""
        from iree.compiler.dialects import linalg

        ir = self.ir
        op = linalg.GenericOp_(
            list(ins), [out], ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps]),
            [getattr(linalg.IteratorType, it) for it in iterators],
        )  # fmt: skip
        block = op.regions[0].blocks[0]
        with ir.InsertionPoint(block):
            linalg.YieldOp([body(*block.arguments)])
        return op.result


# ---- scalar math -------------------------------------------------------------------------------
def _scalar(b: _Builder, fn: str, args: Sequence[Any]):
    """One expression-IR function on scalars (see :data:`uhop.ops.expr.FUNCS`)."""
    from iree.compiler.dialects import arith
    from iree.compiler.dialects import math as m

    def sigmoid(x):
        return arith.divf(b.const(1.0), arith.addf(b.const(1.0), m.exp(arith.negf(x))))

    unary = {
        "neg": arith.negf, "abs": m.absf, "exp": m.exp, "log": m.log, "sqrt": m.sqrt, "rsqrt": m.rsqrt,
        "tanh": m.tanh, "sin": m.sin, "cos": m.cos, "erf": m.erf, "sigmoid": sigmoid,
        "relu": lambda x: arith.maximumf(x, b.const(0.0)),
        "silu": lambda x: arith.mulf(x, sigmoid(x)),
        "gelu": lambda x: arith.mulf(
            arith.mulf(b.const(0.5), x),
            arith.addf(b.const(1.0), m.erf(arith.mulf(x, b.const(1.0 / math.sqrt(2.0))))),
        ),
        "gelu_tanh": lambda x: arith.mulf(  # GPT-2's form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            arith.mulf(b.const(0.5), x),
            arith.addf(b.const(1.0), m.tanh(arith.mulf(
                b.const(math.sqrt(2.0 / math.pi)),
                arith.addf(x, arith.mulf(b.const(0.044715), arith.mulf(x, arith.mulf(x, x)))),
            ))),
        ),
        "square": lambda x: arith.mulf(x, x),
        "reciprocal": lambda x: arith.divf(b.const(1.0), x),
    }  # fmt: skip
    binary = {
        "add": arith.addf, "sub": arith.subf, "mul": arith.mulf, "div": arith.divf,
        "maximum": arith.maximumf, "minimum": arith.minimumf, "pow": m.powf,
    }  # fmt: skip
    if fn in unary:
        return unary[fn](args[0])
    return binary[fn](args[0], args[1])


def _activation(b: _Builder, y, activation: str):
    return y if activation == "none" else _scalar(b, activation, [y])


# ---- ops --------------------------------------------------------------------------------------
def _func(b: _Builder, shapes, out_shape, body: Callable[..., Any]) -> None:
    from iree.compiler.dialects import func

    func.FuncOp.from_py_func(*(b.tensor(s) for s in shapes), name="main")(body)


def _matmul(b: _Builder, shapes, out_shape, p) -> None:
    from iree.compiler.dialects import arith, linalg, tensor

    act = p["activation"]

    def body(a, w, *rest):
        bias = rest[0] if rest else None
        batched = len(shapes[0]) == 3
        if batched:  # (B, M, K) @ (K, N): one GEMM over B*M rows
            B, M, K = shapes[0]
            a = tensor.collapse_shape(b.tensor([B * M, K]), a, [[0, 1], [2]])
        rows, N = a.type.shape[0], shapes[1][1]
        y = linalg.matmul(a, w, outs=[b.filled([rows, N], 0.0)])
        if bias is not None or act != "none":
            ins = [y] + ([bias] if bias is not None else [])
            maps = [b.map(2, [0, 1])] + ([b.map(2, [1])] if bias is not None else []) + [b.map(2, [0, 1])]

            def epilogue(acc, *r):
                v = arith.addf(acc, r[0]) if bias is not None else acc
                return _activation(b, v, act)

            y = b.generic(ins, b.empty([rows, N]), maps, ["parallel", "parallel"], epilogue)
        if batched:
            y = tensor.expand_shape(b.tensor(out_shape), y, [[0, 1], [2]], [], list(out_shape))
        return y

    _func(b, shapes, out_shape, body)


def _rows(b: _Builder, shapes, x):
    """x as (R, N) (a collapse for rank > 2) and a function restoring the original shape."""
    from iree.compiler.dialects import tensor

    shape = shapes[0]
    if len(shape) == 2:
        return x, shape[0], shape[1], lambda y: y
    R, N = math.prod(shape[:-1]), shape[-1]
    if len(shape) == 1:
        x2 = tensor.expand_shape(b.tensor([1, N]), x, [[0, 1]], [], [1, N])
        return x2, 1, N, lambda y: tensor.collapse_shape(b.tensor(shape), y, [[0, 1]])
    groups = [list(range(len(shape) - 1)), [len(shape) - 1]]
    x2 = tensor.collapse_shape(b.tensor([R, N]), x, groups)
    return x2, R, N, lambda y: tensor.expand_shape(b.tensor(shape), y, groups, [], list(shape))


def _row_reduce(b: _Builder, ins, R, N, init: float, body):
    """Reduce over the last dim: ins are (R, N) tensors or (R,) row vectors."""
    maps = [b.map(2, [0, 1]) if len(v.type.shape) == 2 else b.map(2, [0]) for v in ins] + [b.map(2, [0])]
    return b.generic(ins, b.filled([R], init), maps, ["parallel", "reduction"], body)


def _row_map(b: _Builder, ins, R, N, body):
    """Elementwise over (R, N): ins are (R, N) tensors, (R,) row vectors or (N,) column vectors."""

    maps = [b.map(2, [0, 1]) if kind == "x" else b.map(2, [0]) if kind == "row" else b.map(2, [1]) for _, kind in ins]
    maps.append(b.map(2, [0, 1]))
    return b.generic([v for v, _ in ins], b.empty([R, N]), maps, ["parallel", "parallel"], body)


def _softmax(b: _Builder, shapes, out_shape, p) -> None:
    from iree.compiler.dialects import arith
    from iree.compiler.dialects import math as m

    def body(x):
        x2, R, N, restore = _rows(b, shapes, x)
        mx = _row_reduce(b, [x2], R, N, -math.inf, lambda v, acc: arith.maximumf(v, acc))
        s = _row_reduce(b, [x2, mx], R, N, 0.0, lambda v, mv, acc: arith.addf(acc, m.exp(arith.subf(v, mv))))
        y = _row_map(
            b, [(x2, "x"), (mx, "row"), (s, "row")], R, N,
            lambda v, mv, sv, _o: arith.divf(m.exp(arith.subf(v, mv)), sv),
        )  # fmt: skip
        return restore(y)

    _func(b, shapes, out_shape, body)


def _norm(b: _Builder, shapes, out_shape, p, kind: str) -> None:
    from iree.compiler.dialects import arith
    from iree.compiler.dialects import math as m

    eps = float(p["eps"])

    def body(x, *vecs):
        x2, R, N, restore = _rows(b, shapes, x)
        def mean(total):  # constants are made inside each body: regions stay self-contained
            return arith.mulf(total, b.const(1.0 / N))

        if kind == "layernorm":
            total = _row_reduce(b, [x2], R, N, 0.0, lambda v, acc: arith.addf(v, acc))
            # mean(x) and the centred second moment as separate reductions: a one-pass
            # E[x^2] - E[x]^2 loses all precision in float32 for rows with a large mean.
            sq = _row_reduce(
                b, [x2, total], R, N, 0.0,
                lambda v, t, acc: arith.addf(acc, _scalar(b, "square", [arith.subf(v, mean(t))])),
            )  # fmt: skip
            ins = [(x2, "x"), (total, "row"), (sq, "row")]
        else:
            sq = _row_reduce(b, [x2], R, N, 0.0, lambda v, acc: arith.addf(acc, arith.mulf(v, v)))
            ins = [(x2, "x"), (sq, "row")]
        ins += [(v, "col") for v in vecs]

        def normalize(v, *r):
            if kind == "layernorm":
                t, q, cols = r[0], r[1], r[2:-1]
                centred = arith.subf(v, mean(t))
            else:
                q, cols = r[0], r[1:-1]
                centred = v
            y = arith.mulf(centred, m.rsqrt(arith.addf(mean(q), b.const(eps))))
            if cols:
                y = arith.mulf(y, cols[0])
            if len(cols) > 1:
                y = arith.addf(y, cols[1])
            return y

        return restore(_row_map(b, ins, R, N, normalize))

    _func(b, shapes, out_shape, body)


def _elementwise(b: _Builder, shapes, out_shape, p) -> None:
    e = ex.parse(p["expr"])
    shape = list(shapes[0])
    rank = len(shape)
    ident = b.map(rank, list(range(rank)))

    def body(*xs):
        if isinstance(e, ex.Var):  # identity: still a new buffer (kernels never return an input)
            return b.generic([xs[e.index]], b.empty(shape), [ident, ident], ["parallel"] * rank, lambda v, _o: v)
        values: dict[ex.Expr, Any] = {}
        for n in ex.nodes(e):
            if isinstance(n, ex.Var):
                values[n] = xs[n.index]
            elif isinstance(n, ex.Call):
                tensors = [values[a] for a in n.args if not isinstance(a, ex.Const)]
                if not tensors:  # constants are folded by the expression IR; guard anyway
                    raise InputError(f"elementwise: {n.text()} has no tensor operand")

                def step(*scalars, n=n):
                    it = iter(scalars)
                    if n.fn == "pow" and isinstance(n.args[1], ex.Const) and float(n.args[1].value).is_integer():
                        base = b.const(n.args[0].value) if isinstance(n.args[0], ex.Const) else next(it)
                        return _ipow(b, base, int(n.args[1].value))
                    args = [b.const(a.value) if isinstance(a, ex.Const) else next(it) for a in n.args]
                    return _scalar(b, n.fn, args)

                values[n] = b.generic(
                    tensors, b.empty(shape), [ident] * (len(tensors) + 1), ["parallel"] * rank, step
                )
        return values[e]

    _func(b, shapes, out_shape, body)


def _ipow(b: _Builder, x, k: int):
    """x**k for an integer constant k by repeated squaring (powf would take log of negative bases)."""
    from iree.compiler.dialects import arith

    if k == 0:
        return b.const(1.0)
    base, result, n = x, None, abs(k)
    while n:
        if n & 1:
            result = base if result is None else arith.mulf(result, base)
        n >>= 1
        if n:
            base = arith.mulf(base, base)
    return arith.divf(b.const(1.0), result) if k < 0 else result


def _conv2d(b: _Builder, shapes, out_shape, p) -> None:
    from iree.compiler.dialects import arith, linalg, tensor

    stride, pad = int(p["stride"]), int(p["padding"])
    N, C, H, W = shapes[0]

    def body(x, w, *rest):
        if pad:  # zero border, then the unpadded input written into its interior
            padded = b.filled([N, C, H + 2 * pad, W + 2 * pad], 0.0)
            x = tensor.insert_slice(x, padded, [], [], [], [0, 0, pad, pad], [N, C, H, W], [1, 1, 1, 1])
        y = linalg.conv_2d_nchw_fchw(
            x, w, outs=[b.filled(list(out_shape), 0.0)], strides=[stride, stride], dilations=[1, 1]
        )
        if rest:
            maps = [b.map(4, [0, 1, 2, 3]), b.map(4, [1]), b.map(4, [0, 1, 2, 3])]
            y = b.generic([y, rest[0]], b.empty(list(out_shape)), maps, ["parallel"] * 4,
                          lambda acc, bias, _o: arith.addf(acc, bias))  # fmt: skip
        return y

    _func(b, shapes, out_shape, body)


_BUILDERS: dict[str, Callable[..., None]] = {
    "matmul": _matmul,
    "softmax": _softmax,
    "layernorm": lambda b, s, o, p: _norm(b, s, o, p, "layernorm"),
    "rmsnorm": lambda b, s, o, p: _norm(b, s, o, p, "rmsnorm"),
    "elementwise": _elementwise,
    "conv2d": _conv2d,
}
