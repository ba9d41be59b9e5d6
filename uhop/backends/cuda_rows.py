"""Row ops over the last dim (softmax, log-softmax, layernorm, rmsnorm) for long rows, in CUDA C++:
one row per thread-block cluster, each CTA's share of the row held in shared memory.

Why not Triton: a Triton program keeps its tile in registers, so rows longer than about 16K
elements are split across programs that exchange partial statistics through global memory and
an atomic counter (``triton_kernels.rows_long``); on the H100 that design stalls at 82-84% of the
copy rate whatever its registers, prefetch or polling (docs/gpu.md), and Triton 3.6 cannot spread
one program over a cluster on these kernels. Here a row is cut into ``CL`` chunks, one per CTA of a
cluster (a launch attribute, Hopper); each CTA streams its chunk from HBM into shared memory
with 16-byte loads, ``U`` in flight per thread, computing its partial statistics on the way (online
max and sum of exponentials; shifted sums of x and x^2; sum of squares), reduces them in the
CTA, then reads its peers' partials straight from their shared memory (DSMEM, ``mapa`` +
``ld.shared::cluster``) after one cluster barrier, and writes y from shared memory. x is read
once and y written once, and nothing goes through global memory but the row itself.

Rows whose start is not 16-byte aligned (widths that are not a multiple of 8 bf16 values) are
a head of fewer than 8 elements, aligned 16-byte vectors, and a tail: the head and tail go element
by element, the body in vectors; weights and biases of such rows are read from the shifted tables
of :func:`uhop.backends.triton_kernels.rowops.shifted_table` (row ``hd`` holds ``w[hd + j]`` at an
aligned address).

Config keys: ``CL`` (CTAs per row, a cluster of 1, 2, 4, 8 or 16, 16 being a non-portable size the H100 and
H200 allow; shared memory per CTA is its chunk),
``threads`` (per CTA), ``U`` (16-byte loads in flight per thread).
"""

from __future__ import annotations

from typing import Any

#: op -> kernel op code (as ``triton_kernels.rowops.OPS``)
OPS = {"softmax": 0, "layernorm": 1, "rmsnorm": 2, "log_softmax": 3}
DTYPES = {"bfloat16": 0, "float16": 1, "float32": 2}

