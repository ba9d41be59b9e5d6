"""elementwise: a fused chain of elementwise operations, optionally reduced over the last dim.

The chain is the ``expr`` param: canonical text of an :mod:`uhop.ops.expr` tree. Inputs have the
output's shape or broadcast to it in two forms the fused kernels index directly: a row vector
along the last dim (shape ``(C,)``, ``(1, C)``...) and a scalar (one element). ``bcast`` records
each input's form (``f`` full, ``r`` row, ``s`` scalar; ``""`` when all are full), derived from the
inputs' shapes. Inputs may be of different floating dtypes (a bfloat16 activation times a float32
scale): ``dtypes`` records each input's dtype (``"bfloat16,float32"``; ``""``, and left out of the
key, when all share one), derived from the inputs, and the problem's dtype is the result's, as
the caller's library promotes (:func:`~uhop.ops.base.result_dtype`: bfloat16 with float32 or with
float16 gives float32, anything with float64 float64). Kernels read each input in its own dtype
and return the result's (Triton computes in float32, numpy in the result's dtype, torch as the
caller's chain would); the tolerance is the loosest of the result's and the inputs' dtypes.
``reduce`` (``none``, ``sum``, ``mean``, ``max``) reduces the chain's result over the last dim
in the same pass (``x * sigmoid(x)`` summed per row: one read of x, one write per row).
Dims: ``N`` elements of the broadcast shape, ``C`` its last dim where it matters (a row input or
a reduction; else 1, so that chains of any shape share a key).

What still runs as written (:func:`uhop.dispatch._as_written`, one warning): inputs that
broadcast other than as a row vector or a scalar (a column vector).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from uhop.errors import InputError, UnsupportedInput
from uhop.ops import expr as ex
from uhop.ops.base import ITEMSIZE, TOLERANCE, Op, Param, dtype_name, promote, result_dtype


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
            out[lo:hi] = ex.evaluate(e, [f[lo:hi].astype(np.float64, copy=False) for f in flat])

    try:
        with cf.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            list(pool.map(work, range(0, n, _REF_STEP)))
    except RuntimeError:  # no threads here (a confined process): evaluate whole
        return None
    return out


@lru_cache(maxsize=64)
def _promotions(names: tuple[str, ...]) -> frozenset[str]:
    """The dtypes a result of inputs of dtypes ``names`` can have: the promotion of any non-empty
    subset of them (torch's 0-dim tensors take no part in it)."""
    return frozenset(promote(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k))


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
              Param("reduce", "none", REDUCTIONS, str), Param("dtypes", "", None, str))  # fmt: skip
    dims = ("N", "C")
    description = ("a fused chain of elementwise ops, e.g. expr='sigmoid(x0*1.5+0.5)*x0-0.25', inputs that "
                   "broadcast (row vector, scalar) or are of mixed dtypes, optionally reduced over the last dim "
                   "(reduce='sum')")  # fmt: skip

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
        """Canonical ``expr`` text; ``dtypes`` checked (supported floating dtypes, not all one;
        their count against the inputs where those are known: :meth:`check`, :meth:`input_dtypes`)
        and left out when empty, so chains of one dtype keep the keys they had."""
        out = super().normalize_params(given)
        e = out["expr"]
        out["expr"] = (e if isinstance(e, ex.Expr) else parse_cached(str(e))).text()
        text = out.pop("dtypes").replace(" ", "")
        if text:
            names = text.split(",")
            if any(d not in self.dtypes for d in names) or len(set(names)) < 2:
                raise InputError(
                    f"elementwise: dtypes={text!r} must name each input's dtype, from "
                    f"{', '.join(self.dtypes)}, not all the same (inputs of one dtype: leave dtypes out "
                    f"and give that dtype)"
                )
            out["dtypes"] = text
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
        dtypes = self._derived_dtypes(args, params.get("dtypes") or "")
        if isinstance(params, dict):
            params["bcast"] = bcast
            params.pop("dtypes", None)
            if dtypes:
                params["dtypes"] = dtypes
        return {"N": math.prod(out), "C": C}  # Problem.make keeps C where the rows matter

    def _derived_dtypes(self, args: Sequence[Any], given: str) -> str:
        """``dtypes`` for ``args``: each input's dtype where supported floating dtypes differ,
        else ""; a ``given`` value must match it."""
        names = [dtype_name(a) for a in args]
        mixed = len(set(names)) > 1 and set(names) <= set(self.dtypes)
        derived = ",".join(names) if mixed else ""
        if given and given != derived:
            pairs = enumerate(zip(names, given.split(","), strict=False))
            wrong = [f"x{i} is {n}" for i, (n, g) in pairs if n != g]
            raise InputError(f"elementwise: dtypes={given!r} does not match the inputs ({'; '.join(wrong) or names}"
                             f"); leave dtypes out, it is derived")  # fmt: skip
        return derived

    def check_dtypes(self, args: Sequence[Any]) -> str:
        """The result's dtype: the inputs' one dtype, or for inputs of mixed supported floating
        dtypes the one their library promotes to (:func:`~uhop.ops.base.result_dtype`)."""
        names = {dtype_name(a) for a in args if a is not None}
        if len(names) > 1 and names <= set(self.dtypes):
            return result_dtype(args) or super().check_dtypes(args)
        return super().check_dtypes(args)

    def input_dtypes(self, dtype: str, params: Mapping[str, Any], n: int) -> list[str]:
        """Each input's dtype: ``dtypes`` where given, else ``dtype``. ``dtype`` must be a result
        the inputs' library can give: the promotion of some of their dtypes (torch leaves a 0-dim
        float32 tensor out of a bfloat16 chain's promotion)."""
        text = params.get("dtypes") or ""
        if not text:
            return [dtype] * n
        names = text.split(",")
        if len(names) != n:
            raise InputError(f"elementwise: dtypes={text!r} must name one dtype per input: {len(names)} for {n}")  # fmt: skip
        if dtype not in _promotions(tuple(sorted(set(names)))):
            raise InputError(f"elementwise: inputs of dtypes {text} give a {promote(names)} result, not {dtype}; "
                             f"pose the problem with dtype {promote(names)}")  # fmt: skip
        return names

    def tolerance(self, dtype: str, dims: Mapping[str, int], params: Mapping[str, Any]) -> tuple[float, float]:  # fmt: skip
        """The loosest of the result's and every input's dtype: a chain as written computes its
        intermediates in the inputs' dtypes (torch rounds ``gelu(x0)`` of a bfloat16 ``x0`` to
        bfloat16 before it meets a float32 ``x1``)."""
        names = [dtype, *(params.get("dtypes") or "").split(",")]
        rtol = max(TOLERANCE[d][0] for d in names if d in TOLERANCE)
        atol = max(TOLERANCE[d][1] for d in names if d in TOLERANCE)
        scale = self.error_scale(dims, params)
        return rtol * max(1.0, scale), atol * scale

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

    reference_upcasts = True  # chunk by chunk: no whole-array float64 copy of each input per trial

    def reference(self, *args: np.ndarray, expr: str = "x0", reduce: str = "none", **_: Any) -> np.ndarray:
        e = parse_cached(expr)
        shape = tuple(np.broadcast_shapes(*[np.shape(a) for a in args]))
        n = math.prod(shape)
        out = None
        if n >= REF_CHUNKED and all(type(a) is np.ndarray and a.shape == shape for a in args):
            out = _chunked(e, [a.reshape(-1) for a in args], n)
            out = None if out is None else out.reshape(shape)
        if out is None:
            args = tuple(np.asarray(a, dtype=np.float64) for a in args)  # as validation's as_f64 did
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
        read = sum(ITEMSIZE[d] * (n if f == "f" else c if f == "r" else 1)
                   for f, d in zip(forms, self.input_dtypes(dtype, params, len(forms)), strict=True))  # fmt: skip
        written = n // c if params.get("reduce", "none") != "none" else n
        return float(read + ITEMSIZE[dtype] * written)

    def error_scale(self, dims, params) -> float:
        # Each op can add half an ulp; long chains (and exp of large values) amplify it; a reduction
        # adds the rounding of its fp32 accumulation (a tree: log2 of the row's length levels).
        scale = float(max(2, ex.op_count(self.expression(params))))
        if params.get("reduce", "none") != "none":
            scale += math.log2(max(2, dims.get("C", 1)))
        return scale
