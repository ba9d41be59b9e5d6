"""numpy backend: the vendor BLAS path (OpenBLAS/MKL through ``np.matmul``), the plain eager
formulas (the baseline everyone starts from), and cache-blocked in-place variants that keep
temporaries in L2 instead of streaming whole intermediate arrays through memory."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from uhop.backends.base import Backend, Candidate, Kernel
from uhop.ops import expr as ex
from uhop.problem import Problem


@functools.cache
def erf_ufunc() -> Any:
    """scipy's erf (a real ufunc, with ``out=``) for float64 arrays, imported on first use
    (scipy.special takes 0.3-1 s to import: a warm start must not pay it); None without scipy, and
    then this backend offers no float64 erf/gelu (a per-element Python erf is 100x slower)."""
    try:
        from scipy.special import erf

        return erf
    except ImportError:  # pragma: no cover - depends on the environment
        return None


# erf in float32 arithmetic, error within a few float32 ulps (tests/unit/test_numpy_erf.py): for
# |x| < 1, x * P1(x^2); for 1 <= |x| <= 4, 1 - exp(-x^2) * P2(1/|x|) (erfc(x) exp(x^2) is smooth
# in 1/x); erf(4) rounds to 1 in float32. Weighted least-squares fits to math.erf, made by
# scripts/fit_erf.py: relative error 4e-8 (P1), absolute 1.7e-8 (P2), before float32 rounding.
_ERF_P1 = (1.1283791210627931, -0.3761231958278045, 0.1128012934232977, -0.02670992656809216,
           0.004915998402773008, -0.0005625297775409732)  # fmt: skip
_ERF_P2 = (0.0003356019097689703, 0.5579383544094536, 0.04987008227460302, -0.5024152895213071,
           0.5694934344492496, -0.3475897318448645, 0.1168981820687373, -0.01694701177437401)  # fmt: skip
_ERF_CHUNK = 16384  # elements per pass: the ~30 passes below stay in L2


def _horner(coef: tuple[float, ...], u: np.ndarray, acc: np.ndarray) -> np.ndarray:
    acc.fill(coef[-1])
    for c in coef[-2::-1]:
        acc *= u
        acc += np.float32(c)
    return acc


def erf32(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """erf of a float32/float16 array into ``out`` (may be ``x``), computed in float32 without
    scipy, a chunk at a time."""
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        out[...] = erf32(np.ascontiguousarray(x), np.empty(x.shape, np.float32))
        return out
    xf, of = x.reshape(-1), out.reshape(-1)  # views
    n = min(xf.size, _ERF_CHUNK)
    a, s, p, q = (np.empty(n, np.float32) for _ in range(4))
    for i in range(0, xf.size, _ERF_CHUNK):
        xc, oc = xf[i : i + _ERF_CHUNK], of[i : i + _ERF_CHUNK]
        m = xc.size
        a_, s_, p_, q_ = a[:m], s[:m], p[:m], q[:m]
        np.abs(xc, out=a_)
        np.multiply(a_, a_, out=s_)
        _horner(_ERF_P1, s_, p_)
        p_ *= a_  # |x| < 1: |x| P1(x^2)
        np.clip(a_, 1.0, 4.0, out=a_)
        np.multiply(a_, a_, out=s_)
        np.negative(s_, out=s_)
        np.exp(s_, out=s_)
        np.reciprocal(a_, out=a_)
        _horner(_ERF_P2, a_, q_)
        q_ *= s_
        np.subtract(np.float32(1.0), q_, out=q_)  # 1 <= |x|: 1 - exp(-x^2) P2(1/|x|)
        np.abs(xc, out=a_)
        np.copyto(q_, p_, where=a_ < 1.0)
        np.copysign(q_, xc, out=q_)
        oc[...] = q_
    return out


def _erf(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    if out.dtype == np.float64 or x.dtype == np.float64:
        return erf_ufunc()(x, out=out)
    return erf32(x, out)


def _needs_erf(problem: Problem) -> bool:
    if problem.op in ("matmul", "gated_mlp"):
        return problem.param.get("activation") == "gelu"
    if problem.op == "elementwise":
        return any(isinstance(n, ex.Call) and n.fn in ("erf", "gelu") for n in ex.nodes(ex.parse(problem.param["expr"])))
    return False


def _sigmoid(x, out):
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def _silu(x, out):
    _sigmoid(x, out)
    return np.multiply(x, out, out=out)


def _gelu(x, out):
    np.multiply(x, 1.0 / math.sqrt(2.0), out=out)
    _erf(out, out)
    out += 1.0
    out *= 0.5
    return np.multiply(x, out, out=out)


def _gelu_tanh(x, out):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), GELU's tanh form (matmul epilogue only)."""
    np.multiply(x, x, out=out)
    out *= 0.044715
    out += 1.0
    out *= x
    out *= math.sqrt(2.0 / math.pi)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return np.multiply(x, out, out=out)


