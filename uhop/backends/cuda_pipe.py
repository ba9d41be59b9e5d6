"""Row ops over the last dim (softmax, log-softmax, layernorm, rmsnorm) for many rows of 8K-56K
elements, in CUDA C++: persistent CTAs that keep the next rows' loads in flight with Hopper's bulk
asynchronous copies while they reduce and write the current one.

Why: a kernel whose threads load a row, reduce it and write it (Triton's ``row`` template, the
``cluster`` kernels of :mod:`uhop.backends.cuda_rows`) has loads in flight only while its threads
are loading; the rest of the time an SM's memory pipe idles unless another CTA on it happens to be
loading. On the H100 that costs little (91-97% of its copy rate), on the H200, whose HBM moves 40%
more bytes per second at about the same latency, rows of 11008-50257 ran at 74-82% of copy
(``width_sweep_h200_product_twentysixth.json``). Here one thread of each CTA issues
``cp.async.bulk`` copies (the TMA unit: no registers, no threads held) of whole rows into a ring of
``S`` shared-memory stages, each completing on its own mbarrier; the CTA waits for row ``i``,
computes its statistics from shared memory, writes y with 16-byte stores, and hands the stage back
to the copy engine for row ``i + S`` of its rows. ``S - 1`` rows stay in flight per CTA however long
the arithmetic takes.

A row's aligned body goes through the copy engine (16-byte aligned source and size); the head and
tail of rows that are not 16-byte aligned (fewer than 8 elements each) are loaded by threads, and
their weights come from :func:`uhop.backends.triton_kernels.rowops.shifted_table` as in
:mod:`uhop.backends.cuda_rows`, whose conversions and partial statistics this kernel shares.

Rows too long for one CTA's stages (bf16 rows of 151936-262144) are held by a thread-block
cluster (``CL`` CTAs, Hopper): each CTA streams its share of every row of the cluster's through its
own stages, and the CTAs combine their partial statistics through distributed shared memory, one
cluster barrier per row (two slots of partials per CTA, by row parity, so no second barrier).

Config keys: ``threads`` (per CTA: 256 or 512), ``S`` (stages, 2-8), ``ctas`` (CTAs per SM of the
persistent grid, 1-4; their stages must fit the SM's shared memory together; with ``CL`` > 1 the grid
is as many clusters as the driver says are resident at once), ``CL`` (default 1: CTAs per row, a
cluster of 1, 2, 4, 8 or 16), ``wsm`` (default 1: on rows whose width is a multiple of the 16-byte
vector, a norm's weight and bias are read into shared memory once per CTA, its share of them in a
cluster; 0: from L1/L2 for every row).
"""

from __future__ import annotations

from typing import Any

from uhop.backends.cuda_rows import DTYPES, HELPERS, OPS, operands, pointers, weight_operands

__all__ = ["KERNEL", "NAME", "OPS", "SIGNATURE", "cluster_configs", "configs", "launcher", "layout", "share", "source", "weight_rows",
           "weights_in_smem"]