#: types, conversions, 16-byte loads and stores, and the partial statistics of each op (macros DT
#: and OP), shared with :mod:`uhop.backends.cuda_pipe`
HELPERS = r"""
typedef unsigned int u32;
typedef unsigned long long u64;
#if DT == 2
typedef float T;
#define VE 4
#else
typedef unsigned short T;
#define VE 8
#endif
#define ES (16 / VE)
#define L2E 1.4426950408889634f
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float to_f(T v) {
#if DT == 0
  return __uint_as_float(((u32)v) << 16);
#elif DT == 1
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v)); return f;
#else
  return v;
#endif
}
__device__ __forceinline__ T from_f(float f) {
#if DT == 0
  unsigned short h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
#elif DT == 1
  unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
#else
  return f;
#endif
}
__device__ __forceinline__ void unpack(uint4 v, float* f) {
#if DT == 2
  f[0] = __uint_as_float(v.x); f[1] = __uint_as_float(v.y); f[2] = __uint_as_float(v.z); f[3] = __uint_as_float(v.w);
#else
  u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) { f[2 * i] = to_f((T)(w[i] & 0xffffu)); f[2 * i + 1] = to_f((T)(w[i] >> 16)); }
#endif
}
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  u32 d;
#if DT == 0
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
#else
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
#endif
  return d;
}
__device__ __forceinline__ uint4 pack(const float* f) {
#if DT == 2
  return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
#else
  return make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
#endif
}
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 ld_keep(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ void st_stream(uint4* p, uint4 v) {
  asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" :: "l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

// Partial statistics: softmax (a: max, b: sum of exp(x - a)); layernorm (a: sum of x - shift,
// b: sum of (x - shift)^2); rmsnorm (b: sum of x^2).
struct Stat { float a, b; };
__device__ __forceinline__ Stat st_init() {
#if OP == 0 || OP == 3
  return Stat{NEG_INF, 0.f};
#else
  return Stat{0.f, 0.f};
#endif
}
__device__ __forceinline__ Stat st_combine(Stat p, Stat q) {
#if OP == 0 || OP == 3
  float m = fmaxf(p.a, q.a);
  if (m == NEG_INF) return Stat{m, 0.f};
  return Stat{m, p.b * exp2f((p.a - m) * L2E) + q.b * exp2f((q.a - m) * L2E)};
#else
  return Stat{p.a + q.a, p.b + q.b};
#endif
}
template <int K>
__device__ __forceinline__ void st_add(Stat& s, const float* f, float shift) {
#if OP == 0 || OP == 3
  float m = f[0];
#pragma unroll
  for (int i = 1; i < K; i++) m = fmaxf(m, f[i]);
  m = fmaxf(m, s.a);
  if (m == NEG_INF) return;  // all -inf so far (a masked or top-k filtered row): exp2(-inf + inf) would be NaN
  float ms = m * L2E, acc = 0.f;
#pragma unroll
  for (int i = 0; i < K; i++) acc += exp2f(fmaf(f[i], L2E, -ms));
  s.b = (s.a == NEG_INF ? 0.f : s.b * exp2f(fmaf(s.a, L2E, -ms))) + acc;
  s.a = m;
#elif OP == 1
#pragma unroll
  for (int i = 0; i < K; i++) { float d = f[i] - shift; s.a += d; s.b = fmaf(d, d, s.b); }
#else
#pragma unroll
  for (int i = 0; i < K; i++) s.b = fmaf(f[i], f[i], s.b);
#endif
}
__device__ __forceinline__ Stat st_warp(Stat s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Stat q{__shfl_xor_sync(0xffffffffu, s.a, o), __shfl_xor_sync(0xffffffffu, s.b, o)};
    s = st_combine(s, q);
  }
  return s;
}

// The output from the row's combined statistics t: Fin{a, b} = softmax (max x log2 e, 1 / sum);
// log-softmax (log-sum-exp, -); layernorm (mean, 1 / std); rmsnorm (-, 1 / rms).
struct Fin { float a, b; };
__device__ __forceinline__ Fin fin_make(Stat t, float shift, int N, float eps) {
#if OP == 0
  return Fin{t.a * L2E, 1.f / t.b};
#elif OP == 3
  return Fin{t.a + logf(t.b), 0.f};
#elif OP == 1
  const float mu = t.a / N;
  return Fin{shift + mu, rsqrtf(fmaxf(t.b / N - mu * mu, 0.f) + eps)};
#else
  return Fin{0.f, rsqrtf(t.b / N + eps)};
#endif
}
// y of one element x, its weight wv and bias bv (ignored without HAS_W / HAS_B)
__device__ __forceinline__ float fin_one(Fin q, float x, float wv, float bv) {
#if OP == 0
  float r = exp2f(fmaf(x, L2E, -q.a)) * q.b;
#elif OP == 3
  float r = x - q.a;
#elif OP == 1
  float r = (x - q.a) * q.b;
#else
  float r = x * q.b;
#endif
#if HAS_W
  r *= wv;
#endif
#if HAS_B
  r += bv;
#endif
  return r;
}
#if CL > 1
__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}
// a float of CTA ``rank``'s shared memory at (this CTA's) shared address ``addr`` (DSMEM)
__device__ __forceinline__ float ld_peer(u32 addr, u32 rank) {
  u32 ra; float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(addr), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(ra) : "memory");
  return v;
}
// the row's statistics from every CTA's partial at shared address pa (the same order on every rank)
__device__ __forceinline__ Stat st_cluster(u32 pa) {
  Stat t = st_init();
#pragma unroll
  for (u32 k = 0; k < CL; k++) t = st_combine(t, Stat{ld_peer(pa, k), ld_peer(pa + 4, k)});
  return t;
}
#endif
// y of one 16-byte vector of x, with the weight and bias vectors at the same columns
__device__ __forceinline__ uint4 fin_vec(Fin q, uint4 xv, uint4 wq, uint4 bq) {
  float f[VE], fw[VE], fb[VE];
  unpack(xv, f);
#if HAS_W
  unpack(wq, fw);
#endif
#if HAS_B
  unpack(bq, fb);
#endif
#pragma unroll
  for (int k = 0; k < VE; k++) f[k] = fin_one(q, f[k], HAS_W ? fw[k] : 0.f, HAS_B ? fb[k] : 0.f);
  return pack(f);
}
// one element of y at column c (a head or tail element) from its x value e
__device__ __forceinline__ void fin_elem(Fin q, float e, T* yr, const T* w, const T* b, int c) {
  yr[c] = from_f(fin_one(q, e, HAS_W ? to_f(w[c]) : 0.f, HAS_B ? to_f(b[c]) : 0.f));
}

"""

