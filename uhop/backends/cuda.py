"""CUDA C++ backend: UHOP's own CUDA kernel templates, compiled at run time with NVRTC and launched
through the driver API (:mod:`uhop.backends.nvrtc`), for what Triton cannot express. Today: row
ops over long rows, one row per thread-block cluster with the row held in shared memory
(``cluster``, :mod:`uhop.backends.cuda_rows`), and softmax, log-softmax and layernorm over many rows
of 8K-56K elements, persistent CTAs keeping the next rows' bulk copies in flight (``pipe``,
:mod:`uhop.backends.cuda_pipe`).

Kernels take and return torch tensors on the problem's CUDA device. Needs a GPU of compute
capability 8.0 or newer (clusters of more than one CTA: 9.0, Hopper) and NVRTC, which CUDA
PyTorch wheels ship. Compile errors surface as :class:`~uhop.backends.nvrtc.CudaError`, which the
tuner records.
"""

from __future__ import annotations

from typing import Any

from uhop.backends.base import Backend, Candidate, Kernel, input_dtypes_supported
from uhop.problem import Problem

#: rows at least this wide get ``cluster`` candidates: narrower ones fit one Triton program's
#: registers (``rowops.MAX_ROW``), where the ``row`` template is at 91-97% of copy on the H100
MIN_N = 16385
#: rows at least this wide get ``pipe`` candidates (when there are rows enough to prefetch): at
#: 4096-5120 Triton's ``row`` led them by 6-10% on the H100 (``row_variants_pipe_h100_twentyseventh.json``)
PIPE_MIN_N = 8192
#: ops ``pipe`` is offered for. Layernorm: on the H200 (``row_variants_pipe_h200_twentyeighth.json``,
#: weight and bias in shared memory) 3589 GB/s at 12192 x 11008 against Triton's row 3260; behind the
#: cluster kernel at 2670 x 50257 (2811 vs 2950), where the tuner weighs both. Rmsnorm stays with
#: Triton's row (3924 vs 3716 at 11008); its kernels serve it for studies (tests/gpu)
PIPE_OPS = ("softmax", "log_softmax", "layernorm")
#: and this many rows at least (``cuda_pipe.configs`` asks two per SM)
PIPE_MIN_R = 256
#: shared memory a CTA may take so that two fit on an SM (H100/H200: 228 KB per SM)
TWO_PER_SM = 113 * 1024


def configs(R: int, N: int, itemsize: int, sm: int, smem_max: int, cc: tuple[int, int]) -> list[dict[str, Any]]:
    """Candidate configs, the expected best first. The first cluster is the smallest whose chunks
    let two CTAs share an SM (one loads while the other reduces or writes), grown while the rows
    give fewer CTAs than SMs; then the next cluster up with 512 and 256 threads, and two loads in
    flight instead of four. On the H100 (``row_variants_cuda_h100_fifteenth.json``) these four
    hold the best config of every case but one (16 x 262144: 2% behind)."""
    from uhop.backends.cuda_rows import layout

    sizes = [c for c in ((1, 2, 4, 8) if cc[0] >= 9 else (1,)) if layout(N, itemsize, c)[1] <= smem_max - 1024]
    if not sizes:
        return []
    i = next((k for k, c in enumerate(sizes) if layout(N, itemsize, c)[1] <= TWO_PER_SM), 0)
    while R * sizes[i] < sm and i + 1 < len(sizes):
        i += 1
    first, up = sizes[i], sizes[min(i + 1, len(sizes) - 1)]
    out: list[dict[str, Any]] = []
    for c in (
        {"CL": first, "threads": 512, "U": 4},
        {"CL": up, "threads": 512, "U": 4} if up != first else {"CL": first, "threads": 512, "U": 2},
        {"CL": up, "threads": 256, "U": 4},
        {"CL": first, "threads": 512, "U": 2},
    ):
        if c not in out:
            out.append(c)
    return out


