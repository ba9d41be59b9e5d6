"""OpenCL C sources of the OpenCL backend: a tiled matmul, row kernels and elementwise chains
generated from the expression IR. Plain strings, no pyopencl import: the backend compiles them.

Every source is parameterised by preprocessor macros (``-D T=float -D TS=16 ...``) so that one
text serves every config; the backend caches built programs by (source, options).
"""

from __future__ import annotations

import math

from uhop.ops import expr as ex

PREAMBLE = """
#ifdef UHOP_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif
"""

#: act(v) for matmul's epilogue; gelu is the exact erf form (the op's reference), gelu_tanh
#: GPT-2's tanh approximation (torch's ``approximate="tanh"``: sqrt(2/pi) * (v + 0.044715 v^3))
ACTIVATIONS: dict[str, str] = {
    "none": "(v)",
    "relu": "fmax((v), (T)0)",
    "gelu": "((T)0.5 * (v) * ((T)1 + erf((v) * (T)0.70710678118654752440)))",
    "gelu_tanh": "((T)0.5 * (v) * ((T)1 + tanh((T)0.79788456080286535588 * ((v) + (T)0.044715 * (v) * (v) * (v)))))",
    "silu": "((v) / ((T)1 + exp(-(v))))",
}

# Tiled matmul: a work-group of TS x (TS/WPT) work-items computes a TS x TS tile of C; A and B
# tiles pass through local memory (one global read per element per tile row/column), and each
# work-item accumulates WPT rows in registers (register blocking: fewer local reads per FMA).
# Edges are zero-padded in the tiles, so any M, N, K works. Batch is the third NDRange dim;
# stride_b = 0 broadcasts a 2-D b over the batch.
MATMUL = PREAMBLE + """
#define RTS (TS / WPT)
__kernel __attribute__((reqd_work_group_size(TS, RTS, 1)))
void matmul(const int M, const int N, const int K,
            __global const T* restrict A, __global const T* restrict B,
            __global const T* restrict bias, __global T* restrict C,
            const long stride_a, const long stride_b)
{
    const int col = get_local_id(0), row = get_local_id(1);
    const int gcol = TS * get_group_id(0) + col;
    const int grow = TS * get_group_id(1) + row;
    const long batch = get_global_id(2);
    A += batch * stride_a;
    B += batch * stride_b;
    C += batch * (long)M * N;
    __local T As[TS][TS];
    __local T Bs[TS][TS + 1];  /* +1: no bank conflicts on the column reads of GPUs */
    T acc[WPT];
    for (int w = 0; w < WPT; w++) acc[w] = (T)0;
    const int tiles = (K + TS - 1) / TS;
    for (int t = 0; t < tiles; t++) {
        const int tk = t * TS;
        for (int w = 0; w < WPT; w++) {
            const int r = row + w * RTS;
            const int ar = TS * get_group_id(1) + r;
            As[r][col] = (ar < M && tk + col < K) ? A[(long)ar * K + tk + col] : (T)0;
            Bs[r][col] = (tk + r < K && gcol < N) ? B[(long)(tk + r) * N + gcol] : (T)0;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < TS; k++) {
            const T b = Bs[k][col];
            for (int w = 0; w < WPT; w++) acc[w] = fma(As[row + w * RTS][k], b, acc[w]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (gcol >= N) return;
    for (int w = 0; w < WPT; w++) {
        const int r = grow + w * RTS;
        if (r < M) {
            T v = acc[w];
#ifdef HAS_BIAS
            v += bias[gcol];
#endif
            C[(long)r * N + gcol] = ACT(v);
        }
    }
}
"""

