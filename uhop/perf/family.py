"""A parametrised kernel family for cost-model data: cache-tiled numba matmul.

The registered CPU backends offer a handful of matmul candidates per problem (the BLAS call, the
torch call); a ranking model needs many candidates whose speed depends on their config in a way
the hardware explains. This family is that: ``C = A @ B`` computed tile by tile, with tile sizes
``bm x bn`` over the output, ``bk`` over the reduction, rows of B streamed through the inner
``j`` loop (unit stride, vectorised), and the tiles spread over cores (``parallel=True``) or run
on one. Tile sizes are runtime arguments, so one numba compile per (dtype, parallel) serves every
config. It is not registered as a backend (it never beats BLAS on big problems); ``uhop perf
collect`` measures it through the tuner's own ``evaluate`` (float64-validated, timed by the one
benchmark function), and it is a real kernel: tests check it against the float64 reference.
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

TILE_M = (4, 16, 64)
TILE_N = (16, 64, 256)
TILE_K = (16, 64, 256)
PARALLEL = (False, True)


@functools.cache
def _tiled(parallel: bool):
    from numba import njit, prange

    rng = prange if parallel else range

    @njit(parallel=parallel, fastmath={"contract", "reassoc", "nsz"}, cache=False)
    def mm(a, b, c, bm, bn, bk):
        M, K = a.shape
        N = b.shape[1]
        nbm = (M + bm - 1) // bm
        nbn = (N + bn - 1) // bn
        for t in rng(nbm * nbn):
            i0 = (t // nbn) * bm
            j0 = (t % nbn) * bn
            i1 = min(i0 + bm, M)
            j1 = min(j0 + bn, N)
            for k0 in range(0, K, bk):
                k1 = min(k0 + bk, K)
                for i in range(i0, i1):
                    for k in range(k0, k1):
                        aik = a[i, k]
                        for j in range(j0, j1):
                            c[i, j] += aik * b[k, j]

    return mm


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
        cfg: dict[str, Any] = candidate.cfg
        for k in ("bm", "bn", "bk"):
            if not isinstance(cfg.get(k), int) or cfg[k] < 1:
                raise ValueError(f"config {k} must be a positive int, got {cfg.get(k)!r}")
        mm = _tiled(bool(cfg.get("parallel", False)))
        dtype = np.dtype(problem.dtype)
        bm, bn, bk = cfg["bm"], cfg["bn"], cfg["bk"]

        def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            a2, b2 = np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)
            c = np.zeros((a2.shape[0], b2.shape[1]), dtype=dtype)
            mm(a2, b2, c, bm, bn, bk)
            return c

        return kernel


def config_features(config: Mapping[str, Any], dims: Mapping[str, int], itemsize: int,
                    hw: Mapping[str, float]) -> dict[str, float]:  # fmt: skip
    """How a config meets a problem: effective tile sizes (a tile is cut at the matrix edge), the
    number of output tiles (parallel tasks) per core, the work wasted on ragged edge tiles, and
    the tiles' footprint against L1 and L2. Sizes as log2."""
    M, N, K = dims["M"], dims["N"], dims["K"]
    bm, bn, bk = (min(int(config[k]), d) for k, d in (("bm", M), ("bn", N), ("bk", K)))
    tiles = math.ceil(M / bm) * math.ceil(N / bn)
    foot = itemsize * (bm * bk + bk * bn + bm * bn)
    out = {
        "x_bm": math.log2(bm), "x_bn": math.log2(bn), "x_bk": math.log2(bk),
        "x_tiles_per_core": math.log2(tiles / max(1.0, hw.get("hw_cores", 1.0))),
        "x_edge_waste": (math.ceil(M / bm) * bm * math.ceil(N / bn) * bn) / (M * N) - 1.0,
        "x_k_steps": math.log2(math.ceil(K / bk)),
    }  # fmt: skip
    for level in ("l1", "l2"):
        size = hw.get(f"hw_{level}_bytes")
        if size:
            # hw sizes arrive as log2 (problem_features' convention) or raw bytes
            out[f"x_tile_over_{level}"] = math.log2(foot) - (size if size < 64 else math.log2(size))
    return out
