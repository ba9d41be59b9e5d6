"""elementwise: a fused chain of elementwise operations over same-shape tensors.

The chain is the ``expr`` param: canonical text of an :mod:`uhop.ops.expr` tree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from uhop.errors import InputError
from uhop.ops import expr as ex
from uhop.ops.base import ITEMSIZE, Op, Param


class UnsupportedInput(InputError):
    """Valid for the reference (numpy would broadcast) but not for UHOP's fused kernels."""


@lru_cache(maxsize=1024)
def parse_cached(text: str) -> ex.Expr:
    return ex.parse(text)


class Elementwise(Op):
    name = "elementwise"
    inputs = ("x0",)
    variadic = True
    params = (Param("expr", "x0", None, str),)
    dims = ("N",)
    description = "a fused chain of elementwise ops, e.g. expr='sigmoid(x0*1.5+0.5)*x0-0.25'"

    def expression(self, params: Mapping[str, Any]) -> ex.Expr:
        return parse_cached(params["expr"])

    def normalize_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        out = super().normalize_params(given)
        e = out["expr"]
        out["expr"] = (e if isinstance(e, ex.Expr) else parse_cached(str(e))).text()
        return out

    def check(self, args: Sequence[Any], params: Mapping[str, Any]) -> dict[str, int]:
        self.check_arrays(args)
        need = ex.n_vars(self.expression(params))
        if len(args) != need:
            raise InputError(f"elementwise: expr {params['expr']!r} uses {need} input(s), got {len(args)}")
        shape = tuple(args[0].shape)
        for i, a in enumerate(args[1:], start=1):
            if tuple(a.shape) != shape:
                raise UnsupportedInput(
                    f"elementwise: x{i} has shape {tuple(a.shape)} but x0 has {shape}; fused elementwise "
                    "inputs must share one shape"
                )
        return {"N": math.prod(shape)}

    def output_shape(self, shapes, params):
        return tuple(shapes[0])

    def shapes_from_dims(self, dims, params, arity):
        return [(dims["N"],)] * arity

    def make_inputs(self, dims, params, rng, dtype="float64", arity=None):
        n = ex.n_vars(self.expression(params)) if arity is None else arity
        return super().make_inputs(dims, params, rng, dtype, n)

    def reference(self, *args: np.ndarray, expr: str = "x0", **_: Any) -> np.ndarray:
        with np.errstate(all="ignore"):  # NaN/Inf behave as numpy's float64 math says
            out = ex.evaluate(parse_cached(expr), args)
        return np.broadcast_to(np.asarray(out, dtype=np.float64), np.shape(args[0])).copy()

    def reference_torch(self, *args: Any, expr: str = "x0", **_: Any) -> Any:
        """:meth:`reference` on float64 torch tensors, with torch's float64 functions."""
        from uhop.backends.torch import evaluate_expr

        return evaluate_expr(parse_cached(expr), args)

    def flops(self, dims, params) -> float:
        return float(dims["N"] * max(1, ex.op_count(self.expression(params))))

    def bytes(self, dims, dtype, params) -> float:
        return float(ITEMSIZE[dtype] * dims["N"] * (ex.n_vars(self.expression(params)) + 1))

    def error_scale(self, dims, params) -> float:
        # Each op can add half an ulp; long chains (and exp of large values) amplify it.
        return float(max(2, ex.op_count(self.expression(params))))
