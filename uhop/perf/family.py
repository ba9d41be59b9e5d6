"""A parametrised kernel family: cache-tiled numba matmul, one kernel for two users.

The registered CPU backends offer a handful of matmul candidates per problem (the BLAS call, the
torch call); a ranking model needs many candidates whose speed depends on their config in a way
the hardware explains, and a search-strategy benchmark needs a space with real structure. This
family serves both: ``C = A @ B`` computed block by block, with tile sizes ``bm x bn`` over the
output, ``bk`` over the reduction, rows of B streamed through the inner ``j`` loop (unit stride,
vectorised). A config (all runtime arguments but ``parallel`` and ``fastmath``, so one numba
compile per (dtype, parallel, fastmath) serves every config) holds:

- ``bm``, ``bn``, ``bk``: tile sizes (positive ints);
- ``parallel``: tasks spread over cores (``prange``) or run on one (default ``False``);
- ``tasks``: what one task is -- ``"tile"`` (default), ``chunk`` row blocks times one ``bn``
  column block; ``"rows"``, ``chunk`` row blocks times all of N;
- ``chunk``: row blocks per task (default 1);
- ``order``: the block loops inside a task -- ``"kj"`` (default), column blocks outer and
  reduction blocks inner; ``"jk"``, reduction blocks outer and column blocks inner (the same
  thing when a task holds one column block);
- ``fastmath``: numba fast-math (contract, reassoc, nsz; default ``True``).

Its two users and their encodings: ``uhop perf collect`` samples :meth:`TiledMatmulFamily.candidates`
(``bm``/``bn``/``bk``/``parallel``, all else default; the ``tiled`` backend of the telemetry and
cost-model data), measured through the tuner's own ``evaluate`` (float64-validated, timed by the
one benchmark function). ``benchmarks/tuning_replay.py`` searches the blocked-matmul space whose
configs are ``BM``/``BN``/``BK``/``order``/``chunk`` (the names its recorded data is keyed by);
:func:`blocked_config` maps one onto this family (row tasks, parallel, no fast-math: the kernel
the data was recorded with). The family is not registered as a backend (it never beats BLAS on
big problems); it is a real kernel: tests check every kind of config against the float64
reference.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Mapping
from typing import Any

import numpy as np

from uhop.backends.base import Backend, Candidate, Kernel
from uhop.problem import Problem

#: the cost-model family's grid (``TiledMatmulFamily.candidates``)
TILE_M = (4, 16, 64)
TILE_N = (16, 64, 256)
TILE_K = (16, 64, 256)
PARALLEL = (False, True)
ORDERS = ("kj", "jk")
TASKS = ("tile", "rows")
#: a config's keys and their defaults (the cost-model candidates leave all but the tiles and
#: ``parallel`` out, so their config hashes -- and the telemetry keyed by them -- stay as recorded)
DEFAULTS: dict[str, Any] = {"parallel": False, "tasks": "tile", "chunk": 1, "order": "kj", "fastmath": True}


def tiled_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` checked and completed with :data:`DEFAULTS`; ``ValueError`` names a bad key."""
    unknown = set(config) - {"bm", "bn", "bk", *DEFAULTS}
    if unknown:
        known = ", ".join(["bm", "bn", "bk", *DEFAULTS])
        raise ValueError(f"config keys {sorted(unknown)} are not tiled-family parameters ({known})")
    cfg = {**DEFAULTS, **config}
    for k in ("bm", "bn", "bk", "chunk"):
        if not isinstance(cfg.get(k), int) or isinstance(cfg[k], bool) or cfg[k] < 1:
            raise ValueError(f"config {k} must be a positive int, got {cfg.get(k)!r}")
    if cfg["order"] not in ORDERS:
        raise ValueError(f"config order must be one of {ORDERS}, got {cfg['order']!r}")
    if cfg["tasks"] not in TASKS:
        raise ValueError(f"config tasks must be one of {TASKS}, got {cfg['tasks']!r}")
    for k in ("parallel", "fastmath"):
        if not isinstance(cfg[k], bool):
            raise ValueError(f"config {k} must be a bool, got {cfg[k]!r}")
    return cfg