# Row kernels: one work-group of WG work-items per row; partial sums in registers, then a tree
# reduction in local memory. The row is read twice (reduce, then normalise) and written once.
ROWS = PREAMBLE + """
inline T reduce_sum(T v, __local T* scratch) {
    const int l = get_local_id(0);
    scratch[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (l < s) scratch[l] += scratch[l + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    T r = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}
inline T reduce_max(T v, __local T* scratch) {
    const int l = get_local_id(0);
    scratch[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (l < s) scratch[l] = fmax(scratch[l], scratch[l + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    T r = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void softmax(const int N, __global const T* restrict X, __global T* restrict Y)
{
    __local T scratch[WG];
    const long base = (long)get_group_id(0) * N;
    const int l = get_local_id(0);
    T m = -INFINITY;
    for (int i = l; i < N; i += WG) m = fmax(m, X[base + i]);
    m = reduce_max(m, scratch);
    T s = (T)0;
    for (int i = l; i < N; i += WG) s += exp(X[base + i] - m);
    s = (T)1 / reduce_sum(s, scratch);
    for (int i = l; i < N; i += WG) Y[base + i] = exp(X[base + i] - m) * s;
}

__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void layernorm(const int N, const T eps, __global const T* restrict X, __global const T* restrict W,
               __global const T* restrict B, __global T* restrict Y)
{
    __local T scratch[WG];
    const long base = (long)get_group_id(0) * N;
    const int l = get_local_id(0);
    T s = (T)0;
    for (int i = l; i < N; i += WG) s += X[base + i];
    const T mean = reduce_sum(s, scratch) / (T)N;
    T q = (T)0;  /* two-pass variance: no cancellation for rows with a large mean */
    for (int i = l; i < N; i += WG) { const T d = X[base + i] - mean; q += d * d; }
    const T inv = rsqrt(reduce_sum(q, scratch) / (T)N + eps);
    for (int i = l; i < N; i += WG) {
        T v = (X[base + i] - mean) * inv;
#ifdef HAS_WEIGHT
        v *= W[i];
#endif
#ifdef HAS_BIAS
        v += B[i];
#endif
        Y[base + i] = v;
    }
}

__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void rmsnorm(const int N, const T eps, __global const T* restrict X, __global const T* restrict W,
             __global const T* restrict B, __global T* restrict Y)
{
    __local T scratch[WG];
    const long base = (long)get_group_id(0) * N;
    const int l = get_local_id(0);
    T q = (T)0;
    for (int i = l; i < N; i += WG) { const T x = X[base + i]; q += x * x; }
    const T inv = rsqrt(reduce_sum(q, scratch) / (T)N + eps);
    for (int i = l; i < N; i += WG) {
        T v = X[base + i] * inv;
#ifdef HAS_WEIGHT
        v *= W[i];
#endif
        Y[base + i] = v;
    }
}
"""

# Row kernels for CPU devices: one work-item per row, explicit VW-wide vectors (vloadn / vstoren)
# so the reductions and exp vectorise (a compiler may not reorder a scalar float sum), the
# row stays in L1/L2 between its passes. The tail of a row not a multiple of VW is scalar.
ROWS_VEC = (
    PREAMBLE
    + """
#define VT CAT(T, VW)
#define CAT(a, b) CAT2(a, b)
#define CAT2(a, b) a##b
#define VLOAD CAT(vload, VW)
#define VSTORE CAT(vstore, VW)

inline T hsum(VT v) {
    T s = (T)0;
    const T* p = (const T*)&v;
    for (int i = 0; i < VW; i++) s += p[i];
    return s;
}
inline T hmax(VT v) {
    T s = -INFINITY;
    const T* p = (const T*)&v;
    for (int i = 0; i < VW; i++) s = fmax(s, p[i]);
    return s;
}

__kernel void softmax(const int N, __global const T* restrict X, __global T* restrict Y)
{
    const long r = get_global_id(0);
    __global const T* x = X + r * N;
    __global T* y = Y + r * N;
    const int nv = N / VW;
    VT mv = (VT)(-INFINITY);
    for (int i = 0; i < nv; i++) mv = fmax(mv, VLOAD(i, x));
    T m = hmax(mv);
    for (int i = nv * VW; i < N; i++) m = fmax(m, x[i]);
    VT sv = (VT)0;
    for (int i = 0; i < nv; i++) { const VT e = exp(VLOAD(i, x) - m); VSTORE(e, i, y); sv += e; }
    T s = hsum(sv);
    for (int i = nv * VW; i < N; i++) { const T e = exp(x[i] - m); y[i] = e; s += e; }
    const T inv = (T)1 / s;
    for (int i = 0; i < nv; i++) VSTORE(VLOAD(i, y) * inv, i, y);
    for (int i = nv * VW; i < N; i++) y[i] *= inv;
}

__kernel void layernorm(const int N, const T eps, __global const T* restrict X, __global const T* restrict W,
                        __global const T* restrict B, __global T* restrict Y)
{
    const long r = get_global_id(0);
    __global const T* x = X + r * N;
    __global T* y = Y + r * N;
    const int nv = N / VW;
    VT sv = (VT)0;
    for (int i = 0; i < nv; i++) sv += VLOAD(i, x);
    T s = hsum(sv);
    for (int i = nv * VW; i < N; i++) s += x[i];
    const T mean = s / (T)N;
    VT qv = (VT)0;
    for (int i = 0; i < nv; i++) { const VT d = VLOAD(i, x) - mean; qv += d * d; }
    T q = hsum(qv);
    for (int i = nv * VW; i < N; i++) { const T d = x[i] - mean; q += d * d; }
    const T inv = rsqrt(q / (T)N + eps);
    for (int i = 0; i < nv; i++) {
        VT v = (VLOAD(i, x) - mean) * inv;
#ifdef HAS_WEIGHT
        v *= VLOAD(i, W);
#endif
#ifdef HAS_BIAS
        v += VLOAD(i, B);
#endif
        VSTORE(v, i, y);
    }
    for (int i = nv * VW; i < N; i++) {
        T v = (x[i] - mean) * inv;
#ifdef HAS_WEIGHT
        v *= W[i];
#endif
#ifdef HAS_BIAS
        v += B[i];
#endif
        y[i] = v;
    }
}

__kernel void rmsnorm(const int N, const T eps, __global const T* restrict X, __global const T* restrict W,
                      __global const T* restrict B, __global T* restrict Y)
{
    const long r = get_global_id(0);
    __global const T* x = X + r * N;
    __global T* y = Y + r * N;
    const int nv = N / VW;
    VT qv = (VT)0;
    for (int i = 0; i < nv; i++) { const VT v = VLOAD(i, x); qv += v * v; }
    T q = hsum(qv);
    for (int i = nv * VW; i < N; i++) q += x[i] * x[i];
    const T inv = rsqrt(q / (T)N + eps);
    for (int i = 0; i < nv; i++) {
        VT v = VLOAD(i, x) * inv;
#ifdef HAS_WEIGHT
        v *= VLOAD(i, W);
#endif
        VSTORE(v, i, y);
    }
    for (int i = nv * VW; i < N; i++) {
        T v = x[i] * inv;
#ifdef HAS_WEIGHT
        v *= W[i];
#endif
        y[i] = v;
    }
}
"""
)