#: the kernel of this module: one row per cluster
KERNEL = r"""

// launched in clusters of CL CTAs (a launch attribute): rank = cluster_ctarank, row = clusterid.x
extern "C" __global__ void __launch_bounds__(NT)
uhop_rows(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ b,
          const T* __restrict__ wt, const T* __restrict__ bt, int N, long long wrow, int vpc, float eps) {
  extern __shared__ uint4 buf[];
  __shared__ float red[64];
  __shared__ float part[2];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
#if CL > 1
  u32 rank, row;
  asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  asm("mov.u32 %0, %%clusterid.x;" : "=r"(row));
#else
  const u32 rank = 0, row = blockIdx.x;
#endif
  const T* xr = x + (long long)row * N;
  T* yr = y + (long long)row * N;
  int hd = (int)(((16u - ((u32)(u64)xr & 15u)) & 15u) / ES);
  if (hd > N) hd = N;
  const int nvb = (N - hd) / VE, tl = N - hd - nvb * VE;
  const int v0 = rank * vpc, nv = max(0, min(nvb, v0 + vpc) - v0);
  const uint4* xv = (const uint4*)(xr + hd) + v0;
  uint4* yv = (uint4*)(yr + hd) + v0;
  // head elements on rank 0's first threads, tail elements on the last rank's next ones
  int ecol = -1;
  if (rank == 0 && tid < hd) ecol = tid;
  if (rank == CL - 1 && tid >= VE && tid < VE + tl) ecol = hd + nvb * VE + (tid - VE);
  float e = ecol >= 0 ? to_f(xr[ecol]) : 0.f;
#if OP == 1
  const float shift = to_f(xr[0]);
#else
  const float shift = 0.f;
#endif

  Stat s = st_init();
  for (int base = tid; base < nv; base += NT * U) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; u++) if (base + u * NT < nv) v[u] = ld_stream(xv + base + u * NT);
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (base + u * NT < nv) {
        buf[base + u * NT] = v[u];
        float f[VE];
        unpack(v[u], f);
        st_add<VE>(s, f, shift);
      }
    }
  }
  if (ecol >= 0) st_add<1>(s, &e, shift);
  s = st_warp(s);
  if (lane == 0) { red[2 * warp] = s.a; red[2 * warp + 1] = s.b; }
  __syncthreads();
  if (warp == 0) {
    s = lane < NT / 32 ? Stat{red[2 * lane], red[2 * lane + 1]} : st_init();
    s = st_warp(s);
    if (lane == 0) { part[0] = s.a; part[1] = s.b; }
  }
#if CL > 1
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
  const Stat t = st_cluster(smem_addr(&part[0]));
  // done with the peers' shared memory: they may leave once everyone has read (the wait at the end)
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#else
  __syncthreads();
  const Stat t{part[0], part[1]};
#endif
  const Fin q = fin_make(t, shift, N, eps);
  const uint4* wv = (const uint4*)(wt + hd * wrow) + v0;
  const uint4* bv = (const uint4*)(bt + hd * wrow) + v0;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  for (int base = tid; base < nv; base += NT * U) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int i = base + u * NT;
      if (i < nv) st_stream(yv + i, fin_vec(q, buf[i], HAS_W ? ld_keep(wv + i) : zero, HAS_B ? ld_keep(bv + i) : zero));
    }
  }
  if (ecol >= 0) fin_elem(q, e, yr, w, b, ecol);
#if CL > 1
  asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#endif
}
"""

SOURCE = HELPERS + KERNEL
NAME = "uhop_rows"
#: uhop_rows's parameters: x, y, w, b, wt, bt, N, wrow, vpc, eps
SIGNATURE = "ppppppiqif"
#: NVRTC options: approximate exp2 / reciprocal / rsqrt (one MUFU instruction each; statistics and
#: outputs are checked against float64 at each dtype's tolerance like every candidate)
OPTIONS = ("--use_fast_math",)


def source(op: int, dtype: str, CL: int, threads: int, U: int, has_w: bool, has_b: bool) -> str:
    """The kernel's source for one specialization (macros ahead of :data:`SOURCE`)."""
    if CL not in (1, 2, 4, 8, 16):
        raise ValueError(f"CL: a cluster of 1, 2, 4, 8 or 16 CTAs, got {CL!r}")
    if threads not in (128, 256, 512, 1024):
        raise ValueError(f"threads: 128, 256, 512 or 1024, got {threads!r}")
    if U not in (1, 2, 4, 8):
        raise ValueError(f"U: 1, 2, 4 or 8 loads in flight per thread, got {U!r}")
    defs = dict(DT=DTYPES[dtype], OP=op, CL=CL, NT=threads, U=U, HAS_W=int(has_w), HAS_B=int(has_b))
    return "".join(f"#define {k} {v}\n" for k, v in defs.items()) + SOURCE


def operands(op: int, arity: int) -> tuple[bool, bool]:
    """(weight, bias) read by a call with ``arity`` inputs (x, weight, bias) of op code ``op``:
    norms take a weight, layernorm a bias too; softmax neither."""
    return arity >= 2 and op in (1, 2), arity >= 3 and op == 1