KERNEL = r"""
__device__ __forceinline__ u32 sa(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void issue(const T* xr, int N, int v0, int vpc, u32 dst, u32 bar) {
  // this CTA's share of the row's aligned body (vectors v0 .. v0 + vpc) into a stage; completes on
  // bar (one arrival, with its byte count)
  const int hd = min(N, (int)(((16u - ((u32)(u64)xr & 15u)) & 15u) / ES));
  const int nv = max(0, min((N - hd) / VE, v0 + vpc) - v0);
  const u32 bytes = (u32)nv * 16u;
  if (bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(dst), "l"((const uint4*)(xr + hd) + v0), "r"(bytes), "r"(bar) : "memory");
  } else {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
  }
}
#if WSM
__device__ __forceinline__ uint4 ld_w(const uint4* p) { return *p; }  // weights held in shared memory
#else
__device__ __forceinline__ uint4 ld_w(const uint4* p) { return ld_keep(p); }
#endif
__device__ __forceinline__ void wait_stage(u32 bar, u32 parity) {
  asm volatile("{\n .reg .pred P;\n WAIT:\n mbarrier.try_wait.parity.shared::cta.b64 P, [%0], %1;\n"
               " @!P bra WAIT;\n}" :: "r"(bar), "r"(parity) : "memory");
}

// a persistent grid: CTA (or cluster of CL CTAs) c handles rows c, c + G, c + 2G, ... (G CTAs or
// clusters), S of them in flight; in a cluster, rank k holds vectors k * vpc .. (k + 1) * vpc of a
// row's aligned body, and the CTAs combine their partial statistics through DSMEM
extern "C" __global__ void __launch_bounds__(NT)
uhop_rows_pipe(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ w, const T* __restrict__ b,
               const T* __restrict__ wt, const T* __restrict__ bt, int R, int N, long long wrow, int bufv, int vpc,
               float eps) {
  extern __shared__ uint4 buf[];  // S stages of bufv 16-byte vectors
  __shared__ __align__(8) u64 bars[S];
  __shared__ float red[64];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
#if CL > 1
  __shared__ float part[4];  // this CTA's partials of the last two rows (a row's peers read them)
  u32 rank, cid, ncl;
  asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  asm("mov.u32 %0, %%clusterid.x;" : "=r"(cid));
  asm("mov.u32 %0, %%nclusterid.x;" : "=r"(ncl));
  const long long G = ncl, c0 = cid;
#else
  const u32 rank = 0;
  const long long G = gridDim.x, c0 = blockIdx.x;
#endif
  const int v0 = rank * vpc;
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < S; s++) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(sa(&bars[s])) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
#if WSM
  // aligned rows: this CTA's share of the weight (and bias) vectors read once into shared memory,
  // after the stages, instead of once per row from L1/L2
  uint4* sw = buf + S * bufv;
  uint4* sbias = sw + bufv;
  const int nw = min(vpc, N / VE - v0);
#pragma unroll 1
  for (int i = tid; i < nw; i += NT) {
#if HAS_W
    sw[i] = ld_keep((const uint4*)w + v0 + i);
#endif
#if HAS_B
    sbias[i] = ld_keep((const uint4*)b + v0 + i);
#endif
  }
#endif
  __syncthreads();
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < S; s++) {
      const long long r = c0 + s * G;
      if (r < R) issue(x + r * N, N, v0, vpc, sa(buf + s * bufv), sa(&bars[s]));
    }
  }
  for (int it = 0;; it++) {
    const long long row = c0 + it * G;  // the same on every CTA of a cluster: they leave together
    if (row >= R) break;
    const int st = it % S;
    const T* xr = x + row * N;
    T* yr = y + row * N;
    const int hd = min(N, (int)(((16u - ((u32)(u64)xr & 15u)) & 15u) / ES));
    const int nvb = (N - hd) / VE, tl = N - hd - nvb * VE;
    const int nv = max(0, min(nvb, v0 + vpc) - v0);
    // head elements on the first rank's first threads, tail elements on the last rank's next ones (both < VE)
    int ecol = -1;
    if (rank == 0 && tid < hd) ecol = tid;
    else if (rank == CL - 1 && tid >= VE && tid < VE + tl) ecol = hd + nvb * VE + (tid - VE);
    float e = ecol >= 0 ? to_f(xr[ecol]) : 0.f;
#if OP == 1
    const float shift = to_f(xr[0]);
#else
    const float shift = 0.f;
#endif
    wait_stage(sa(&bars[st]), (u32)((it / S) & 1));
    const uint4* sb = buf + st * bufv;
    Stat s = st_init();
#pragma unroll 4
    for (int i = tid; i < nv; i += NT) {
      float f[VE];
      unpack(sb[i], f);
      st_add<VE>(s, f, shift);
    }
    if (ecol >= 0) st_add<1>(s, &e, shift);
    s = st_warp(s);
    if (lane == 0) { red[2 * warp] = s.a; red[2 * warp + 1] = s.b; }
    __syncthreads();
    Stat t = lane < NT / 32 ? Stat{red[2 * lane], red[2 * lane + 1]} : st_init();
    t = st_warp(t);  // every warp combines the CTA's partials (no second barrier)
#if CL > 1
    // the cluster's: each CTA publishes its partial, one cluster barrier, each reads all of them.
    // Two slots by row parity: a CTA overwrites a slot two rows later, after the barrier of the row
    // between, which every peer reaches only once it has read the slot
    float* pp = part + 2 * (it & 1);
    if (tid == 0) { pp[0] = t.a; pp[1] = t.b; }
    asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
    t = st_cluster(sa(pp));
#endif
    const Fin q = fin_make(t, shift, N, eps);
    uint4* yv = (uint4*)(yr + hd) + v0;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
#if WSM
    const uint4* wv = sw;
    const uint4* bv = sbias;
#else
    const uint4* wv = (const uint4*)(wt + hd * wrow) + v0;
    const uint4* bv = (const uint4*)(bt + hd * wrow) + v0;
#endif
#pragma unroll 2
    for (int i = tid; i < nv; i += NT)
      st_stream(yv + i, fin_vec(q, sb[i], HAS_W ? ld_w(wv + i) : zero, HAS_B ? ld_w(bv + i) : zero));
    if (ecol >= 0) fin_elem(q, e, yr, w, b, ecol);
    __syncthreads();  // the stage and red[] are free: the stage takes row it + S of this CTA
    if (tid == 0) {
      const long long nxt = row + S * G;
      if (nxt < R) {
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        issue(x + nxt * N, N, v0, vpc, sa(buf + st * bufv), sa(&bars[st]));
      }
    }
  }
#if CL > 1
  // no CTA leaves while a peer may still read its last partial
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
"""

