"""UHOP's compiler decisions on an emitted module: fusion, tiling, vectorization.

Each decision is a real transformation or a real IREE setting, and each can be switched off:

* **fusion** (``fuse``): the upstream ``linalg-fuse-elementwise-ops`` pass merges elementwise
  producers into their consumers before IREE sees the module; IREE's dispatch formation then fuses
  what is left (matmul epilogues, reductions with their elementwise consumers). Switched off, an
  ``util.optimization_barrier`` is placed on every linalg result that feeds another linalg op, so
  every op becomes its own dispatch and intermediates round-trip through memory. ``fuse_reductions``
  also fuses chained reductions (softmax's max and sum, layernorm's mean and variance) with their
  consumers into one dispatch (IREE's aggressive dispatch fusion), so a row is read from memory
  once instead of once per reduction.
* **tiling** (``tile``): matmul ``tiled`` strategy attaches an IREE lowering configuration
  (``#iree_codegen.compilation_info``: distribution tiles for threads, vector tiles for registers,
  reduction tile) to the ``linalg.matmul``; the ``data-tiled`` strategy packs operands into
  register-tile layouts and runs IREE's mmt4d micro-kernels, with the distribution tile size
  (bytes) tunable; other ops take a distribution tile size. Default sizes come from the hardware
  manifest (cache sizes, SIMD width). Switched off, IREE's own heuristics choose every tile (the
  "untuned default pipeline").
* **vectorization** (``vectorize``): the vector width handed to IREE's CPU code generator
  (``--iree-llvmcpu-target-vector-width-in-bytes``), from the manifest's SIMD width; switched off,
  the width is one element, so every vector tile is 1 and the code is scalar.

The register-pressure guard lives in :mod:`uhop.mlir.compile` (LLVM regalloc remarks).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

from uhop.errors import InputError
from uhop.mlir.emit import Emitted

STRATEGIES = ("auto", "default", "tiled", "data-tiled")
_TRANSCENDENTAL = ("gelu", "gelu_tanh", "silu")


@dataclass(frozen=True)
class HostTarget:
    """What the passes need to know about the CPU (bytes)."""

    simd_bytes: int
    l1_bytes: int
    l2_bytes: int
    vector_registers: int
    source: str


@functools.lru_cache(maxsize=1)
def host_target() -> HostTarget:
    """From the hardware manifest (``uhop.hardware.get_capabilities(device="cpu")``: vector width,
    L1/L2 sizes) when available, else from the CPU's flags and sysfs cache sizes (AVX-512:
    64-byte vectors, 32 registers)."""
    try:
        from uhop.hardware import get_capabilities  # type: ignore[attr-defined]

        caps = get_capabilities(device="cpu")
        cpu, caches = getattr(caps, "cpu", None), getattr(caps, "caches", None)
        bits = _value(getattr(cpu, "vector_width_bits", None))
        l1, l2 = _value(getattr(caches, "l1_bytes", None)), _value(getattr(caches, "l2_bytes", None))
        if bits and l2:
            simd = int(bits) // 8
            regs = 32 if getattr(cpu, "simd", "") == "avx512" or simd >= 64 else 16
            return HostTarget(simd, int(l1 or 32 << 10), int(l2), regs, f"manifest {getattr(caps, 'name', '')}".strip())
    except Exception:  # manifest package absent or partial: fall back below
        pass
    flags = _cpu_flags()
    simd = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16
    return HostTarget(simd, _cache_size(1) or 32 << 10, _cache_size(2) or 1 << 20, 32 if simd == 64 else 16, "cpuinfo")


def _value(figure: Any) -> float | None:
    """A manifest figure's value (figures are ``{"value": ..., "source": ...}`` models)."""
    v = getattr(figure, "value", figure)
    return float(v) if isinstance(v, (int, float)) and v > 0 else None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        import cpuinfo  # py-cpuinfo

        return set(cpuinfo.get_cpu_info().get("flags", []))
    except Exception:
        return set()