def layout(N: int, itemsize: int, CL: int) -> tuple[int, int]:
    """(vectors per CTA, dynamic shared memory bytes) for rows of N: a row's aligned body has at
    most N // VE 16-byte vectors, split over CL CTAs."""
    ve = 16 // itemsize
    vpc = -(-(N // ve) // CL)
    return vpc, max(16, vpc * 16)


def _vector(v: Any, name: str, x: Any) -> Any:
    """A weight or bias as the kernel reads it: contiguous, 16-byte aligned, x's dtype and width."""
    if v is None:
        return None
    if v.dtype != x.dtype or v.numel() != x.shape[-1]:
        raise ValueError(f"{name}: expected {x.shape[-1]} values of {x.dtype} (x's width and dtype), got "
                         f"shape {tuple(v.shape)} of {v.dtype}")  # fmt: skip
    if v.dim() != 1 or not v.is_contiguous():
        v = v.reshape(-1).contiguous()
    return v.clone() if v.data_ptr() % 16 else v  # (the caller's own tensor when it can: tables key on it)


def weight_operands(w: Any, b: Any, x2: Any, tables: Any) -> tuple[Any, Any, Any, Any, int]:
    """(w, b, wt, bt, wrow) as the kernels read a weight and bias for rows x2: contiguous, x's dtype
    and width; on rows whose width is not a multiple of the 16-byte vector, the body's from
    ``tables`` (:class:`~uhop.backends.triton_kernels.rowops.ShiftedTables`: row hd holds
    w[hd + j], rows of ``wrow`` elements); otherwise wt, bt are w, b and wrow 0."""
    N, ve = x2.shape[-1], 16 // x2.element_size()
    w, b = _vector(w, "w", x2), _vector(b, "b", x2)
    if N % ve == 0:
        return w, b, w, b, 0
    npv = -(-N // ve)
    wt = tables.get(w, ve, npv) if w is not None else None
    bt = tables.get(b, ve, npv) if b is not None else None
    return w, b, wt, bt, npv * ve


def pointers(y: Any, *tensors: Any) -> tuple[int, ...]:
    """The tensors' data pointers, y's for an absent one (a kernel never reads it)."""
    yp = y.data_ptr()
    return tuple(yp if t is None else t.data_ptr() for t in tensors)


def launcher(cfg: dict[str, Any], op: int, eps: float, device: str) -> Any:
    """The kernel ``run(x, w=None, b=None) -> y`` for op code ``op`` (torch CUDA tensors)."""
    import torch

    from uhop.backends import nvrtc
    from uhop.backends.triton_kernels import limits
    from uhop.backends.triton_kernels.rowops import ShiftedTables

    CL, NT, U = int(cfg["CL"]), int(cfg["threads"]), int(cfg.get("U", 4))
    dev = torch.device(device)
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    tables = ShiftedTables()
    smem_max = limits(device).shared_mem_bytes - 1024  # the kernel's static shared memory, with room
    kernels: dict[tuple, Any] = {}

    def get(dtype: Any, has_w: bool, has_b: bool) -> Any:
        """The kernel for x of ``dtype`` (a torch dtype or its name), compiled and loaded once."""
        key = (dtype, has_w, has_b)
        k = kernels.get(key)
        if k is None:
            name = str(dtype).removeprefix("torch.")
            k = kernels[key] = nvrtc.kernel(source(op, name, CL, NT, U, has_w, has_b), NAME, idx, SIGNATURE, OPTIONS)
        return k

    def run(x, w=None, b=None):
        N = x.shape[-1]
        x2 = x if x.dim() == 2 else x.reshape(-1, N)  # (a reshape costs ~2 us of host per call)
        if not x2.is_contiguous() or x2.data_ptr() % 16:  # x and y rows must share their alignment
            x2 = x2.contiguous() if not x2.is_contiguous() else x2.clone()
        R = x2.shape[0]
        y = torch.empty_like(x2)  # (half the host time of torch.empty(shape, device=, dtype=))
        if R == 0 or N == 0:
            return y.reshape(x.shape)
        k = get(x2.dtype, w is not None, b is not None)
        vpc, smem = layout(N, x2.element_size(), CL)
        if smem > smem_max:
            raise ValueError(f"rows of {N} {x2.dtype} need {smem} bytes of shared memory per CTA in clusters of {CL}; "
                             f"the device allows {smem_max}: a larger CL")  # fmt: skip
        w, b, wt, bt, wrow = weight_operands(w, b, x2, tables)
        args = (x2.data_ptr(), *pointers(y, y, w, b, wt, bt), N, wrow, vpc, eps)
        k.launch(R * CL, NT, smem, nvrtc.current_stream(x2.device.index), args, cluster=CL)
        run.last = k
        return y if x.dim() == 2 else y.reshape(x.shape)

    def prepare(dtype: str, arity: int = 1) -> None:
        """Compile and load the kernel a call with ``arity`` inputs (x, weight, bias) will launch."""
        get(getattr(torch, dtype), *operands(op, arity))

    run.prepare = prepare
    run.last = None  # the last launch's Kernel (its n_regs and n_spills)
    return run