NAME = "uhop_rows_pipe"
#: uhop_rows_pipe's parameters: x, y, w, b, wt, bt, R, N, wrow, bufv, vpc, eps
SIGNATURE = "ppppppiiqiif"
#: as the cluster kernels: one MUFU instruction per exp2 / reciprocal / rsqrt, checked against float64
OPTIONS = ("--use_fast_math",)
#: shared memory of an SM the stages of its CTAs may take (H100/H200: 228 KB per SM, 227 KB per
#: CTA at most, about 1 KB per CTA reserved)
SM_SMEM = 226 * 1024


def source(op: int, dtype: str, threads: int, S: int, has_w: bool, has_b: bool, wsm: bool = False, CL: int = 1) -> str:
    """The kernel's source for one specialization (macros ahead of the shared helpers). ``wsm``:
    the weight and bias held in shared memory (rows whose width is a multiple of the 16-byte
    vector; others read them from the shifted tables); ``CL``: CTAs per row (a cluster)."""
    if CL not in (1, 2, 4, 8, 16):
        raise ValueError(f"CL: a cluster of 1, 2, 4, 8 or 16 CTAs, got {CL!r}")
    if threads not in (128, 256, 512, 1024):
        raise ValueError(f"threads: 128, 256, 512 or 1024, got {threads!r}")
    if not isinstance(S, int) or not 2 <= S <= 8:
        raise ValueError(f"S: 2 to 8 stages, got {S!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: one of {sorted(DTYPES)}, got {dtype!r}")
    defs = dict(DT=DTYPES[dtype], OP=op, NT=threads, S=S, CL=CL, HAS_W=int(has_w), HAS_B=int(has_b),
                WSM=int(wsm and (has_w or has_b)))  # fmt: skip
    return "".join(f"#define {k} {v}\n" for k, v in defs.items()) + HELPERS + KERNEL