#: fn -> OpenCL C format string over argument names. NaN-propagating maximum/minimum (fmax
#: drops NaN; numpy's maximum, the reference, keeps it).
_FORMULAS: dict[str, str] = {
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    "pow": "pow({0}, {1})",
    "maximum": "((isnan({0}) || isnan({1})) ? ({0} + {1}) : fmax({0}, {1}))",
    "minimum": "((isnan({0}) || isnan({1})) ? ({0} + {1}) : fmin({0}, {1}))",
    "neg": "(-{0})",
    "abs": "fabs({0})",
    "exp": "exp({0})",
    "log": "log({0})",
    "sqrt": "sqrt({0})",
    "rsqrt": "((T)1 / sqrt({0}))",
    "tanh": "tanh({0})",
    "sin": "sin({0})",
    "cos": "cos({0})",
    "sigmoid": "((T)1 / ((T)1 + exp(-{0})))",
    "relu": "(isnan({0}) ? {0} : fmax({0}, (T)0))",
    "silu": "({0} / ((T)1 + exp(-{0})))",
    "gelu": "((T)0.5 * {0} * ((T)1 + erf({0} * (T)0.70710678118654752440)))",
    "erf": "erf({0})",
    "square": "({0} * {0})",
    "reciprocal": "((T)1 / {0})",
}


def expr_supported(e: ex.Expr) -> bool:
    return all(n.fn in _FORMULAS for n in ex.nodes(e) if isinstance(n, ex.Call))


def _literal(value: float, dtype: str) -> str:
    """A constant as an exact hex literal of the kernel's type (``f`` suffix in float32: a double
    literal needs cl_khr_fp64)."""
    v = float(value)
    if math.isnan(v):
        return "((T)NAN)"
    if math.isinf(v):
        return "((T)INFINITY)" if v > 0 else "(-(T)INFINITY)"
    return f"(({v.hex()}{'f' if dtype == 'float32' else ''}))"


def elementwise_source(e: ex.Expr, arity: int, dtype: str) -> str:
    """OpenCL C of ``elementwise(n, x0.., out)`` for the chain ``e``: each work-item computes
    ``ITEMS`` elements strided by the global size (coalesced on GPUs, contiguous runs per
    work-group on CPUs), every intermediate in a register."""
    names: dict[ex.Expr, str] = {}
    body: list[str] = []
    for node in ex.nodes(e):
        if isinstance(node, ex.Var):
            names[node] = f"a{node.index}"
        elif isinstance(node, ex.Const):
            names[node] = _literal(node.value, dtype)
        else:
            assert isinstance(node, ex.Call)
            args = [names[a] for a in node.args]
            if node.fn == "pow" and isinstance(node.args[1], ex.Const) and node.args[1].value in (1.0, 2.0, 3.0):
                code = "(" + " * ".join([args[0]] * int(node.args[1].value)) + ")"  # exact, as numpy's
            else:
                code = _FORMULAS[node.fn].format(*args)
            names[node] = f"t{len(body)}"
            body.append(f"        const T t{len(body)} = {code};")
    params = ", ".join(f"__global const T* restrict x{i}" for i in range(arity))
    loads = "\n".join(f"        const T a{i} = x{i}[i];" for i in range(arity))
    return PREAMBLE + f"""
__kernel void elementwise(const long n, {params}, __global T* restrict out)
{{
#if ITEMS == 1
    const long i = get_global_id(0);  /* straight-line: PoCL vectorises across work-items */
    if (i < n) {{
#else
    const long stride = get_global_size(0);
    for (long i = get_global_id(0); i < n; i += stride) {{
#endif
{loads}
{chr(10).join(body)}
        out[i] = {names[e]};
    }}
}}
"""
