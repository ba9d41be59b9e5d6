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


#: elements from which the float64 reference is evaluated in cache-sized chunks on a few threads
REF_CHUNKED = 1 << 20
_REF_STEP = 1 << 16  # 512 KB per float64 temporary: the chain's temporaries stay in L2


def _chunked(e: Any, flat: list[np.ndarray], n: int) -> np.ndarray | None:
    """The reference of ``e`` over ``n`` elements, chunk by chunk on up to 4 threads (numpy's
    ufuncs release the GIL). Whole-array evaluation made a 16M-element temporary per op and ran on
    one core: 0.85 s per trial for ``sigmoid(x*1.5+0.5)*x-0.25`` on the 2-core VM, 2.3 s of a 10 s
    tuning budget for two trials. None if no thread could be started (the caller evaluates whole)."""
    import concurrent.futures as cf
    import os

    out = np.empty(n, dtype=np.float64)

    def work(lo: int) -> None:
        hi = min(lo + _REF_STEP, n)
        with np.errstate(all="ignore"):
            out[lo:hi] = ex.evaluate(e, [f[lo:hi] for f in flat])

    try:
        with cf.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            list(pool.map(work, range(0, n, _REF_STEP)))
    except RuntimeError:  # no threads here (a confined process): evaluate whole
        return None
    return out


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

    def check_dtypes(self, args: Sequence[Any]) -> str:
        """One dtype for every input: the fused kernels load and store one type. Inputs of mixed
        (supported) dtypes are valid for the chain as written (the caller's library promotes)."""
        from uhop.ops.base import dtype_name

        dts = {dtype_name(a) for a in args if a is not None}
        if len(dts) > 1 and dts <= set(self.dtypes):
            raise UnsupportedInput(f"elementwise: inputs of mixed dtypes {sorted(dts)}; fused kernels take one dtype")
        return super().check_dtypes(args)

    def output_shape(self, shapes, params):
        return tuple(shapes[0])

    def shapes_from_dims(self, dims, params, arity):
        return [(dims["N"],)] * arity

    def input_count(self, params, arity):
        return ex.n_vars(self.expression(params)) if arity is None else arity

    def reference(self, *args: np.ndarray, expr: str = "x0", **_: Any) -> np.ndarray:
        e = parse_cached(expr)
        shape = np.shape(args[0])
        n = math.prod(shape)
        if n >= REF_CHUNKED and all(type(a) is np.ndarray and a.shape == shape for a in args):
            out = _chunked(e, [a.reshape(-1) for a in args], n)
            if out is not None:
                return out.reshape(shape)
        with np.errstate(all="ignore"):  # NaN/Inf behave as numpy's float64 math says
            out = ex.evaluate(e, args)
        return np.broadcast_to(np.asarray(out, dtype=np.float64), shape).copy()

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