def _rsqrt(x, out):
    np.sqrt(x, out=out)
    return np.reciprocal(out, out=out)


#: expr function name -> f(*args, out=out) writing into ``out`` (args may be scalars)
INPLACE: dict[str, Callable[..., Any]] = {
    "add": lambda a, b, out: np.add(a, b, out=out),
    "sub": lambda a, b, out: np.subtract(a, b, out=out),
    "mul": lambda a, b, out: np.multiply(a, b, out=out),
    "div": lambda a, b, out: np.true_divide(a, b, out=out),
    "pow": lambda a, b, out: np.power(a, b, out=out),
    "maximum": lambda a, b, out: np.maximum(a, b, out=out),
    "minimum": lambda a, b, out: np.minimum(a, b, out=out),
    "neg": lambda a, out: np.negative(a, out=out),
    "abs": lambda a, out: np.abs(a, out=out),
    "exp": lambda a, out: np.exp(a, out=out),
    "log": lambda a, out: np.log(a, out=out),
    "sqrt": lambda a, out: np.sqrt(a, out=out),
    "rsqrt": _rsqrt,
    "tanh": lambda a, out: np.tanh(a, out=out),
    "sin": lambda a, out: np.sin(a, out=out),
    "cos": lambda a, out: np.cos(a, out=out),
    "sigmoid": _sigmoid,
    "relu": lambda a, out: np.maximum(a, 0.0, out=out),
    "silu": _silu,
    "gelu": _gelu,
    "erf": _erf,
    "square": lambda a, out: np.square(a, out=out),
    "reciprocal": lambda a, out: np.reciprocal(a, out=out),
}


def _flat_program(e: ex.Expr) -> tuple[list[tuple[str, tuple[Any, ...], int]], int]:
    """Post-order instructions (fn, args, dest) over temp slots; args are ('v', i), ('c', value)
    or ('t', slot). Returns instructions and the slot count; the last instruction is the result."""
    slots: dict[ex.Expr, int] = {}
    prog = []
    for n in ex.nodes(e):
        if isinstance(n, ex.Call):
            args = []
            for a in n.args:
                if isinstance(a, ex.Var):
                    args.append(("v", a.index))
                elif isinstance(a, ex.Const):
                    args.append(("c", a.value))
                else:
                    args.append(("t", slots[a]))
            slots[n] = len(slots)
            prog.append((n.fn, tuple(args), slots[n]))
    return prog, len(slots)


def elementwise_kernel(expr_text: str, dtype: str, block: int) -> Kernel:
    """Evaluate the chain over blocks of ``block`` elements with in-place ufuncs into per-block
    temporaries, so intermediates live in cache (block=0: whole arrays, the eager baseline)."""
    e = ex.parse(expr_text)
    if isinstance(e, ex.Var):
        return lambda *xs: np.array(xs[e.index], dtype=dtype, copy=True)
    prog, nslots = _flat_program(e)
    np_dtype = np.dtype(dtype)

    def kernel(*xs: np.ndarray) -> np.ndarray:
        shape = xs[0].shape
        flat = [np.ascontiguousarray(x).reshape(-1) for x in xs]
        n = flat[0].size
        out = np.empty(n, dtype=np_dtype)
        b = n if block <= 0 else block
        tmp = [np.empty(min(b, n), dtype=np_dtype) for _ in range(nslots)]
        with np.errstate(all="ignore"):
            for s in range(0, n, b):
                e_ = min(s + b, n)
                m = e_ - s
                views = [f[s:e_] for f in flat]
                for i, (fn, args, dest) in enumerate(prog):
                    vals = [views[v] if k == "v" else (np_dtype.type(v) if k == "c" else tmp[v][:m]) for k, v in args]
                    target = out[s:e_] if i == len(prog) - 1 else tmp[dest][:m]
                    INPLACE[fn](*vals, out=target)
        return out.reshape(shape)

    return kernel


