"""numba backend: generated, fused, multi-threaded CPU kernels.

* elementwise: Python source generated from the expression IR (one loop, every intermediate in a
  register), compiled with ``@njit(parallel=...)``, parallel over chunks of elements;
* softmax / layernorm / rmsnorm: parallel over blocks of rows, each row read from memory once
  and revisited in L1 (see :mod:`uhop.backends.numba_kernels`);
* matmul: BLAS GEMM (``np.matmul``) then one parallel in-place pass for ``act(y + bias)``.

Configs: ``parallel`` and ``wide`` (ask LLVM for 512-bit vectors) change the compiled code;
``chunk`` (elements) and ``rows`` (rows per parallel task) are runtime arguments, so one compile
serves every block size. Compiled functions are cached in-process, keyed by generated source and
flags (numba compiles take ~0.5-2 s each). exp (and, in float32, erf and tanh) are hand-written
so that loops vectorize: pip installs of numba have no SVML.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from uhop.backends.base import Backend, Candidate, Kernel
from uhop.errors import InputError
from uhop.ops import expr as ex
from uhop.problem import Problem

_INSTALL_HINT = "numba not installed: pip install 'uhop[cpu]'"


def _nk():
    """The numba kernel module, imported on first use (it imports numba)."""
    from uhop.backends import numba_kernels

    return numba_kernels


@functools.cache
def _has_avx512() -> bool:
    try:
        import llvmlite.binding as llb

        return "+avx512f" in llb.get_host_cpu_features().flatten().split(",")
    except Exception:  # a feature probe must never break the backend
        return False


def _threads() -> int:
    try:
        import numba

        return int(numba.get_num_threads())
    except Exception:
        return os.cpu_count() or 1


# ---- output buffers -------------------------------------------------------------------------------
class OutputPool:
    """Output allocation for one kernel, optionally recycling buffers nobody references any more.

    A fresh multi-MiB output costs the kernel's page faults: the OS zeroes every page on first
    touch, which took as long as the fused computation itself on the 16M-element chain. With
    ``recycle`` a kernel keeps up to ``slots`` outputs and hands one out again only when its
    reference count shows that no caller, view (``.base``), memoryview, DLPack capsule or torch
    tensor holds it, so a returned array is never overwritten while reachable: the caching-
    allocator idea of GPU frameworks, applied to the outputs this kernel made. Inputs passed to a
    call are referenced by the call itself and so never chosen. Off when the refcount cannot be
    trusted (free-threaded CPython), for outputs under ``MIN_BYTES`` (allocation is cheap there) and
    once all pools together hold ``LIMIT_BYTES``.
    """

    MIN_BYTES = 4 << 20
    LIMIT_BYTES = 1 << 30
    _held = 0
    _held_lock = threading.Lock()

    def __init__(self, recycle: bool, slots: int = 2) -> None:
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        self.recycle = recycle and gil
        self.slots = slots
        self._bufs: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if not self.recycle or math.prod(shape) * dtype.itemsize < self.MIN_BYTES:
            return np.empty(shape, dtype=dtype)
        with self._lock:
            bufs = self._bufs
            for i in range(len(bufs)):
                # 2 = the list's reference + getrefcount's argument: nobody else holds it
                if sys.getrefcount(bufs[i]) == _FREE_REFS and bufs[i].shape == shape and bufs[i].dtype == dtype:
                    return bufs[i]
            out = np.empty(shape, dtype=dtype)
            if len(bufs) < self.slots:
                with OutputPool._held_lock:
                    if OutputPool._held + out.nbytes <= self.LIMIT_BYTES:
                        OutputPool._held += out.nbytes
                        bufs.append(out)
            return out

    def __del__(self) -> None:
        try:
            cls = type(self)
            with cls._held_lock:
                cls._held -= sum(b.nbytes for b in self._bufs)
        except Exception:  # interpreter shutdown: nothing left to account for
            pass


def _free_refs() -> int:
    probe = [np.empty(1)]
    return sys.getrefcount(probe[0])


_FREE_REFS = _free_refs()


# ---- elementwise code generation ----------------------------------------------------------------
#: fn -> format string over argument names; names such as exp_, ONE resolve per dtype in the
#: namespace the source is executed in (see ``numba_kernels.namespace``). Formulas mirror ``expr.FUNCS`` so that
#: NaN and Inf come out where the float64 reference puts them (silu(-inf) is NaN there too).
_FORMULAS: dict[str, str] = {
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    "pow": "T(math.pow({0}, {1}))",
    "maximum": "fmaximum({0}, {1})",
    "minimum": "fminimum({0}, {1})",
    "neg": "(-{0})",
    "abs": "abs({0})",
    "exp": "exp_({0})",
    "log": "math.log({0})",
    "sqrt": "math.sqrt({0})",
    "rsqrt": "(ONE / math.sqrt({0}))",
    "tanh": "tanh_({0})",
    "sin": "math.sin({0})",
    "cos": "math.cos({0})",
    "sigmoid": "(ONE / (ONE + exp_(-{0})))",
    "relu": "fmaximum({0}, ZERO)",
    "silu": "({0} * (ONE / (ONE + exp_(-{0}))))",
    "gelu": "(HALF * {0} * (ONE + erf_({0} * RSQRT2)))",
    "erf": "erf_({0})",
    "square": "({0} * {0})",
    "reciprocal": "(ONE / {0})",
}


def expr_supported(e: ex.Expr) -> bool:
    return all(n.fn in _FORMULAS for n in ex.nodes(e) if isinstance(n, ex.Call))


def elementwise_source(e: ex.Expr, arity: int) -> str:
    """Python source of ``kernel(x0, .., out, n, chunk)`` for the chain ``e`` (flat 1-D inputs)."""
    names: dict[ex.Expr, str] = {}
    consts: list[str] = []
    body: list[str] = []
    for node in ex.nodes(e):
        if isinstance(node, ex.Var):
            names[node] = f"a{node.index}"
        elif isinstance(node, ex.Const):
            names[node] = f"k{len(consts)}"
            consts.append(f"k{len(consts)} = T(float.fromhex({float(node.value).hex()!r}))")
        else:
            assert isinstance(node, ex.Call)
            args = [names[a] for a in node.args]
            if node.fn == "pow" and isinstance(node.args[1], ex.Const) and node.args[1].value in (1.0, 2.0, 3.0):
                code = "(" + " * ".join([args[0]] * int(node.args[1].value)) + ")"  # exact, vectorizes
            else:
                code = _FORMULAS[node.fn].format(*args)
            names[node] = f"t{len(body)}"
            body.append(f"t{len(body)} = {code}")
    xs = [f"x{i}" for i in range(arity)]
    lines = [
        *consts,
        f"def kernel({', '.join(xs)}, out, n, chunk):",
        "    for c in prange((n + chunk - 1) // chunk):",
        "        hint()",
        "        s = c * chunk",
        "        m = min(n - s, chunk)",
        # slices indexed from 0: LLVM then knows indices are non-negative (no wraparound
        # selects, no gathers) and vectorizes plain loads and stores
        *(f"        v{i} = x{i}[s:s + m]" for i in range(arity)),
        "        o = out[s:s + m]",
        "        for i in range(m):",
        *(f"            a{i} = v{i}[i]" for i in range(arity)),
        *(f"            {line}" for line in body),
        f"            o[i] = {names[e]}",
    ]
    return "\n".join(lines) + "\n"


def compile_elementwise(source: str, dtype: str, parallel: bool, wide: bool) -> Callable[..., Any]:
    """The numba dispatcher for generated elementwise ``source`` (cached in-process and on disk,
    see :func:`uhop.backends.numba_kernels.compile_source`)."""
    return _nk().compile_source(source, dtype, parallel, wide, frozenset(_nk().FASTMATH))


def elementwise_kernel(
    expr_text: str, dtype: str, arity: int, parallel: bool, wide: bool, chunk: int, pool: OutputPool
) -> Kernel:
    e = ex.parse(expr_text)
    fn = compile_elementwise(elementwise_source(e, arity), dtype, parallel, wide)
    np_dtype = np.dtype(dtype)

    def kernel(*xs: np.ndarray) -> np.ndarray:
        shape = xs[0].shape
        flat = [np.ascontiguousarray(x, dtype=np_dtype).reshape(-1) for x in xs]
        if len(flat) != arity or any(f.size != flat[0].size for f in flat):  # the loop does not bounds-check
            raise InputError(
                f"elementwise: expected {arity} inputs of one size, got shapes {[tuple(x.shape) for x in xs]}"
            )
        out = pool.empty(shape, np_dtype)
        fn(*flat, out.reshape(-1), out.size, chunk)
        return out

    return kernel


# ---- row ops and matmul -----------------------------------------------------------------------
def _rows(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=dtype).reshape(-1, x.shape[-1])


def softmax_kernel(dtype: str, parallel: bool, wide: bool, rows: int, pool: OutputPool, log: bool = False) -> Kernel:
    fn = _nk().softmax_fn(dtype, parallel, wide, log)
    np_dtype = np.dtype(dtype)

    def kernel(x: np.ndarray) -> np.ndarray:
        out = pool.empty(x.shape, np_dtype)
        fn(_rows(x, np_dtype), out.reshape(-1, x.shape[-1]), rows)
        return out

    return kernel


def norm_kernel(
    kind: str, dtype: str, arity: int, eps: float, parallel: bool, wide: bool, rows: int, pool: OutputPool
) -> Kernel:
    has_w, has_b = arity >= 2, arity >= 3 and kind == "layernorm"
    fn = _nk().norm_fn(kind, dtype, has_w, has_b, parallel, wide)
    np_dtype = np.dtype(dtype)
    unused = np.zeros(1, dtype=np_dtype)

    def kernel(x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
        out = pool.empty(x.shape, np_dtype)
        w = np.ascontiguousarray(weight, dtype=np_dtype) if has_w else unused
        b = np.ascontiguousarray(bias, dtype=np_dtype) if has_b else unused
        for name, v, used in (("weight", w, has_w), ("bias", b, has_b)):
            if used and v.shape != (x.shape[-1],):
                raise InputError(f"{kind}: {name} must have shape ({x.shape[-1]},), got {v.shape}")
        fn(_rows(x, np_dtype), w, b, out.reshape(-1, x.shape[-1]), float(eps), rows)
        return out

    return kernel


def batched_matmul_kernel(dtype: str, activation: str, arity: int, wide: bool, batches: int) -> Kernel:
    """B GEMMs of a b with batch dims of its own (attention's q @ k^T written by hand), as tasks of
    ``batches`` GEMMs on :func:`_threads` threads, each with single-threaded BLAS and a serial
    epilogue on its slice. numpy (and ``blas+epilogue``) loop over the batch with all-core BLAS
    calls, each a thread barrier: on the 2-core VM, 96 x (1024 x 64) @ (64 x 1024) float32 took 124
    ms that way idle and 1981 ms beside two processes running multi-threaded BLAS; as tasks 91 and
    271 ms (``benchmarks/diagnosis/nineteenth_bmm_load.py``, ``diagnosis_nineteenth_bmm_load_96_cpu.json``)."""
    has_bias = arity >= 3
    epi = None if (activation == "none" and not has_bias) else _nk().epilogue_fn(dtype, activation, has_bias, False, wide)
    np_dtype = np.dtype(dtype)
    unused = np.zeros(1, dtype=np_dtype)
    if _blas_control() is None:
        raise RuntimeError("task-parallel matmul needs threadpoolctl (to run BLAS single-threaded per task): "
                           "pip install 'uhop[cpu]'")  # fmt: skip

    def kernel(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        if b.ndim < 3 or a.ndim < 3:
            raise InputError(f"matmul: the batched template takes a and b with batch dims, got shapes "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")  # fmt: skip
        M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
        a3 = np.asarray(a).reshape(-1, M, K)
        b3 = np.asarray(b).reshape(-1, K, N)
        out = np.empty((a3.shape[0], M, N), dtype=np.result_type(a3, b3))
        bv = np.ascontiguousarray(bias, dtype=np_dtype) if has_bias else unused
        if has_bias and bv.shape != (N,):
            raise InputError(f"matmul: bias must have shape ({N},), got {bv.shape}")

        def one(lo: int) -> None:
            hi = min(lo + batches, a3.shape[0])
            np.matmul(a3[lo:hi], b3[lo:hi], out=out[lo:hi])
            if epi is not None:
                epi(out[lo:hi].reshape(-1, N), bv, M)

        with _one_blas_thread():
            _run_tasks(one, list(range(0, a3.shape[0], batches)))
        return out.reshape(*a.shape[:-1], N)

    return kernel


def matmul_kernel(dtype: str, activation: str, arity: int, parallel: bool, wide: bool, rows: int) -> Kernel:
    has_bias = arity >= 3
    epi = None if (activation == "none" and not has_bias) else _nk().epilogue_fn(dtype, activation, has_bias, parallel, wide)
    np_dtype = np.dtype(dtype)
    unused = np.zeros(1, dtype=np_dtype)

    def kernel(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        y = np.matmul(a, b)  # vendor BLAS; y is a fresh C-contiguous array we may overwrite
        if epi is not None:
            bv = np.ascontiguousarray(bias, dtype=np_dtype) if has_bias else unused
            if has_bias and bv.shape != (y.shape[-1],):
                raise InputError(f"matmul: bias must have shape ({y.shape[-1]},), got {bv.shape}")
            epi(y.reshape(-1, y.shape[-1]), bv, rows)
        return y

    return kernel


def attention_kernel(dtype: str, causal: bool, parallel: bool, wide: bool, block: int, scale: float | None = None,
                     kv_groups: int | None = None) -> Kernel:  # fmt: skip
    """Per batch and block of ``block`` queries: scores = q_blk k^T (BLAS), softmax in place
    (numba, the block stays in L2), out_blk = p v (BLAS, written straight into the output).
    Causal blocks only touch the keys their queries can see, halving the work.

    ``parallel``: the (batch, block) tasks run on :func:`_threads` threads, each task with
    single-threaded BLAS and a serial softmax (no GIL held by either), taken largest first from a
    shared counter. Otherwise the blocks run one after another, each BLAS call using all cores.
    That is two thread barriers per block, and a barrier waits for its slowest thread: on the
    2-core VM the blocks in sequence ran 8 x 2048 x 64 causal attention in 48 ms idle and 319-1968
    ms beside two processes running multi-threaded BLAS; as tasks, 28-31 ms idle and 84-100 ms
    beside them (numpy as written: 259-264 ms and 805-906 ms;
    ``benchmarks/diagnosis/eighteenth_attention_load.py``, three interleaved rounds).

    ``kv_groups`` (grouped-query attention): query batch-head ``b`` reads key/value batch-head
    ``b // kv_groups`` of the flattened inputs, with no repeated copy of k and v."""
    from uhop.ops.attention import softmax_scale

    g = kv_groups or 1
    sm = _nk().attention_softmax_fn(dtype, causal, False, wide)
    np_dtype = np.dtype(dtype)
    if parallel and _blas_control() is None:
        raise RuntimeError("task-parallel attention needs threadpoolctl (to run BLAS single-threaded per task): "
                           "pip install 'uhop[cpu]'")  # fmt: skip

    def kernel(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        lead, (S, D), L, E = q.shape[:-2], q.shape[-2:], k.shape[-2], v.shape[-1]
        q3 = np.ascontiguousarray(q, dtype=np_dtype).reshape(-1, S, D)
        k3 = np.ascontiguousarray(k, dtype=np_dtype).reshape(-1, L, D)
        v3 = np.ascontiguousarray(v, dtype=np_dtype).reshape(-1, L, E)
        out = np.empty((q3.shape[0], S, E), dtype=np_dtype)
        factor = softmax_scale(scale, D)

        def one(b: int, s0: int, rows: int) -> None:
            s1 = min(S, s0 + block)
            n = min(L, s1) if causal else L
            scores = q3[b, s0:s1] @ k3[b // g, :n].T
            sm(scores, factor, s0, rows)
            np.matmul(scores, v3[b // g, :n], out=out[b, s0:s1])

        if parallel:
            starts = range(0, S, block)
            tasks = [(b, s0) for s0 in (reversed(starts) if causal else starts) for b in range(q3.shape[0])]
            with _one_blas_thread():
                _run_tasks(lambda t: one(t[0], t[1], block), tasks)
        else:
            for b in range(q3.shape[0]):
                for s0 in range(0, S, block):
                    one(b, s0, block)
        return out.reshape(*lead, S, E)

    return kernel


# ---- task parallelism for kernels made of BLAS calls -------------------------------------------
@functools.cache
def _blas_control() -> Any:
    """threadpoolctl's controller of the BLAS libraries loaded now (numpy's), or None without
    threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list[tuple[Any, int]] = []


def _restore_blas() -> None:
    """The BLAS libraries' own thread counts, as :func:`_one_blas_thread` found them."""
    for lib, n in _blas_saved:
        if n != 1:
            lib.set_num_threads(n)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS single-threaded while any task-parallel kernel of this process runs (calls from
    several threads nest: the first sets one thread, the last restores the libraries' own count)."""
    global _blas_users, _blas_saved
    with _blas_lock:
        if _blas_users == 0:
            ctl = _blas_control()
            _blas_saved = [(lib, lib.num_threads) for lib in (ctl.lib_controllers if ctl is not None else [])]
            for lib, n in _blas_saved:
                if n != 1:
                    lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _restore_blas()


_pool: Any = None  # the task threads' ThreadPoolExecutor, made on first use
_pool_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: no pool (a new one on first use), fresh
    locks, and BLAS's own thread count back if a parent thread was inside a task-parallel call."""
    global _pool, _pool_lock, _blas_lock, _blas_users
    _pool, _pool_lock, _blas_lock = None, threading.Lock(), threading.Lock()
    if _blas_users:
        _blas_users = 0
        _restore_blas()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _run_tasks(fn: Callable[[Any], None], tasks: list[Any]) -> None:
    """``fn(t)`` for every task, on the calling thread and ``_threads() - 1`` pool threads,
    each taking the next task from a shared counter (a thread the OS deschedules holds no queue of
    work back). The first exception is raised once every thread has stopped."""
    global _pool
    from concurrent.futures import ThreadPoolExecutor

    workers = min(_threads(), len(tasks))
    counter = itertools.count()  # next() is atomic under the GIL
    failed: list[BaseException] = []

    def work() -> None:
        try:
            for i in iter(counter.__next__, None):
                if i >= len(tasks) or failed:
                    return
                fn(tasks[i])
        except BaseException as e:  # re-raised by the caller
            failed.append(e)

    futures = []
    if workers > 1:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(_threads() - 1, thread_name_prefix="uhop-tasks")
            pool = _pool
        futures = [pool.submit(work) for _ in range(workers - 1)]
    work()
    for f in futures:
        f.result()
    if failed:
        raise failed[0]


# ---- the backend ------------------------------------------------------------------------------
#: elements below which the serial kernel is the first guess: waking the thread pool costs ~10 us
#: on idle cores and whole scheduler time slices on busy ones, more than the work itself.
_SERIAL_BELOW = 1 << 18


def _with_recycling(cands: list[Candidate], out_bytes: int) -> list[Candidate]:
    """Large outputs: every config also recycles its output buffers (see :class:`OutputPool`),
    and the first config is kept without recycling so the tuning log shows what it buys."""
    if out_bytes < OutputPool.MIN_BYTES:
        return cands
    rec = [Candidate.of(c.backend, c.template, **c.cfg, recycle=True) for c in cands]
    return [rec[0], cands[0], *rec[1:]][:5]


def _row_block(R: int, threads: int, tasks_per_thread: int) -> int:
    """Rows per parallel task so that each thread gets about ``tasks_per_thread`` tasks."""
    return max(1, math.ceil(R / (threads * tasks_per_thread)))


class NumbaBackend(Backend):
    name = "numba"
    requires = ("numba",)
    crash_prone = True
    precompiles = True
    eval_s = 1.5  # a JIT compile per candidate
    source_modules = ("uhop.backends.numba_kernels",)
    array = "numpy"
    devices = ("cpu",)
    ops = ("elementwise", "softmax", "layernorm", "rmsnorm", "matmul", "attention", "log_softmax")
    dtypes = ("float32", "float64")

    def _probe(self) -> tuple[bool, str]:
        if importlib.util.find_spec("numba") is None:
            return False, _INSTALL_HINT
        import numba

        simd = "AVX-512" if _has_avx512() else "no AVX-512"
        svml = "SVML" if getattr(numba.config, "USING_SVML", False) else "no SVML"
        return True, f"numba {numba.__version__}, {_threads()} threads, {simd}, {svml}"

    def supports(self, problem: Problem) -> bool:
        if not super().supports(problem):
            return False
        if problem.op == "elementwise":
            return expr_supported(ex.parse(problem.param["expr"]))
        if problem.op == "attention" and problem.arity > 3:
            return False  # its attention kernels take no mask
        return not problem.param.get("trans_b", False)  # its matmul kernels read b as (K, N)

    def candidates(self, problem: Problem) -> list[Candidate]:
        c = Candidate.of
        threads = _threads()
        wide = _has_avx512()
        # Best guess first: parallel with 512-bit vectors where the CPU has them; then 256-bit,
        # then serial (tiny problems, where waking threads costs more than the work).
        flags = [(True, wide), (True, False)] if wide else [(True, False)]
        flags.append((False, wide))
        batched: Candidate | None = None  # matmul with a batched b: its GEMMs as tasks
        if problem.op == "elementwise":
            n = problem.dim["N"]
            if n < _SERIAL_BELOW:
                flags = [flags[-1], *flags[:-1]]
            chunks = (65536, 16384)
            out = [c("numba", "fused", parallel=p, wide=w, chunk=chunks[0]) for p, w in flags]
            if n > 4 * chunks[0]:
                out.insert(1, c("numba", "fused", parallel=flags[0][0], wide=flags[0][1], chunk=chunks[1]))
            return _with_recycling(out, n * np.dtype(problem.dtype).itemsize)
        if problem.op in ("softmax", "layernorm", "rmsnorm", "log_softmax"):
            R = problem.dim["R"]
            if R * problem.dim["N"] < _SERIAL_BELOW or R == 1:
                flags = [flags[-1], *flags[:-1]]
            template = "rows"
        elif problem.op == "matmul":
            # Serial epilogues only: right after a multi-threaded GEMM the BLAS threads still
            # spin, and numba's OpenMP pool competing with them for the cores is a hazard with no
            # gain. Where UHOP's thread policy reaches both pools (uhop imported first, and in its
            # workers, where candidates are timed) the parallel epilogue ran within 1% of the
            # serial one (512x1024x1024, 4096x4096x1024, 64x3072x768, tanh-GELU, 2-core VM); in a
            # process that imported torch first (its libgomp is numba's, started with the default
            # spin) the same kernel took 16 ms against 5.4 ms serial when called from the main
            # thread, yet 5-6 ms from the tuner's background thread, so tuning could not see it.
            R = problem.dim["B"] * problem.dim["M"]
            flags = [(False, w) for _, w in flags[-1:]]
            template = "blas+epilogue"
            d = problem.dim
            if problem.param.get("batched_b") and d["B"] > 1 and _blas_control() is not None:
                # B GEMMs as tasks (batched_matmul_kernel), about four per thread; first unless tiny
                per = max(1, math.ceil(d["B"] / (threads * 4)))
                batched = c("numba", "batched", wide=wide, batches=per)
                batched_at = 1 if d["B"] * d["M"] * d["N"] * d["K"] < _SERIAL_BELOW else 0
        elif problem.op == "attention":
            # Blocks as tasks on all cores, each with single-threaded BLAS and a serial softmax
            # (see attention_kernel); then the blocks one after another with all-core BLAS.
            # Never numba's pool between BLAS calls: alternating two spinning thread pools on the
            # same cores was 3-10x slower.
            # Tiny problems (below _SERIAL_BELOW multiply-adds) in sequence first: waking the task
            # threads cost 10-150 us there against a 10 us call.
            d = problem.dim
            S = d["S"]
            blocks = [b for b in (128, 256) if b < 2 * S] or [S]
            par = [c("numba", "blocked", parallel=True, wide=wide, block=b) for b in blocks] if _blas_control() else []
            seq = c("numba", "blocked", parallel=False, wide=wide, block=blocks[0])
            out = [seq, *par] if d["B"] * S * d["L"] * (d["D"] + d["E"]) < _SERIAL_BELOW else [*par, seq]
            return out + ([c("numba", "blocked", parallel=bool(par), wide=False, block=blocks[0])] if wide else [])
        else:
            return []
        out = [c("numba", template, parallel=p, wide=w, rows=_row_block(R, threads, 8)) for p, w in flags]
        if R >= threads * 64:  # finer tasks balance better when another process shares the cores
            p, w = flags[0]
            out.insert(1, c("numba", template, parallel=p, wide=w, rows=_row_block(R, threads, 32)))
        if batched is not None:
            out.insert(batched_at, batched)
        nbytes = R * problem.dim["N"] * np.dtype(problem.dtype).itemsize
        return _with_recycling(out, nbytes) if template == "rows" else out

    def space(self, problem: Problem) -> Any:
        """Typed search space (strategies beyond the candidate list): ``parallel`` and ``wide``
        (compiled variants), ``chunk`` / ``rows`` / ``block`` (runtime, powers of two) and, for
        outputs of at least ``OutputPool.MIN_BYTES``, ``recycle``."""
        from uhop.space import Categorical, Pow2, SearchSpace

        flags = [Categorical("parallel", (True, False)), Categorical("wide", (True, False) if _has_avx512() else (False,))]
        itemsize = np.dtype(problem.dtype).itemsize
        d = problem.dim
        if problem.op == "elementwise":
            params, template, out_bytes = [*flags, Pow2("chunk", 1 << 12, 1 << 18)], "fused", d["N"] * itemsize
        elif problem.op in ("softmax", "layernorm", "rmsnorm", "log_softmax"):
            high = min(1 << 12, 1 << max(0, (d["R"] - 1).bit_length()))
            params, template, out_bytes = [*flags, Pow2("rows", 1, high)], "rows", d["R"] * d["N"] * itemsize
        elif problem.op == "matmul":  # serial epilogues only (see candidates)
            high = min(1 << 12, 1 << max(0, (d["B"] * d["M"] - 1).bit_length()))
            flags = [Categorical("parallel", (False,)), flags[1]]
            params, template, out_bytes = [*flags, Pow2("rows", 1, high)], "blas+epilogue", 0
        elif problem.op == "attention":  # parallel: blocks as tasks (see attention_kernel)
            params = [Categorical("parallel", (True, False) if _blas_control() else (False,)), flags[1], Pow2("block", 16, 1024)]
            template, out_bytes = "blocked", 0
        else:
            return None
        if out_bytes >= OutputPool.MIN_BYTES:
            params.append(Categorical("recycle", (True, False)))
        return SearchSpace(params, backend="numba", template=template)

    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        if not self.available:
            raise RuntimeError(self.availability[1])
        cfg, p, dt = candidate.cfg, problem.param, problem.dtype
        par, wide = bool(cfg.get("parallel", True)), bool(cfg.get("wide", False))
        pool = OutputPool(bool(cfg.get("recycle", False)))
        if problem.op == "elementwise":
            kernel = elementwise_kernel(p["expr"], dt, problem.arity, par, wide, int(cfg.get("chunk", 65536)), pool)
        elif problem.op in ("softmax", "log_softmax"):
            kernel = softmax_kernel(dt, par, wide, int(cfg.get("rows", 16)), pool, log=problem.op == "log_softmax")
        elif problem.op in ("layernorm", "rmsnorm"):
            kernel = norm_kernel(problem.op, dt, problem.arity, p["eps"], par, wide, int(cfg.get("rows", 16)), pool)
        elif problem.op == "matmul" and candidate.template == "batched":
            kernel = batched_matmul_kernel(dt, p["activation"], problem.arity, wide, int(cfg.get("batches", 1)))
        elif problem.op == "matmul":
            kernel = matmul_kernel(dt, p["activation"], problem.arity, par, wide, int(cfg.get("rows", 16)))
        elif problem.op == "attention":
            kernel = attention_kernel(dt, bool(p["causal"]), par, wide, int(cfg.get("block", 128)), p.get("scale"),
                                      p.get("kv_groups"))  # fmt: skip
        else:
            raise ValueError(f"numba backend has no kernel for op {problem.op!r}")
        _warm_up(kernel, problem)
        return kernel


def _warm_up(kernel: Kernel, problem: Problem) -> None:
    """Run once on tiny inputs so numba compiles now (compile errors surface in ``compile``, and
    the first timed call is not a compile)."""
    spec = problem.spec
    dims = {d: min(v, 3) for d, v in problem.dim.items()}
    if problem.param.get("kv_groups"):  # grouped-query attention: a whole group of query heads
        dims["B"] = problem.param["kv_groups"]
    xs = spec.make_inputs(dims, problem.param, np.random.default_rng(0), problem.dtype, problem.arity)
    kernel(*xs)