class CudaBackend(Backend):
    name = "cuda"
    crash_prone = True
    eval_s = 0.5  # an NVRTC compile (0.1-0.3 s; cached on disk) and a module load per candidate
    precompiles = True
    array = "torch"
    source_modules = ("uhop.backends.cuda_rows", "uhop.backends.cuda_pipe", "uhop.backends.nvrtc")
    devices = ("cuda",)
    ops = ("softmax", "layernorm", "rmsnorm", "log_softmax")
    dtypes = ("float32", "float16", "bfloat16")
    requires = ("torch",)

    def _probe(self) -> tuple[bool, str]:
        import torch

        from uhop.backends import nvrtc

        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device"
        major, minor = torch.cuda.get_device_capability(0)
        if major < 8:
            return False, f"needs compute capability 8.0 or newer, the GPU has {major}.{minor}"
        ok, why = nvrtc.available()
        return ok, (f"{why} on {torch.cuda.get_device_name(0)}" if ok else why)

    #: dtypes offered to the tuner: the kernels serve float32 too (tests/gpu), but on the H100 Triton's
    #: split led there (2858 vs 2692 GB/s at 2048 x 50257), while the tuner's back-to-back timings
    #: ranked the cluster kernel 1% ahead and served it (width_sweep_h100_softmax_rms_fifteenth.json)
    offered = ("float16", "bfloat16")

    def supports(self, problem: Problem) -> bool:
        if problem.op not in self.ops or problem.dtype not in self.offered or problem.array != "torch":
            return False
        if not problem.device.startswith("cuda") or not input_dtypes_supported(problem, self.dtypes):
            return False
        N, R = problem.dim.get("N", 0), problem.dim.get("R", 0)
        return N >= MIN_N or (N >= PIPE_MIN_N and R >= PIPE_MIN_R and problem.op in PIPE_OPS)

    def synchronize(self, device: str) -> None:
        import torch

        torch.cuda.synchronize()

    def candidates(self, problem: Problem) -> list[Candidate]:
        import torch

        from uhop.backends import cuda_pipe, cuda_rows
        from uhop.backends.triton_kernels import limits
        from uhop.ops.base import ITEMSIZE

        lim = limits(problem.device)
        idx = int(problem.device.split(":")[1]) if ":" in problem.device else 0
        cc = torch.cuda.get_device_capability(idx)
        R, N, item = problem.dim["R"], problem.dim["N"], ITEMSIZE[problem.dtype]
        pipe, cluster = [], []
        # a norm's weight and bias held in shared memory take rows of it
        vectors = cuda_pipe.weight_rows({}, item, N, *cuda_rows.operands(cuda_rows.OPS[problem.op], problem.arity))
        if N >= PIPE_MIN_N and problem.op in PIPE_OPS:
            pipe = [Candidate.of(self.name, "pipe", **c)
                    for c in cuda_pipe.configs(R, N, item, lim.sm_count, lim.shared_mem_bytes, cc, vectors)]  # fmt: skip
        if N >= MIN_N:
            cluster = [Candidate.of(self.name, "cluster", **c)
                       for c in configs(R, N, item, lim.sm_count, lim.shared_mem_bytes, cc)]  # fmt: skip
            # rows held by a cluster with the next rows' copies in flight, after the cluster kernels:
            # on the H100 (row_variants_long_h100_thirtieth.json) they tie them at 151936 (-4% to
            # +3%) and lose 11-18% at 262144; not yet measured on the H200
            piped = [Candidate.of(self.name, "pipe", **c)
                     for c in cuda_pipe.cluster_configs(R, N, item, lim.sm_count, lim.shared_mem_bytes, cc, vectors)]  # fmt: skip
            return pipe + cluster + piped
        return pipe + cluster

    def prebuild(self, candidate: Candidate, problem: Problem) -> None:
        """Compile the candidate's cubin into the on-disk cache (no GPU context: a precompile
        process only needs NVRTC); the evaluation worker then loads it."""
        import torch

        from uhop.backends import cuda_rows, nvrtc

        idx = int(problem.device.split(":")[1]) if ":" in problem.device else 0
        major, minor = torch.cuda.get_device_capability(idx)
        op, cfg = cuda_rows.OPS[problem.op], candidate.cfg
        if candidate.template == "pipe":
            from uhop.backends import cuda_pipe
            from uhop.ops.base import ITEMSIZE

            has_w, has_b = cuda_rows.operands(op, problem.arity)
            wsm = cuda_pipe.weights_in_smem(cfg, ITEMSIZE[problem.dtype], problem.dim["N"], has_w, has_b)
            src = cuda_pipe.source(op, problem.dtype, int(cfg["threads"]), int(cfg["S"]), has_w, has_b, wsm,
                                   int(cfg.get("CL", 1)))  # fmt: skip
            nvrtc.compile_cubin(src, cuda_pipe.NAME, f"sm_{major}{minor}", cuda_pipe.OPTIONS)
            return
        src = cuda_rows.source(op, problem.dtype, int(cfg["CL"]), int(cfg["threads"]), int(cfg.get("U", 4)),
                               *cuda_rows.operands(op, problem.arity))  # fmt: skip
        nvrtc.compile_cubin(src, cuda_rows.NAME, f"sm_{major}{minor}", cuda_rows.OPTIONS)

    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        from uhop.backends import cuda_rows

        if candidate.template == "pipe":
            from uhop.backends import cuda_pipe

            run = cuda_pipe.launcher(candidate.cfg, cuda_pipe.OPS[problem.op], float(problem.param.get("eps", 0.0)),
                                     problem.device)  # fmt: skip
            run.prepare(problem.dtype, arity=problem.arity, N=problem.dim["N"])
            return run
        if candidate.template != "cluster":
            raise ValueError(f"unknown CUDA template {candidate.template!r}")
        run = cuda_rows.launcher(candidate.cfg, cuda_rows.OPS[problem.op], float(problem.param.get("eps", 0.0)),
                                 problem.device)  # fmt: skip
        run.prepare(problem.dtype, arity=problem.arity)  # compile and load now, not at the first call
        return run