def broadcast_kernel(expr_text: str, dtype: str, reduce: str) -> Kernel:
    """The eager chain over inputs broadcast to the output's shape (row vectors and scalars
    expanded: the library baseline, not a fused kernel), then the reduction over the last dim."""
    from uhop.ops.elementwise import reduce_last

    chain = elementwise_kernel(expr_text, dtype, 0)

    def kernel(*xs: np.ndarray) -> np.ndarray:
        shape = np.broadcast_shapes(*[x.shape for x in xs])
        return reduce_last(chain(*[np.broadcast_to(x, shape) for x in xs]), reduce)

    return kernel


def _rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


def softmax_kernel(block: int, log: bool = False) -> Kernel:
    """Softmax (``log``: log-softmax, x - max - log(sum(exp(x - max)))) over rows of ``block``
    (0: all rows at once)."""

    def kernel(x: np.ndarray) -> np.ndarray:
        x2 = _rows(x)
        out = np.empty_like(x2)
        R = x2.shape[0]
        b = R if block <= 0 else block
        with np.errstate(all="ignore"):
            for r in range(0, R, b):
                blk, o = x2[r : r + b], out[r : r + b]
                np.subtract(blk, blk.max(axis=1, keepdims=True), out=o)
                if log:
                    o -= np.log(np.exp(o).sum(axis=1, keepdims=True))
                    continue
                np.exp(o, out=o)
                o /= o.sum(axis=1, keepdims=True)
        return out.reshape(x.shape)

    return kernel


