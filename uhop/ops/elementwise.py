"""elementwise: a fused chain of elementwise operations, optionally reduced over the last dim.

The chain is the ``expr`` param: canonical text of an :mod:`uhop.ops.expr` tree. Inputs have the
output's shape or broadcast to it in two forms the fused kernels index directly: a row vector
along the last dim (shape ``(C,)``, ``(1, C)``...) and a scalar (one element). ``bcast`` records
each input's form (``f`` full, ``r`` row, ``s`` scalar; ``""`` when all are full), derived from the
inputs' shapes. ``reduce`` (``none``, ``sum``, ``mean``, ``max``) reduces the chain's result over
the last dim in the same pass (``x * sigmoid(x)`` summed per row: one read of x, one write per row).
Dims: ``N`` elements of the broadcast shape, ``C`` its last dim where it matters (a row input or
a reduction; else 1, so that chains of any shape share a key).
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


#: reductions over the last dim at the end of a chain
REDUCTIONS = ("none", "sum", "mean", "max")


def needs_rows(params: Mapping[str, Any]) -> bool:
    """Whether the problem's row structure (its last dim C) matters: a row input or a reduction."""
    return "r" in (params.get("bcast") or "") or params.get("reduce", "none") != "none"


def reduce_last(out: Any, reduce: str) -> Any:
    """``out`` reduced over its last dim (numpy or torch; ``none``: as is). Half-precision sums and
    means accumulate in float32 (numpy would accumulate float16 in float16)."""
    if reduce == "none":
        return out
    if isinstance(out, np.ndarray):
        acc = np.float32 if out.dtype == np.float16 else None
        if reduce == "max":
            return out.max(axis=-1)
        r = out.sum(axis=-1, dtype=acc) if reduce == "sum" else out.mean(axis=-1, dtype=acc)
        return r.astype(out.dtype, copy=False)
    if reduce == "max":
        return out.amax(dim=-1)
    return out.sum(dim=-1) if reduce == "sum" else out.mean(dim=-1)