def _cache_size(level: int) -> int | None:
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            with open(os.path.join(d, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(d, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(d, "size")) as f:
                s = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
            return int(s.rstrip("KM")) * mult
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class PassConfig:
    """The decisions for one compilation. Zero / empty means "derive from the manifest"."""

    tile: bool = True
    vectorize: bool = True
    fuse: bool = True
    #: also fuse chained reductions and their consumers into one dispatch
    fuse_reductions: bool = False
    #: matmul: "tiled" (UHOP lowering config), "data-tiled" (packed layouts + mmt4d ukernels),
    #: "default" (IREE heuristics); "auto" = data-tiled for matmul, default elsewhere
    strategy: str = "auto"
    #: matmul tiled: distribution tile (m, n) per thread
    tiles: tuple[int, ...] = ()
    #: matmul tiled: register tile (m, n, k)
    vector_tiles: tuple[int, ...] = ()
    #: vector width in bytes (0: the target's SIMD width)
    vector_bytes: int = 0
    #: data-tiled matmul: target distribution tile size in bytes (0: IREE's default)
    tile_bytes: int = 0
    #: other ops: distribution tile size along the outer parallel dim (0: IREE's default)
    distribution: int = 0
    #: register-pressure guard: most spills allowed in any loop (None: no guard)
    max_spills: int | None = 2

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for name in ("tiles", "vector_tiles"):
            v = getattr(self, name)
            if any((not isinstance(t, int)) or t < 1 for t in v):
                raise InputError(f"{name} must be positive integers, got {v!r}")
        if self.vector_tiles and len(self.vector_tiles) != 3:
            raise InputError(f"vector_tiles must be (m, n, k), got {self.vector_tiles!r}")
        if self.tiles and len(self.tiles) != 2:
            raise InputError(f"tiles must be (m, n), got {self.tiles!r}")


@dataclass
class Lowered:
    """The module after UHOP's passes, the compiler flags they chose, and the decisions taken."""

    text: str
    flags: list[str]
    decisions: dict[str, str] = field(default_factory=dict)
    config: PassConfig = field(default_factory=PassConfig)

    @property
    def max_spills(self) -> int | None:
        """The register-pressure guard applies where UHOP chose the register tile (``tiled``);
        elsewhere (IREE's heuristics, ukernels) spills are only reported in the log."""
        return self.config.max_spills if self.config.strategy == "tiled" else None


def resolve(emitted: Emitted, cfg: PassConfig, target: str = "llvm-cpu") -> PassConfig:
    """Fill the manifest-derived defaults of ``cfg`` for this problem."""
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "data-tiled" if emitted.op == "matmul" and cfg.tile else "default"
    if not cfg.tile:
        strategy = "default"
    if emitted.op == "matmul" and not cfg.vectorize:
        # Scalar matmuls go through UHOP's 1x1x1 register tile: mmt4d ukernels are vector code by
        # design, and IREE's own matmul heuristics produce oversized vectors for 1-lane targets.
        strategy = "tiled"
    if emitted.op != "matmul" and strategy in ("tiled", "data-tiled"):
        raise InputError(f"strategy {strategy!r} applies to matmul only, not {emitted.op}")
    if target != "llvm-cpu":
        return replace(cfg, strategy="default")
    hw = host_target()
    item = {"float32": 4, "float64": 8, "float16": 2}[emitted.dtype]
    vbytes = cfg.vector_bytes or hw.simd_bytes
    if not cfg.vectorize:
        vbytes = item
    out = replace(cfg, strategy=strategy, vector_bytes=vbytes)
    if strategy == "tiled":
        d = dict(emitted.dims)
        lanes = max(1, vbytes // item)
        vt = cfg.vector_tiles or (8, 2 * lanes, 1)  # 16 accumulators: half of AVX-512's registers
        if not cfg.vectorize:
            vt = (1, 1, 1)
        tiles = cfg.tiles or _distribution_tiles(d["B"] * d["M"], d["N"], d["K"], item, hw.l2_bytes, vt)
        if not cfg.tile:
            tiles = cfg.tiles or (64, 64)
        out = replace(out, vector_tiles=tuple(vt), tiles=tuple(tiles))
    return out


def _distribution_tiles(M: int, N: int, K: int, item: int, l2: int, vt: tuple[int, ...]) -> tuple[int, int]:
    """Largest square power-of-two (m, n) tile whose A and B panels (m*K + K*n elements) fill at
    most half of L2, clamped to [32, 256] and to the matrix, in multiples of the register tile."""
    t = 256
    while t > 32 and 2 * t * K * item > l2 // 2:
        t //= 2

    def fit(size: int, v: int) -> int:
        return max(v, min(t, math.ceil(size / v) * v) // v * v)

    return fit(M, vt[0]), fit(N, vt[1])


def run_passes(emitted: Emitted, cfg: PassConfig | None = None, target: str = "llvm-cpu") -> Lowered:
    """Apply fusion and tiling to ``emitted`` and choose the flags for ``target``."""
    from iree.compiler import ir, passmanager

    cfg = resolve(emitted, cfg or PassConfig(), target)
    decisions: dict[str, str] = {}
    flags: list[str] = []
    with ir.Context():
        module = ir.Module.parse(emitted.text)
        before = _count_linalg(module)
        if cfg.fuse:
            pm = passmanager.PassManager.parse("builtin.module(func.func(linalg-fuse-elementwise-ops),canonicalize,cse)")
            pm.run(module.operation)
            after = _count_linalg(module)
            decisions["fusion"] = (
                f"on: linalg-fuse-elementwise-ops merged {before - after} elementwise producer(s) into consumers "
                f"({before} -> {after} linalg ops); IREE fuses epilogues and reductions into dispatches"
            )
            if cfg.fuse_reductions:
                flags.append("--iree-dispatch-creation-enable-aggressive-fusion")
                decisions["fusion"] += "; chained reductions fused into one dispatch"
            if cfg.strategy == "tiled" and dict(emitted.params).get("activation") in _TRANSCENDENTAL:
                # Fused into the register tile, gelu/silu polynomials need more registers than
                # the accumulators leave: the epilogue gets its own dispatch instead.
                _insert_barriers(module, only=("linalg.matmul",))
                decisions["fusion"] += "; transcendental epilogue kept out of the tiled matmul dispatch"
        else:
            passmanager.PassManager.parse("builtin.module(canonicalize,cse)").run(module.operation)
            n = _insert_barriers(module)
            decisions["fusion"] = f"off: {n} optimization barrier(s), one dispatch per linalg op"
        decisions["strategy"] = cfg.strategy
        if target == "llvm-cpu":
            decisions["tiling"] = _tiling(module, emitted, cfg, flags)
            flags.append(f"--iree-llvmcpu-target-vector-width-in-bytes={cfg.vector_bytes}")
            item = {"float32": 4, "float64": 8, "float16": 2}[emitted.dtype]
            lanes = cfg.vector_bytes // item
            decisions["vectorization"] = (
                f"{'on' if cfg.vectorize and lanes > 1 else 'off'}: {cfg.vector_bytes}-byte vectors "
                f"({lanes} x {emitted.dtype})"
            )
        else:
            decisions["tiling"] = f"IREE's {target} heuristics (UHOP tunes llvm-cpu only)"
        text = str(module)
    return Lowered(text, flags, decisions, cfg)


def _count_linalg(module: Any) -> int:
    n = 0
    for op in _walk(module.operation):
        name = op.name
        if name.startswith("linalg.") and name not in ("linalg.fill", "linalg.yield", "linalg.index"):
            n += 1
    return n


def _walk(op: Any):
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                yield child.operation
                yield from _walk(child.operation)


def _insert_barriers(module: Any, only: tuple[str, ...] = ()) -> int:
    """An optimization barrier on each linalg result consumed by another linalg op (IREE never
    fuses across one), so every linalg op forms its own dispatch."""
    from iree.compiler import ir
    from iree.compiler.dialects import util

    count = 0
    for op in list(_walk(module.operation)):
        if not op.name.startswith("linalg.") or op.name in ("linalg.fill", "linalg.yield", "linalg.index"):
            continue
        if only and op.name not in only:
            continue
        for res in op.results:
            users = [u.owner for u in res.uses]
            if not any(getattr(u, "name", "").startswith("linalg.") for u in users):
                continue
            with ir.InsertionPoint.after(op), op.location:
                barrier = util.OptimizationBarrierOp([res.type], [res])
            res.replace_all_uses_except(barrier.results[0], barrier.operation)
            count += 1
    return count


def _tiling(module: Any, emitted: Emitted, cfg: PassConfig, flags: list[str]) -> str:
    from iree.compiler import ir

    if cfg.strategy == "data-tiled":
        flags += ["--iree-opt-data-tiling", "--iree-llvmcpu-enable-ukernels=all"]
        if cfg.tile_bytes:
            flags.append(f"--iree-llvmcpu-matmul-tile-bytes={cfg.tile_bytes}")
        size = f"{cfg.tile_bytes} bytes" if cfg.tile_bytes else "IREE's default size"
        return f"data-tiled: packed register-tile layouts, mmt4d ukernels, distribution tiles of {size}"
    if cfg.strategy == "tiled":
        (dm, dn), (vm, vn, vk) = cfg.tiles, cfg.vector_tiles
        pipeline = "DoubleTilingExpert"
        attr = ir.Attribute.parse(
            "#iree_codegen.compilation_info<lowering_config = #iree_cpu.lowering_config<"
            f"distribution = [{dm}, {dn}, 0], vector_common_parallel = [{vm}, {vn}, 0], "
            f"vector_reduction = [0, 0, {vk}]>, translation_info = #iree_codegen.translation_info<"
            f"pipeline = #iree_cpu.pipeline<{pipeline}>>>"
        )
        n = 0
        for op in _walk(module.operation):
            if op.name == "linalg.matmul":
                op.attributes["compilation_info"] = attr
                n += 1
        return f"tiled: distribution {dm}x{dn} per thread, register tile {vm}x{vn}x{vk} (m x n x k) on {n} matmul(s)"
    if cfg.tile and cfg.distribution:
        flags.append(f"--iree-llvmcpu-distribution-size={cfg.distribution}")
        return f"distribution tile {cfg.distribution}; IREE's heuristics for vector tiles"
    return "IREE's heuristics (no UHOP tile sizes)"