def weights_in_smem(cfg: dict[str, Any], itemsize: int, N: int, has_w: bool, has_b: bool) -> bool:
    """Whether a launch holds the weight and bias in shared memory (see ``wsm``)."""
    return bool(cfg.get("wsm", 1)) and (has_w or has_b) and N % (16 // itemsize) == 0


def weight_rows(cfg: dict[str, Any], itemsize: int, N: int, has_w: bool, has_b: bool) -> int:
    """Rows of shared memory a CTA gives the weight and bias (``wsm``): one each, or none."""
    return (has_w + has_b) if weights_in_smem(cfg, itemsize, N, has_w, has_b) else 0


def share(N: int, itemsize: int, CL: int = 1) -> int:
    """16-byte vectors of a row's aligned body (at most N // VE) each CTA of a cluster of CL holds."""
    return -(-(N // (16 // itemsize)) // CL)


def layout(N: int, itemsize: int, S: int, vectors: int = 0, CL: int = 1) -> tuple[int, int]:
    """(vectors per stage, dynamic shared memory bytes) for rows of N: a stage holds a CTA's share of
    a row's aligned body (:func:`share`), padded to 128 bytes; ``vectors`` (0-2) more such shares
    for a weight and a bias held in shared memory."""
    bufv = max(8, -(-share(N, itemsize, CL) // 8) * 8)
    return bufv, (S + vectors) * bufv * 16


def configs(R: int, N: int, itemsize: int, sm: int, smem_max: int, cc: tuple[int, int], vectors: int = 0) -> list[dict[str, Any]]:
    """The two candidates the CUDA backend offers, the expected best first (``vectors``: rows of
    shared memory a CTA also holds, a norm's weight and bias, see ``wsm``).

    Rows of which an SM holds six stages or more (11008 wide): two CTAs of 256 threads with three
    stages each, then one CTA of 512 with three. On the H200 (``row_variants_pipe_h200_twentyeighth.json``)
    the first led or was within 0.3% of the best at 12192 x 11008 (softmax bf16 3533 GB/s, fp16
    3519, layernorm 3589: Triton's row 3176 / 3085 / 3260 in the same session); on the H100
    (``row_variants_pipe_h100_twentyseventh.json``) the second led (softmax 2840, two or three CTAs
    2662-2749). Rows of which only two or three fit (50257): one CTA, 256 threads then 512 (H200
    softmax 3656 / 3599, the cluster kernel 3413; log-softmax 3614 / 3589 against 3504). Empty
    before Hopper (bulk copies are sm_90), when two stages do not fit, or when the rows do not give
    every SM a CTA with a second row to prefetch."""
    if cc[0] < 9 or R < 2 * sm:
        return []
    _, one = layout(N, itemsize, 1)
    per_cta = max(1, smem_max - 1024) // one  # rows one CTA's shared memory holds
    fits = min(smem_max - 1024, SM_SMEM) // one  # rows an SM holds
    if min(per_cta, fits) - vectors < 2:
        return []
    if fits >= 2 * (3 + vectors) and R >= 4 * sm:
        return [{"threads": 256, "S": 3, "ctas": 2}, {"threads": 512, "S": 3, "ctas": 1}]
    S = min(3, min(per_cta, fits) - vectors)
    return [{"threads": 256, "S": S, "ctas": 1}, {"threads": 512, "S": S, "ctas": 1}]


def cluster_configs(R: int, N: int, itemsize: int, sm: int, smem_max: int, cc: tuple[int, int],
                    vectors: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Candidates for rows held by a cluster of CTAs, three stages each (``CL``): the smallest
    cluster whose CTA holds its three stages (512 threads), then the smallest whose two CTAs share
    an SM (256 threads). For rows too long for one CTA's stages (bf16 rows of 151936-262144 ran at
    74-78% of the H200's copy in the cluster kernels of :mod:`uhop.backends.cuda_rows`, which load,
    reduce and write one row per cluster with no load in flight in between). Empty before Hopper,
    or when the rows do not give each cluster a second row to prefetch (about ``sm / CL``
    clusters fit the GPU at once)."""
    if cc[0] < 9:
        return []
    room = min(smem_max - 1024, SM_SMEM)
    out: list[dict[str, Any]] = []
    for per_sm, threads in ((1, 512), (2, 256)):
        CL = next((c for c in (2, 4, 8, 16) if per_sm * (3 + vectors) * layout(N, itemsize, 1, 0, c)[1] <= room), None)
        if CL is None or R < 2 * max(1, per_sm * sm // CL):
            continue
        c = {"CL": CL, "threads": threads, "S": 3}
        if c not in out:
            out.append(c)
    return out


def launcher(cfg: dict[str, Any], op: int, eps: float, device: str) -> Any:
    """The kernel ``run(x, w=None, b=None) -> y`` for op code ``op`` (torch CUDA tensors)."""
    import torch

    from uhop.backends import nvrtc
    from uhop.backends.triton_kernels import limits
    from uhop.backends.triton_kernels.rowops import ShiftedTables

    NT, S, per_sm, CL = int(cfg["threads"]), int(cfg["S"]), int(cfg.get("ctas", 1)), int(cfg.get("CL", 1))
    dev = torch.device(device)
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    lim = limits(device)
    smem_max, sm = lim.shared_mem_bytes - 1024, lim.sm_count
    tables = ShiftedTables()
    kernels: dict[tuple, Any] = {}
    grids: dict[tuple, int] = {}  # (kernel, shared memory) -> clusters resident at once

    def get(dtype: Any, has_w: bool, has_b: bool, wsm: bool = False) -> Any:
        key = (dtype, has_w, has_b, wsm)
        k = kernels.get(key)
        if k is None:
            name = str(dtype).removeprefix("torch.")
            src = source(op, name, NT, S, has_w, has_b, wsm, CL)
            k = kernels[key] = nvrtc.kernel(src, NAME, idx, SIGNATURE, OPTIONS)
        return k

    def grid(k: Any, smem: int) -> int:
        """CTAs of the persistent grid: ``ctas`` per SM; in clusters, as many as are resident at
        once (the driver's count: a cluster's CTAs share a GPC, so not always SMs / CL)."""
        if CL == 1:
            return per_sm * sm
        g = grids.get((k, smem))
        if g is None:
            g = grids[(k, smem)] = max(1, k.resident(NT, smem, CL) // CL)
        return g

    def run(x, w=None, b=None):
        N = x.shape[-1]
        x2 = x if x.dim() == 2 else x.reshape(-1, N)
        if not x2.is_contiguous() or x2.data_ptr() % 16:  # x and y rows must share their alignment
            x2 = x2.contiguous() if not x2.is_contiguous() else x2.clone()
        R = x2.shape[0]
        y = torch.empty_like(x2)
        if R == 0 or N == 0:
            return y.reshape(x.shape)
        if R >= 2**31 or N >= 2**31:  # (the kernel takes both as int; offsets are 64-bit)
            raise ValueError(f"x: at most 2**31 - 1 rows of at most 2**31 - 1 elements, got {R} x {N}")
        wrows = weight_rows(cfg, x2.element_size(), N, w is not None, b is not None)
        k = get(x2.dtype, w is not None, b is not None, wrows > 0)
        bufv, smem = layout(N, x2.element_size(), S, wrows, CL)
        if smem > smem_max:
            raise ValueError(f"rows of {N} {x2.dtype} need {smem} bytes of shared memory for {S} stages in clusters "
                             f"of {CL}; the device allows {smem_max}: fewer stages (S) or a larger cluster (CL)")  # fmt: skip
        w, b, wt, bt, wrow = weight_operands(w, b, x2, tables)
        args = (x2.data_ptr(), *pointers(y, y, w, b, wt, bt), R, N, wrow, bufv, share(N, x2.element_size(), CL), eps)
        k.launch(min(R, grid(k, smem)) * CL, NT, smem, nvrtc.current_stream(x2.device.index), args, cluster=CL)
        run.last = k
        return y if x.dim() == 2 else y.reshape(x.shape)

    def prepare(dtype: str, arity: int, N: int) -> None:
        """Compile and load the kernel a call with ``arity`` inputs (x, weight, bias) on rows of
        ``N`` will launch."""
        has_w, has_b = operands(op, arity)
        dt = getattr(torch, dtype)
        get(dt, has_w, has_b, weights_in_smem(cfg, dt.itemsize, N, has_w, has_b))

    run.prepare = prepare
    run.last = None
    return run