def blocked_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A blocked-matmul search-space config (``BM``, ``BN``, ``BK``, ``order``, ``chunk``: the
    encoding ``benchmarks/tuning_replay.py`` and its recorded data use) as a family config:
    ``chunk`` row blocks over all columns per task, in parallel, without fast-math."""
    return tiled_config({"bm": config["BM"], "bn": config["BN"], "bk": config["BK"], "order": config["order"],
                         "chunk": config["chunk"], "tasks": "rows", "parallel": True, "fastmath": False})  # fmt: skip


@functools.cache
def _tiled(parallel: bool, fastmath: bool):
    from numba import njit, prange

    rng = prange if parallel else range
    flags = {"contract", "reassoc", "nsz"} if fastmath else False

    @njit(parallel=parallel, fastmath=flags, cache=False)
    def mm(a, b, c, bm, bn, bk, chunk, tile_tasks, k_outer):
        M, K = a.shape
        N = b.shape[1]
        nbm = (M + bm - 1) // bm
        nbn = (N + bn - 1) // bn
        nbk = (K + bk - 1) // bk
        ncol = nbn if tile_tasks else 1  # column panels: one per column block, or one over all N
        njb = 1 if tile_tasks else nbn  # column blocks per task
        n_outer, n_inner = (nbk, njb) if k_outer else (njb, nbk)
        for t in rng(((nbm + chunk - 1) // chunk) * ncol):
            r = t // ncol
            jb0 = t % ncol
            for bi in range(r * chunk, min(r * chunk + chunk, nbm)):
                i0 = bi * bm
                i1 = min(i0 + bm, M)
                for o in range(n_outer):
                    for q in range(n_inner):
                        kb, jb = (o, q) if k_outer else (q, o)
                        j0 = (jb0 + jb) * bn
                        j1 = min(j0 + bn, N)
                        k0 = kb * bk
                        k1 = min(k0 + bk, K)
                        for i in range(i0, i1):
                            for k in range(k0, k1):
                                aik = a[i, k]
                                for j in range(j0, j1):
                                    c[i, j] += aik * b[k, j]

    return mm


def tiled_kernel(config: Mapping[str, Any], dtype: Any) -> Kernel:
    """``(a, b) -> a @ b`` (2-D) by the family's kernel under ``config`` (checked here, once, by
    :func:`tiled_config`), computed in ``dtype``; the call does no more than convert, allocate C
    and run the compiled kernel."""
    cfg = tiled_config(config)
    dt = np.dtype(dtype)
    mm = _tiled(cfg["parallel"], cfg["fastmath"])
    args = (cfg["bm"], cfg["bn"], cfg["bk"], cfg["chunk"], cfg["tasks"] == "tile", cfg["order"] == "jk")

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a2, b2 = np.ascontiguousarray(a, dtype=dt), np.ascontiguousarray(b, dtype=dt)
        c = np.zeros((a2.shape[0], b2.shape[1]), dtype=dt)
        mm(a2, b2, c, *args)
        return c

    return kernel


class TiledMatmulFamily(Backend):
    """numba cache-tiled matmul (2-D, no bias, no activation) with tunable tiles."""

    name = "tiled"
    array = "numpy"
    ops = ("matmul",)
    dtypes = ("float32", "float64")

    def _probe(self) -> tuple[bool, str]:
        import numba

        return True, f"numba {numba.__version__}"

    def supports(self, problem: Problem) -> bool:
        p = problem.param
        return (
            super().supports(problem)
            and problem.dim.get("B", 1) == 1
            and problem.arity == 2
            and p.get("activation", "none") == "none"
        )

    def candidates(self, problem: Problem) -> list[Candidate]:
        return [
            Candidate.of("tiled", "numba-tiled", bm=m, bn=n, bk=k, parallel=par)
            for par, m, n, k in itertools.product(PARALLEL, TILE_M, TILE_N, TILE_K)
        ]

    def sample(self, problem: Problem, n: int, rng: random.Random) -> list[Candidate]:
        """``n`` distinct candidates drawn with ``rng`` (all of them if ``n`` >= the family)."""
        cands = self.candidates(problem)
        return cands if n >= len(cands) else rng.sample(cands, n)

    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        return tiled_kernel(candidate.cfg, problem.dtype)


def _hw_size(hw: Mapping[str, float], key: str) -> float | None:
    """A manifest size in bytes/bits whether it arrives raw or as log2 (problem_features' row
    convention); None when unknown."""
    v = hw.get(key)
    if not v:
        return None
    return float(2.0**v) if v < 64 else float(v)


def config_features(config: Mapping[str, Any], dims: Mapping[str, int], itemsize: int,
                    hw: Mapping[str, float]) -> dict[str, float]:  # fmt: skip
    """How a config meets a problem, as the kernel's loop nest sees it. Sizes and counts as log2;
    counts "per FMA" are over the problem's M*N*K multiply-adds, so they compare configs of one
    problem and carry across problems.

    - effective tiles ``x_bm``/``x_bn``/``x_bk`` (a tile is cut at the matrix edge), output tiles
      (parallel tasks) per core, reduction steps, and the ragged remainders of N and K;
    - ``x_edge_waste``: the padded output over the real one, minus 1 (0 when the tiles divide M, N);
    - loop overheads: inner ``j`` loops, ``k`` loops and blocks started per FMA (the inner loop runs
      once per (row, k, column block), so a short ``bn`` pays its start-up every few FMAs);
    - vectorisation of the inner loop: vector steps per FMA and the fraction of N left to scalar
      code, for steps of one SIMD register (``hw_vector_bits`` / item bits) and of four (the
      unrolled loop LLVM emits), summed over the column blocks of ``bn`` and the ragged last one;
    - ``x_tile_intensity``: FLOPs per byte moved by tiles (A, B, C read and written once per block);
    - footprints against one core's L1 and L2 (the manifest's ``caches.l1_bytes``/``l2_bytes`` are
      per core on a CPU, see :class:`uhop.hardware.schema.Caches`): all three tiles, and the B tile
      that every row of a block streams through.
    """
    M, N, K = dims["M"], dims["N"], dims["K"]
    bm, bn, bk = (min(int(config[k]), d) for k, d in (("bm", M), ("bn", N), ("bk", K)))
    nbm, nbn, nbk = math.ceil(M / bm), math.ceil(N / bn), math.ceil(K / bk)
    cores = max(1.0, hw.get("hw_cores", 1.0))
    fmas = M * N * K
    out = {
        "x_bm": math.log2(bm), "x_bn": math.log2(bn), "x_bk": math.log2(bk),
        "x_tiles_per_core": math.log2(nbm * nbn / cores), "x_tasks": math.log2(nbm * nbn),
        "x_edge_waste": (nbm * bm * nbn * bn) / (M * N) - 1.0,
        "x_k_steps": math.log2(nbk),
        "x_n_rem": (N % bn) / bn, "x_k_rem": (K % bk) / bk,
        "x_jloops_per_fma": math.log2(M * K * nbn / fmas),
        "x_kloops_per_fma": math.log2(M * nbn * nbk / fmas),
        "x_blocks_per_fma": math.log2(nbm * nbn * nbk / fmas),
        "x_tile_intensity": math.log2(2 * fmas / (itemsize * nbm * nbn * nbk * (bm * bk + bk * bn + 2 * bm * bn))),
    }  # fmt: skip
    bits = _hw_size(hw, "hw_vector_bits")
    if bits:
        lanes = max(1, int(bits) // (8 * itemsize))
        runs = [bn] * (N // bn) + ([N % bn] if N % bn else [])  # inner-loop lengths over one row
        out["x_bn_over_lanes"] = math.log2(bn / lanes)
        for name, w in (("v1", lanes), ("v4", 4 * lanes)):
            steps = sum(n // w + n % w for n in runs)  # vector steps plus scalar remainder iterations
            out[f"x_{name}_steps_per_fma"] = math.log2(M * K * steps / fmas)
            out[f"x_{name}_scalar_frac"] = sum(n % w for n in runs) / N
    foot = itemsize * (bm * bk + bk * bn + bm * bn)
    for level in ("l1", "l2"):
        size = _hw_size(hw, f"hw_{level}_bytes")
        if size:
            out[f"x_tile_over_{level}"] = math.log2(foot / size)
            out[f"x_btile_over_{level}"] = math.log2(itemsize * bk * bn / size)
            out[f"x_crow_over_{level}"] = math.log2(itemsize * bn * (bk + 1) / size)
    return out
