"""numba building blocks for :mod:`uhop.backends.numba`: vectorizable math and the row-op,
matmul-epilogue and attention kernels. Imports numba at module level; the backend imports this
module only once numba is known to be installed.

Why hand-written math: without Intel SVML (``numba.config.USING_SVML`` is False on most pip
installs) ``math.exp`` in a loop compiles to one libm call per element and the loop stays scalar.
:func:`exp32` (Cody-Waite range reduction, a degree-6 Taylor polynomial on |r| <= ln2/2, and the
power of two added to the exponent bits) vectorizes; its relative error is below 5e-7 on the
normal range (inlined under 'reassoc'), it returns inf above ~88.72, flushes results below
FLT_MIN to 0 (an absolute error under 1.2e-38) and passes NaN through, as ``np.exp`` does in
float32. :func:`exp64` is the float64 analogue (degree 11, relative error ~3e-14); float64 erf
and tanh use ``math``.

Every factory takes ``wide``: when True the kernel's parallel body asks LLVM for 512-bit vectors
(the function attribute ``prefer-vector-width``); LLVM's tuning for many AVX-512 parts prefers
256-bit, which halves the throughput of compute-bound chains. It is a tuning knob, not a
correctness one, so the tuner measures both.

Kernels are generated modules (elementwise code from the expression IR, row ops from
:mod:`uhop.backends.numba_templates`), compiled once per (source, dtype, flags) and kept by
numba's on-disk cache under ``UHOP_HOME/numba``; block sizes are runtime arguments so one
compile serves every block-size config.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os
import sys
import threading
import types as types_
from pathlib import Path
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

#: fastmath flags. Elementwise code: FMA contraction and no signed-zero care only. Row reductions
#: add reassociation (vectorized sums). Never nnan/ninf (NaN and Inf inputs must give what the
#: float64 reference gives) and never arcp: with it LLVM turns 1/sqrt(x) into an rsqrt estimate
#: whose Newton step makes NaN of 0 and inf.
FASTMATH = {"contract", "nsz"}
FASTMATH_REDUCE = {"contract", "nsz", "reassoc"}


# ---- LLVM-level helpers ---------------------------------------------------------------------
@intrinsic
def prefer_512(typingctx):
    """Mark the enclosing LLVM function as preferring 512-bit vectors (a no-op without AVX-512)."""

    def codegen(context, builder, signature, args):
        # llvmlite's attribute set only admits a fixed list of names; string attributes are valid
        # LLVM IR and X86's subtarget lookup reads this one per function.
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


@njit(inline="always")
def no_hint():
    return None


@intrinsic
def _bits(typingctx, x):
    """float32 -> int32 / float64 -> int64 with the same bits."""
    if x == types.float32:
        ity, lty = types.int32, ir.IntType(32)
    elif x == types.float64:
        ity, lty = types.int64, ir.IntType(64)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], lty)

    return ity(x), codegen


@intrinsic
def _from_bits(typingctx, i):
    """int32 -> float32 / int64 -> float64 with the same bits."""
    if i == types.int32:
        fty, lty = types.float32, ir.FloatType()
    elif i == types.int64:
        fty, lty = types.float64, ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], lty)

    return fty(i), codegen


# ---- float32 math that vectorizes -----------------------------------------------------------
_F = np.float32
_LOG2E, _LN2_HI, _LN2_LO = _F(1.4426950408889634), _F(0.693359375), _F(-2.12194440e-4)
_EXP_HI, _EXP_LO = _F(89.0), _F(-89.0)
_EXP_MAX, _EXP_MIN = _F(88.72283935546875), _F(-87.33654475)  # overflow to inf / below FLT_MIN
_INF = _F(np.inf)
_C = [_F(1.0 / math.factorial(k)) for k in range(7)]
_C2, _C3, _C4, _C5, _C6 = _C[2], _C[3], _C[4], _C[5], _C[6]
_ONE, _HALF, _ZERO, _TWO = _F(1.0), _F(0.5), _F(0.0), _F(2.0)
_I23 = np.int32(23)


@njit(inline="always", fastmath=FASTMATH)
def exp32(x):
    xc = min(max(x, _EXP_LO), _EXP_HI)
    # floor, not the add-and-subtract-2**23 rounding trick, and 2**n added to p's exponent bits
    # with integer ops: callers inline this under fastmath 'reassoc', which would fold the trick
    # away and could reorder a product of scale factors into an overflow.
    nf = np.floor(xc * _LOG2E + _HALF)
    r = xc - nf * _LN2_HI
    r = r - nf * _LN2_LO
    p = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * _C6)))))
    # (numba widens int32 arithmetic to int64: cast back so the bits stay float32's)
    y = _from_bits(np.int32(_bits(p) + (np.int32(nf) << _I23)))
    y = _INF if x > _EXP_MAX else y
    y = _ZERO if x < _EXP_MIN else y  # subnormal results flush to 0 (error < 1.2e-38)
    return y if x == x else x


# Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7, below float32 rounding of values near 1.
_P = _F(0.3275911)
_A1, _A2, _A3, _A4, _A5 = _F(0.254829592), _F(-0.284496736), _F(1.421413741), _F(-1.453152027), _F(1.061405429)


@njit(inline="always", fastmath=FASTMATH)
def erf32(x):
    a = abs(x)
    t = _ONE / (_ONE + _P * a)
    y = _ONE - t * (_A1 + t * (_A2 + t * (_A3 + t * (_A4 + t * _A5)))) * exp32(-a * a)
    return y if x >= _ZERO else (-y if x < _ZERO else x)  # x NaN: NaN


@njit(inline="always", fastmath=FASTMATH)
def tanh32(x):
    # 1 - 2/(e^{2|x|}+1): absolute error ~2 ulp(1) near 0, well inside float32 tolerances.
    y = _ONE - _TWO / (exp32(_TWO * abs(x)) + _ONE)
    return y if x >= _ZERO else (-y if x < _ZERO else x)


_D = np.float64
_D_LN2_HI, _D_LN2_LO = _D(6.93147180369123816490e-01), _D(1.90821492927058770002e-10)
_D_C = tuple(_D(1.0 / math.factorial(k)) for k in range(12))
_D_EXP_MAX, _D_EXP_MIN = _D(709.782712893384), _D(-708.3964185322641)  # overflow / below DBL_MIN
_I52 = np.int64(52)


@njit(inline="always", fastmath=FASTMATH)
def exp64(x):
    """float64 exp that vectorizes: as :func:`exp32` with an 11th-degree polynomial (relative
    error ~3e-14 on the normal range); subnormal results flush to 0."""
    xc = min(max(x, _D(-710.0)), _D(710.0))
    nf = np.floor(xc * _D(1.4426950408889634) + _D(0.5))
    r = (xc - nf * _D_LN2_HI) - nf * _D_LN2_LO
    c = _D_C
    p = c[10] + r * c[11]
    p = c[9] + r * p
    p = c[8] + r * p
    p = c[7] + r * p
    p = c[6] + r * p
    p = c[5] + r * p
    p = c[4] + r * p
    p = c[3] + r * p
    p = c[2] + r * p
    p = c[1] + r * p
    p = c[0] + r * p
    y = _from_bits(_bits(p) + (np.int64(nf) << _I52))
    y = _D(np.inf) if x > _D_EXP_MAX else y
    y = _D(0.0) if x < _D_EXP_MIN else y
    return y if x == x else x


@njit(inline="always")
def erf64(x):
    return math.erf(x)


@njit(inline="always")
def tanh64(x):
    return math.tanh(x)


@njit(inline="always")
def fmaximum(a, b):
    """np.maximum: NaN if either is NaN."""
    return a if (a >= b or a != a) else b


@njit(inline="always")
def fminimum(a, b):
    return a if (a <= b or a != a) else b


#: per dtype: the names generated elementwise code uses (see ``numba.py``)
MATH = {
    "float32": {"exp_": exp32, "erf_": erf32, "tanh_": tanh32, "T": np.float32},
    "float64": {"exp_": exp64, "erf_": erf64, "tanh_": tanh64, "T": np.float64},
}


def _make_row_max(ity):
    shift, mask = ity(8 * np.dtype(ity).itemsize - 1), ity(np.iinfo(ity).max)

    @njit(inline="always")
    def row_max(row):
        """Max of a row, vectorized as an integer max over order-preserving keys (a float max
        reduction does not vectorize without fastmath nnan). NaNs may be ignored: callers let
        NaN reach the result through the sum of exponentials instead."""
        # Non-negative floats order like their bits; flipping the magnitude bits of negatives
        # makes signed-integer order match float order (the map is its own inverse).
        # numba widens int32 bit operations to int64: cast back so the bits stay 32-bit.
        b = _bits(row[0])
        m = ity(b ^ ((b >> shift) & mask))
        for j in range(1, row.size):
            b = _bits(row[j])
            k = ity(b ^ ((b >> shift) & mask))
            m = k if k > m else m
        return _from_bits(ity(m ^ ((m >> shift) & mask)))

    return row_max


ROW_MAX = {"float32": _make_row_max(np.int32), "float64": _make_row_max(np.int64)}


# ---- generated modules, cached on disk --------------------------------------------------------
_compiled: dict[tuple[Any, ...], Any] = {}
_compile_lock = threading.Lock()


def _hint(wide: bool):
    return prefer_512 if wide else no_hint


def namespace(dtype: str, wide: bool) -> dict[str, Any]:
    """The names generated kernels use, bound for ``dtype`` and ``wide``."""
    T = np.dtype(dtype).type
    return {
        **MATH[dtype], "math": math, "np": np, "prange": prange, "njit": njit, "hint": _hint(wide),
        "row_max": ROW_MAX[dtype], "fmaximum": fmaximum, "fminimum": fminimum, "T": T, "ONE": T(1.0),
        "ZERO": T(0.0), "HALF": T(0.5), "RSQRT2": T(1.0 / math.sqrt(2.0)),
    }  # fmt: skip


@functools.cache
def _stamp() -> str:
    """What a cached binary depends on beyond its generated source: the helpers it inlines (this
    module's and the templates' source) and the numba that compiled it."""
    import numba

    from uhop.backends import numba_templates

    h = hashlib.sha256(Path(__file__).read_bytes() + Path(numba_templates.__file__).read_bytes())
    return f"{h.hexdigest()[:16]}-{numba.__version__}"


def compile_source(source: str, dtype: str, parallel: bool, wide: bool, fastmath: frozenset[str]) -> Any:
    """The numba dispatcher of ``kernel`` in generated ``source``, cached in-process and on disk:
    the source is written to a content-named file under ``UHOP_HOME/numba`` and compiled from
    there as a module (numba's on-disk cache cannot keep ``exec``'d strings or closures), so a new
    process, or an isolation worker, loads the compiled kernel instead of compiling it again."""
    key = (source, dtype, parallel, wide, fastmath)
    fn = _compiled.get(key)
    if fn is not None:
        return fn
    with _compile_lock:
        fn = _compiled.get(key)
        if fn is None:
            path = _source_file(source, dtype, parallel, wide, fastmath)
            # A real module in sys.modules: numba's cache re-imports a cached function's module
            # by name to rebuild its globals
            name = f"uhop_numba_gen.{os.path.basename(path)[:-3]}" if path else f"uhop_numba_gen.k{len(_compiled)}"
            mod = sys.modules.get(name)
            if mod is None:
                mod = types_.ModuleType(name)
                mod.__dict__.update(namespace(dtype, wide), __file__=path)
                exec(compile(source, path or f"<{name}>", "exec"), mod.__dict__)
                sys.modules[name] = mod
            fn = njit(parallel=parallel, fastmath=set(fastmath), error_model="numpy", nogil=True, cache=path is not None)(
                mod.__dict__["kernel"]
            )
            _compiled[key] = fn
    return fn


def _source_file(source: str, dtype: str, parallel: bool, wide: bool, fastmath: frozenset[str]) -> str | None:
    """Write ``source`` to ``UHOP_HOME/numba/k_<hash>.py`` (atomically; the hash covers the flags,
    the namespace it runs in and :func:`_stamp`) and return the path, or None if it cannot be written."""
    from uhop.config import settings

    tag = hashlib.sha256(repr((source, dtype, parallel, wide, sorted(fastmath), _stamp())).encode()).hexdigest()[:20]
    path = settings().home / "numba" / f"k_{tag}.py"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(source)
            os.replace(tmp, path)
        return str(path)
    except OSError:
        return None


def template_fn(name: str, dtype: str, parallel: bool, wide: bool, fastmath: frozenset[str], **consts: Any) -> Any:
    """The kernel of template ``name`` (:mod:`uhop.backends.numba_templates`) with ``consts``
    (flags, and ``act``: an activation name) bound as module constants."""
    from uhop.backends import numba_templates as nt

    lines = [f"{k} = {v!r}" for k, v in sorted(consts.items()) if k != "act"]
    if "act" in consts:
        lines += ["", "", '@njit(inline="always")', "def act(v):", f"    return {nt.ACTIVATIONS[consts['act']]}"]
    body = inspect.getsource(getattr(nt, name)).replace(f"def {name}(", "def kernel(", 1)
    return compile_source("\n".join(lines) + "\n\n\n" + body, dtype, parallel, wide, fastmath)


_REDUCE = frozenset(FASTMATH_REDUCE)


def softmax_fn(dtype: str, parallel: bool, wide: bool, log: bool = False):
    """softmax (``log``: log-softmax)(x (R, N), out (R, N), rows): ``rows`` rows per parallel task."""
    return template_fn("softmax", dtype, parallel, wide, _REDUCE, log=log)


def norm_fn(kind: str, dtype: str, has_w: bool, has_b: bool, parallel: bool, wide: bool):
    """layernorm / rmsnorm(x (R, N), w (N,), b (N,), out (R, N), eps, rows)."""
    if kind not in ("layernorm", "rmsnorm"):
        raise ValueError(f"kind must be 'layernorm' or 'rmsnorm'; got {kind!r}")
    return template_fn(kind, dtype, parallel, wide, _REDUCE, has_w=has_w, has_b=has_b)


def epilogue_fn(dtype: str, activation: str, has_bias: bool, parallel: bool, wide: bool):
    """In place on a GEMM result y (R, N): y = act(y + bias), one pass, ``rows`` rows per task."""
    from uhop.backends.numba_templates import ACTIVATIONS

    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    return template_fn("epilogue", dtype, parallel, wide, frozenset(FASTMATH), act=activation, has_bias=has_bias)


def attention_softmax_fn(dtype: str, causal: bool, parallel: bool, wide: bool):
    """In place, softmax(s * scale) over a block of attention scores (see the template)."""
    return template_fn("attention_softmax", dtype, parallel, wide, _REDUCE, causal=causal)