class Elementwise(Op):
    name = "elementwise"
    inputs = ("x0",)
    variadic = True
    params = (Param("expr", "x0", None, str), Param("bcast", "", None, str),
              Param("reduce", "none", REDUCTIONS, str))  # fmt: skip
    dims = ("N", "C")
    description = ("a fused chain of elementwise ops, e.g. expr='sigmoid(x0*1.5+0.5)*x0-0.25', inputs that "
                   "broadcast (row vector, scalar), optionally reduced over the last dim (reduce='sum')")

    def defaulted_dims(self) -> dict[str, int]:
        return {"C": 1}

    def canonical_dims(self, dims: dict[str, int], params: Mapping[str, Any]) -> dict[str, int]:
        """C only where the rows matter (a row input, a reduction): a plain chain is one problem
        whatever the shape of its N elements."""
        return dims if needs_rows(params) or "C" not in dims else {**dims, "C": 1}

    def parse_shape(self, text: str) -> dict[str, int]:
        """``"N"`` (elements), or the output's shape ``"R x C"`` / ``"A x B x C"``: N is their
        product and C the last (``--shape 4096x512 -p reduce=sum``: 4096 row sums of 512)."""
        try:
            values = [int(v) for v in text.lower().replace(",", "x").split("x") if v]
        except ValueError:
            raise InputError(f"shape for elementwise must be N or a shape like 4096x512, got {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise InputError(f"shape dims must be positive, got {text!r}")
        return {"N": math.prod(values), "C": values[-1] if len(values) > 1 else 1}

    def expression(self, params: Mapping[str, Any]) -> ex.Expr:
        return parse_cached(params["expr"])

    def normalize_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        out = super().normalize_params(given)
        e = out["expr"]
        out["expr"] = (e if isinstance(e, ex.Expr) else parse_cached(str(e))).text()
        return out

    def check(self, args: Sequence[Any], params: Mapping[str, Any]) -> dict[str, int]:
        """Dims of the broadcast output; sets ``params["bcast"]`` from the inputs' shapes."""
        self.check_arrays(args)
        need = ex.n_vars(self.expression(params))
        if len(args) != need:
            raise InputError(f"elementwise: expr {params['expr']!r} uses {need} input(s), got {len(args)}")
        shapes = [tuple(a.shape) for a in args]
        try:
            out = tuple(np.broadcast_shapes(*shapes))
        except ValueError:
            raise InputError(f"elementwise: input shapes {shapes} do not broadcast together") from None
        C = out[-1] if out else 1
        forms = []
        for i, s in enumerate(shapes):
            n = math.prod(s)
            if s == out:
                forms.append("f")
            elif n == 1:
                forms.append("s")
            elif n == C and s[-1] == C:
                forms.append("r")
            else:
                raise UnsupportedInput(
                    f"elementwise: x{i} has shape {s}, which broadcasts to {out} other than as a row vector "
                    f"along the last dim or a scalar; fused elementwise inputs take those forms"
                )
        bcast = "" if set(forms) == {"f"} else "".join(forms)
        given = params.get("bcast") or ""
        if given and given != bcast:
            raise InputError(f"elementwise: bcast={given!r} does not match the inputs' shapes {shapes} "
                             f"(they give {bcast!r}); leave bcast out, it is derived")  # fmt: skip
        if params.get("reduce", "none") != "none" and not out:
            raise InputError(f"elementwise: reduce={params['reduce']!r} needs inputs of at least one dim")
        if isinstance(params, dict):
            params["bcast"] = bcast
        return {"N": math.prod(out), "C": C}  # Problem.make keeps C where the rows matter

    def check_dtypes(self, args: Sequence[Any]) -> str:
        """One dtype for every input: the fused kernels load and store one type. Inputs of mixed
        (supported) dtypes are valid for the chain as written (the caller's library promotes)."""
        from uhop.ops.base import dtype_name

        dts = {dtype_name(a) for a in args if a is not None}
        if len(dts) > 1 and dts <= set(self.dtypes):
            raise UnsupportedInput(f"elementwise: inputs of mixed dtypes {sorted(dts)}; fused kernels take one dtype")
        return super().check_dtypes(args)

    def output_shape(self, shapes, params):
        out = tuple(np.broadcast_shapes(*[tuple(x) for x in shapes]))
        return out[:-1] if params.get("reduce", "none") != "none" else out

    def shapes_from_dims(self, dims, params, arity):
        n, c = dims["N"], dims.get("C", 1)
        forms = params.get("bcast") or "f" * arity
        if len(forms) != arity or set(forms) - set("frs"):
            raise InputError(f"elementwise: bcast must give one of f, r, s per input ({arity}), got {forms!r}")
        if n % c or ("r" in forms and c < 2):
            raise InputError(f"elementwise: N={n} must be a multiple of C={c} (and C > 1 for a row input)")
        full = (n // c, c) if needs_rows(params) else (n,)
        return [full if f == "f" else (c,) if f == "r" else (1,) for f in forms]

    def input_count(self, params, arity):
        return ex.n_vars(self.expression(params)) if arity is None else arity

    def reference(self, *args: np.ndarray, expr: str = "x0", reduce: str = "none", **_: Any) -> np.ndarray:
        e = parse_cached(expr)
        shape = tuple(np.broadcast_shapes(*[np.shape(a) for a in args]))
        n = math.prod(shape)
        out = None
        if n >= REF_CHUNKED and all(type(a) is np.ndarray and a.shape == shape for a in args):
            out = _chunked(e, [a.reshape(-1) for a in args], n)
            out = None if out is None else out.reshape(shape)
        if out is None:
            with np.errstate(all="ignore"):  # NaN/Inf behave as numpy's float64 math says
                out = ex.evaluate(e, args)
            out = np.broadcast_to(np.asarray(out, dtype=np.float64), shape).copy()
        return reduce_last(out, reduce)

    def reference_torch(self, *args: Any, expr: str = "x0", reduce: str = "none", **_: Any) -> Any:
        """:meth:`reference` on float64 torch tensors, with torch's float64 functions."""
        from uhop.backends.torch import evaluate_expr

        return reduce_last(evaluate_expr(parse_cached(expr), args), reduce)

    def flops(self, dims, params) -> float:
        return float(dims["N"] * (max(1, ex.op_count(self.expression(params))) + (params.get("reduce", "none") != "none")))

    def bytes(self, dims, dtype, params) -> float:
        n, c = dims["N"], dims.get("C", 1)
        forms = params.get("bcast") or "f" * ex.n_vars(self.expression(params))
        read = sum(n if f == "f" else c if f == "r" else 1 for f in forms)
        written = n // c if params.get("reduce", "none") != "none" else n
        return float(ITEMSIZE[dtype] * (read + written))

    def error_scale(self, dims, params) -> float:
        # Each op can add half an ulp; long chains (and exp of large values) amplify it; a reduction
        # adds the rounding of its fp32 accumulation (a tree: log2 of the row's length levels).
        scale = float(max(2, ex.op_count(self.expression(params))))
        if params.get("reduce", "none") != "none":
            scale += math.log2(max(2, dims.get("C", 1)))
        return scale