def norm_kernel(kind: str, eps: float, block: int) -> Kernel:
    def kernel(x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
        x2 = _rows(x)
        out = np.empty_like(x2)
        R, N = x2.shape
        b = R if block <= 0 else block
        with np.errstate(all="ignore"):
            for r in range(0, R, b):
                blk, o = x2[r : r + b], out[r : r + b]
                if kind == "layernorm":
                    np.subtract(blk, blk.mean(axis=1, keepdims=True), out=o)
                    var = np.einsum("ij,ij->i", o, o)[:, None] / N
                else:
                    var = np.einsum("ij,ij->i", blk, blk)[:, None] / N
                    o[...] = blk
                var += eps
                o /= np.sqrt(var)
                if weight is not None:
                    o *= weight
                if bias is not None:
                    o += bias
        return out.reshape(x.shape)

    return kernel


def matmul_kernel(activation: str, dtype: str, trans_b: bool = False) -> Kernel:
    act = None if activation == "none" else _gelu_tanh if activation == "gelu_tanh" else INPLACE[activation]

    def kernel(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        y = np.matmul(a, np.swapaxes(b, -1, -2) if trans_b else b)  # a transposed view: BLAS reads it as is
        if bias is not None:
            y += bias
        if act is not None:
            tmp = np.empty_like(y)
            act(y, out=tmp)
            y = tmp
        return y

    return kernel


def gated_mlp_kernel(activation: str, dtype: str) -> Kernel:
    """``act(x @ wg.T) * (x @ wu.T)``: two BLAS GEMMs on transposed views, the gate's activation
    and the product written into the first GEMM's output."""
    gate = matmul_kernel(activation, dtype, trans_b=True)

    def kernel(x: np.ndarray, wg: np.ndarray, wu: np.ndarray) -> np.ndarray:
        y = gate(x, wg)
        y *= np.matmul(x, wu.T)
        return y

    return kernel


def attention_kernel(causal: bool, scale: float | None = None, kv_groups: int | None = None) -> Kernel:
    from uhop.ops.attention import expand_kv, softmax_scale

    def kernel(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        k, v = expand_kv(k, kv_groups), expand_kv(v, kv_groups)
        s = np.matmul(q, np.swapaxes(k, -1, -2))
        s *= q.dtype.type(softmax_scale(scale, q.shape[-1]))
        if mask is not None:
            from uhop.ops.attention import apply_mask

            s = apply_mask(s, mask, False).astype(q.dtype, copy=False)
        if causal:
            S, L = s.shape[-2], s.shape[-1]
            s[..., np.triu(np.ones((S, L), dtype=bool), k=1)] = -np.inf
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        return np.matmul(s, v)

    return kernel


def conv2d_kernel(stride: int, padding: int) -> Kernel:
    """im2col + one BLAS GEMM."""

    def kernel(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        if padding:
            x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        N, C, H, W = x.shape
        K, _, R, S = w.shape
        P, Q = (H - R) // stride + 1, (W - S) // stride + 1
        win = np.lib.stride_tricks.sliding_window_view(x, (R, S), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :P, :Q]
        cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(N * P * Q, C * R * S)
        y = cols @ w.reshape(K, C * R * S).T
        if bias is not None:
            y += bias
        return np.ascontiguousarray(y.reshape(N, P, Q, K).transpose(0, 3, 1, 2))

    return kernel


def _whole_arrays(problem: Problem) -> bool:
    """An elementwise form the blocked kernel does not take (broadcasting inputs, a reduction);
    inputs of mixed dtypes alone it does: each block's ufuncs read them into the result's dtype."""
    p = problem.param
    return bool(p.get("bcast")) or p.get("reduce", "none") != "none"


class NumpyBackend(Backend):
    name = "numpy"
    array = "numpy"
    vendor = True
    ops = ("matmul", "softmax", "layernorm", "rmsnorm", "elementwise", "attention", "conv2d", "embedding",
           "gated_mlp", "log_softmax")
    dtypes = ("float32", "float64", "float16")
    #: eager: inputs broadcast to the output's shape, then the chain and the reduction; inputs of
    #: mixed dtypes (float16 with float32, ...) computed into temporaries of the result's dtype
    elementwise_forms = True

    def _probe(self) -> tuple[bool, str]:
        blas = "BLAS"
        try:
            cfg = np.show_config(mode="dicts")  # numpy >= 1.26
            blas = cfg["Build Dependencies"]["blas"]["name"]
        except Exception:
            pass
        return True, f"numpy {np.__version__} ({blas})"

    def supports(self, problem: Problem) -> bool:
        # scipy only for float64's erf (float32/16 use erf32; asking scipy here would import it)
        return super().supports(problem) and not (
            problem.dtype == "float64" and _needs_erf(problem) and erf_ufunc() is None)

    def candidates(self, problem: Problem) -> list[Candidate]:
        op, c = problem.op, Candidate.of
        if op in ("matmul", "gated_mlp"):
            return [c("numpy", "blas")]
        if op == "attention":
            return [c("numpy", "eager")]
        if op == "conv2d":
            return [c("numpy", "im2col")]
        if op == "embedding":
            return [c("numpy", "take")]
        # Row ops and chains: block=0 is the eager baseline; blocks keep temporaries in L2.
        if op == "elementwise":
            if _whole_arrays(problem):  # inputs that broadcast, a reduction: whole arrays
                return [c("numpy", "eager", block=0)]
            return [c("numpy", "blocked", block=b) for b in (16384, 65536, 262144)] + [c("numpy", "eager", block=0)]
        return [c("numpy", "blocked", block=b) for b in (16, 64, 256)] + [c("numpy", "eager", block=0)]

    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        p, cfg = problem.param, candidate.cfg
        if problem.op == "matmul":
            return matmul_kernel(p["activation"], problem.dtype, p.get("trans_b", False))
        if problem.op == "gated_mlp":
            return gated_mlp_kernel(p["activation"], problem.dtype)
        if problem.op == "attention":
            return attention_kernel(p["causal"], p.get("scale"), p.get("kv_groups"))
        if problem.op == "conv2d":
            return conv2d_kernel(p["stride"], p["padding"])
        if problem.op == "embedding":
            return lambda w, idx: np.take(w, idx, axis=0)
        if problem.op == "elementwise":
            if _whole_arrays(problem):
                return broadcast_kernel(p["expr"], problem.dtype, p.get("reduce", "none"))
            return elementwise_kernel(p["expr"], problem.dtype, cfg["block"])
        if problem.op in ("softmax", "log_softmax"):
            return softmax_kernel(cfg["block"], log=problem.op == "log_softmax")
        return norm_kernel(problem.op, p["eps"], cfg["block"])
