"""iree backend: ops emitted as linalg on tensors, passed through UHOP's fusion / tiling /
vectorization decisions (:mod:`uhop.mlir.passes`), compiled by IREE for the host CPU (llvm-cpu)
and run with ``iree.runtime`` on numpy arrays.

Templates (the ``strategy`` of :class:`~uhop.mlir.passes.PassConfig`):

* ``default``: IREE's own heuristics choose every tile (the untuned pipeline);
* ``tiled`` (matmul): UHOP's lowering configuration, distribution tiles ``dist_m x dist_n`` per
  thread and a ``vec_m x vec_n`` register tile, sizes seeded from the hardware manifest (L2 size,
  SIMD width) and tunable; configurations whose inner loops spill registers are rejected at
  compile time by the register-pressure guard;
* ``data-tiled`` (matmul): packed operand layouts and IREE's mmt4d micro-kernels, with the
  distribution tile size in bytes (``tile_bytes``) tunable.

Every template takes ``vector_bytes`` (vector width) and ``fuse``; row ops and chains take a
``distribution`` tile size, row ops ``fuse_reductions`` (one dispatch per row op). Compiled artifacts are cached on disk (see :mod:`uhop.mlir.compile`).
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any

import numpy as np

from uhop.backends.base import Backend, Candidate, Kernel
from uhop.problem import Problem

_ROW_OPS = ("softmax", "layernorm", "rmsnorm")


def _lanes(problem: Problem) -> tuple[int, int, int]:
    """(vector bytes, lanes of the problem's dtype, vector registers) of the host."""
    from uhop.mlir.passes import host_target

    hw = host_target()
    item = np.dtype(problem.dtype).itemsize
    return hw.simd_bytes, max(1, hw.simd_bytes // item), hw.vector_registers


class IreeBackend(Backend):
    name = "iree"
    requires = ("iree.compiler", "iree.runtime")
    crash_prone = True
    precompiles = True
    eval_s = 2.0  # a JIT compile per candidate
    array = "numpy"
    devices = ("cpu",)
    ops = ("matmul", "softmax", "layernorm", "rmsnorm", "elementwise", "conv2d")
    dtypes = ("float32", "float64")

    def _probe(self) -> tuple[bool, str]:
        try:
            import iree.compiler  # noqa: F401
            import iree.runtime  # noqa: F401
        except ImportError:
            return False, "iree not installed: pip install 'uhop[mlir]'"
        from uhop.mlir.compile import compiler_version

        return True, f"IREE {compiler_version()} (llvm-cpu, host CPU)"

    def supports(self, problem: Problem) -> bool:
        # the emitted matmul reads b as (K, N): F.linear's (N, K) weight (trans_b) is not expressed,
        # and every candidate failed to compile on it (one warning per problem, nothing served)
        # nor a b with batch dims of its own (the compiled signature takes b as one (K, N))
        return (super().supports(problem) and not problem.param.get("trans_b", False)
                and not problem.param.get("batched_b", False))  # fmt: skip

    # ---- candidates ---------------------------------------------------------------------------
    def candidates(self, problem: Problem) -> list[Candidate]:
        c = Candidate.of
        vbytes, lanes, regs = _lanes(problem)
        if problem.op == "matmul":
            d = problem.dim
            rows = d["B"] * d["M"]
            out = [c("iree", "data-tiled", tile_bytes=0, vector_bytes=vbytes, fuse=True)]
            # Register tiles of 16 accumulators, half of AVX-512's 32 registers: 16x16 and 8x48
            # already spill once operand broadcasts and loads are counted. 4 x lanes (4 accumulators)
            # is the conservative tile that compiles without spills where the others do (bias +
            # ragged N: 31x48x5 spilled both 16-accumulator tiles).
            # AVX2 has 16 vector registers: there even 4 x lanes spilled (bias + ragged N, 7x13x3),
            # so a 2 x lanes tile comes last
            tiles = ((8, 2 * lanes), (4, 4 * lanes), (4, lanes)) + (((2, lanes),) if regs <= 16 else ())
            for vm, vn in tiles:
                for dm, dn in ((128, 128), (64, 256)):
                    if vm * vn // lanes <= regs // 2:
                        out.append(c("iree", "tiled", dist_m=min(dm, _ceil(rows, vm)), dist_n=min(dn, _ceil(d["N"], vn)),
                                     vec_m=vm, vec_n=vn, vec_k=1, vector_bytes=vbytes, fuse=True))  # fmt: skip
            out += [c("iree", "data-tiled", tile_bytes=tb, vector_bytes=vbytes, fuse=True) for tb in (1 << 16, 1 << 20)]
            out.append(c("iree", "default", distribution=0, vector_bytes=vbytes, fuse=True))
            return list(dict.fromkeys(out))
        if problem.op in _ROW_OPS:
            return [c("iree", "default", distribution=dist, vector_bytes=vb, fuse=True, fuse_reductions=fr)
                    for dist, vb, fr in ((16, vbytes, True), (0, vbytes, False), (0, vbytes, True), (128, vbytes, True),
                                         (0, min(vbytes, 32), True))]  # fmt: skip
        if problem.op == "elementwise":
            return [c("iree", "default", distribution=dist, vector_bytes=vbytes, fuse=True) for dist in (0, 16384, 131072)]
        return [c("iree", "default", distribution=0, vector_bytes=vbytes, fuse=True)]

    def space(self, problem: Problem) -> Any:
        """Typed search space: matmul register and distribution tiles (with the register-file
        constraint from the manifest), data-tiling tile bytes, IREE's default; other ops their
        candidate list."""
        from uhop.space import Categorical, Constraint, Pow2, SearchSpace

        if problem.op != "matmul":
            return SearchSpace.from_candidates(self.candidates(problem))
        vbytes, lanes, regs = _lanes(problem)
        # Powers of two only (a 6-row or 48-column register tile compiles to much slower code) and at
        # most half the vector registers as accumulators (more spills; the guard would reject it).
        tiled = SearchSpace(
            [Pow2("dist_m", 16, 512), Pow2("dist_n", 16, 512), Pow2("vec_m", 2, 16),
             Categorical("vec_n", tuple(lanes * k for k in (1, 2, 4))), Pow2("vec_k", 1, 4),
             Categorical("vector_bytes", (vbytes,)), Categorical("fuse", (True,))],
            [Constraint(lambda cfg: cfg["vec_m"] * cfg["vec_n"] // lanes <= regs // 2,
                        f"accumulators vec_m*vec_n/{lanes} <= {regs // 2} (half the vector registers)"),
             Constraint(lambda cfg: cfg["dist_m"] % cfg["vec_m"] == 0, "dist_m is a multiple of vec_m"),
             Constraint(lambda cfg: cfg["dist_n"] % cfg["vec_n"] == 0, "dist_n is a multiple of vec_n")],
            backend="iree", template="tiled",
        )  # fmt: skip
        data_tiled = SearchSpace(
            [Categorical("tile_bytes", (0, 1 << 16, 1 << 18, 1 << 20, 1 << 22)), Categorical("vector_bytes", (vbytes,)),
             Categorical("fuse", (True,))],
            backend="iree", template="data-tiled",
        )  # fmt: skip
        default = SearchSpace(
            [Categorical("distribution", (0,)), Categorical("vector_bytes", (vbytes,)), Categorical("fuse", (True,))],
            backend="iree", template="default",
        )  # fmt: skip
        return SearchSpace.union([data_tiled, tiled, default], ["data-tiled", "tiled", "default"])

    # ---- compile ------------------------------------------------------------------------------
    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        from uhop.mlir import build

        config = pass_config(candidate)
        built = build(problem.op, problem.dim, problem.dtype, problem.param, problem.arity, config)
        module = _load(built.vmfb)
        return _wrap(problem, module, built.emitted.input_shapes, built.emitted.output_shape)


def pass_config(candidate: Candidate) -> Any:
    """The :class:`~uhop.mlir.passes.PassConfig` a candidate stands for."""
    from uhop.mlir.passes import PassConfig

    cfg = candidate.cfg
    kw: dict[str, Any] = {
        "strategy": candidate.template,
        "fuse": bool(cfg.get("fuse", True)),
        "fuse_reductions": bool(cfg.get("fuse_reductions", False)),
        "vector_bytes": int(cfg.get("vector_bytes", 0)),
        "distribution": int(cfg.get("distribution", 0)),
        "tile_bytes": int(cfg.get("tile_bytes", 0)),
    }
    if candidate.template == "tiled":
        kw["tiles"] = (int(cfg["dist_m"]), int(cfg["dist_n"]))
        kw["vector_tiles"] = (int(cfg["vec_m"]), int(cfg["vec_n"]), int(cfg.get("vec_k", 1)))
    return PassConfig(**kw)


def _ceil(n: int, m: int) -> int:
    return math.ceil(n / m) * m


@functools.lru_cache(maxsize=64)
def _load_cached(digest: str, vmfb: bytes) -> Any:
    from uhop.mlir.runtime import IreeModule

    return IreeModule(vmfb)


def _load(vmfb: bytes) -> Any:
    return _load_cached(hashlib.sha256(vmfb).hexdigest(), vmfb)


def _wrap(problem: Problem, module: Any, in_shapes: tuple[tuple[int, ...], ...], out_shape: tuple[int, ...]) -> Kernel:
    """A kernel over the caller's shapes: inputs are reshaped (zero-copy when contiguous) to the
    module's canonical shapes and the output back to the op's output shape for those inputs."""
    spec = problem.spec
    params = problem.param
    dtype = np.dtype(problem.dtype)

    def kernel(*xs: np.ndarray) -> np.ndarray:
        shapes = [tuple(x.shape) for x in xs]
        args = [np.asarray(x, dtype=dtype).reshape(s) for x, s in zip(xs, in_shapes, strict=True)]
        out = module(*args)
        want = tuple(spec.output_shape(shapes, params))
        return out.reshape(want) if tuple(out.shape) != want else out

    return kernel
