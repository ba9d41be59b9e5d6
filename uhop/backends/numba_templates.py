"""Row-op, matmul-epilogue and attention kernels of the numba backend, as plain Python templates.

These functions are never called or jitted here: :func:`uhop.backends.numba_kernels.template_fn`
copies a template's source into a generated module (one per dtype and flag set) where the free
names are bound: ``T`` (the numpy scalar type), ``exp_`` and ``row_max`` (vectorizable helpers,
:mod:`numba_kernels`), ``hint`` (512-bit vector preference or nothing), ``act`` (matmul's
activation), ``ZERO`` and the flags ``has_w``, ``has_b``, ``has_bias``, ``causal``, ``log`` (module
constants, so numba folds the branches away). Generated modules live in files so that numba's
on-disk cache keeps their machine code: a new process loads a kernel instead of compiling it
(0.5-2 s each). Closures, which the factories used before, cannot be cached: numba pickles the
cells (other dispatchers) into the cache key with process-specific identities.

Every row kernel takes ``rows`` (rows per parallel task) at run time, so one compile serves every
block-size config; sums accumulate in float64.
"""
# ruff: noqa: F821  (the free names are bound in each generated module, see above)

from __future__ import annotations

import math

from numba import prange


def softmax(x, out, rows):
    """softmax(x (R, N)) into out, or with ``log`` log-softmax (x - max - log(sum)): per row a
    max pass, an exp pass that sums (and for softmax stores), then a scaling (a shifting) pass,
    on a row that stays in L1/L2."""
    R, N = x.shape
    for blk in prange((R + rows - 1) // rows):
        hint()
        for r in range(blk * rows, min(R, blk * rows + rows)):
            xr, o = x[r], out[r]
            m = row_max(xr)  # NaN rows: NaN flows through exp into the sum below
            s = 0.0
            for j in range(N):
                e = exp_(xr[j] - m)
                if not log:
                    o[j] = e
                s += e
            if log:
                shift = T(m + math.log(s))
                for j in range(N):
                    o[j] = xr[j] - shift
            else:
                inv = T(1.0 / s)
                for j in range(N):
                    o[j] *= inv


def layernorm(x, w, b, out, eps, rows):
    """Variance from a second pass over the centred row (no E[x^2]-E[x]^2 cancellation);
    ``w``/``b`` are ignored (pass any array) when ``has_w``/``has_b`` are False."""
    R, N = x.shape
    for blk in prange((R + rows - 1) // rows):
        hint()
        for r in range(blk * rows, min(R, blk * rows + rows)):
            xr, o = x[r], out[r]
            s = 0.0
            for j in range(N):
                s += xr[j]
            mean = T(s / N)
            v = 0.0
            for j in range(N):
                d = xr[j] - mean
                v += d * d
            rstd = T(1.0 / math.sqrt(v / N + eps))
            for j in range(N):
                y = (xr[j] - mean) * rstd
                if has_w:
                    y = y * w[j]
                if has_b:
                    y = y + b[j]
                o[j] = y


def rmsnorm(x, w, b, out, eps, rows):
    R, N = x.shape
    for blk in prange((R + rows - 1) // rows):
        hint()
        for r in range(blk * rows, min(R, blk * rows + rows)):
            xr, o = x[r], out[r]
            s = 0.0
            for j in range(N):
                s += xr[j] * xr[j]
            rstd = T(1.0 / math.sqrt(s / N + eps))
            for j in range(N):
                y = xr[j] * rstd
                if has_w:
                    y = y * w[j]
                o[j] = y


def epilogue(y, bias, rows):
    """In place on a GEMM result y (R, N): y = act(y + bias), one pass."""
    R, N = y.shape
    for blk in prange((R + rows - 1) // rows):
        hint()
        for r in range(blk * rows, min(R, blk * rows + rows)):
            yr = y[r]
            for j in range(N):
                v = yr[j]
                if has_bias:
                    v = v + bias[j]
                yr[j] = act(v)


def attention_softmax(s, scale, q0, rows):
    """In place on a block of attention scores s (bs, Lc) for queries q0 .. q0+bs-1:
    s = softmax(s * scale) per row, keys after the query set to 0 when ``causal`` (top-left
    aligned, as torch's ``is_causal``)."""
    R, L = s.shape
    sc = T(scale)
    for blk in prange((R + rows - 1) // rows):
        hint()
        for r in range(blk * rows, min(R, blk * rows + rows)):
            sr = s[r]
            n = min(L, q0 + r + 1) if causal else L
            live = sr[:n]
            m = row_max(live)
            t = 0.0
            for j in range(n):
                e = exp_((live[j] - m) * sc)
                live[j] = e
                t += e
            inv = T(1.0 / t)
            for j in range(n):
                live[j] *= inv
            for j in range(n, L):
                sr[j] = ZERO


#: the activation ``act(v)`` of :func:`epilogue`, as an expression of ``v`` in ``T`` arithmetic
#: (exact-erf gelu; tanh-gelu is its own activation, as in GPT-2)
ACTIVATIONS = {
    "none": "v",
    "relu": "fmaximum(v, ZERO)",
    "gelu": "HALF * v * (ONE + erf_(v * RSQRT2))",
    "silu": "v / (ONE + exp_(-v))",
    "gelu_tanh": "HALF * v * (ONE + tanh_(T(0.7978845608028654) * (v + T(0.044715) * v * v * v)))",
}
