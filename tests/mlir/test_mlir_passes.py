"""UHOP's passes (fusion, tiling, vectorization), the compilation log and the register-pressure
guard, on small modules (each compile takes about a second)."""

from __future__ import annotations

import pytest

from uhop.errors import InputError
from uhop.mlir import build
from uhop.mlir.compile import CompileError, SpillError, _loop_spills, compile_module
from uhop.mlir.emit import emit
from uhop.mlir.passes import PassConfig, host_target, run_passes

CHAIN = ("elementwise", {"N": 256}, "float32", {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"}, None)


def test_fusion_merges_elementwise_chain_into_one_generic():
    lowered = run_passes(emit(*CHAIN), PassConfig())
    assert lowered.text.count("linalg.generic") == 1
    assert "4 elementwise producer(s)" in lowered.decisions["fusion"]


def test_no_fuse_gives_one_dispatch_per_op():
    built = build(*CHAIN, config=PassConfig(fuse=False))
    assert built.lowered.text.count("util.optimization_barrier") == 4
    assert len(built.log.dispatches) == 5
    assert all(d["linalg_ops"] == 1 for d in built.log.dispatches)
    fused = build(*CHAIN, config=PassConfig(fuse=True))
    assert len(fused.log.dispatches) == 1


def test_vector_width_from_target_and_no_vectorize_is_scalar():
    on = run_passes(emit(*CHAIN), PassConfig())
    assert f"--iree-llvmcpu-target-vector-width-in-bytes={host_target().simd_bytes}" in on.flags
    off = build(*CHAIN, config=PassConfig(vectorize=False))
    assert "--iree-llvmcpu-target-vector-width-in-bytes=4" in off.lowered.flags
    assert off.log.decisions["vectorization"].startswith("off")
    assert "vector_common_parallel = [1]" in " ".join(off.log.dispatches[0]["lowering_configs"])


def test_tiled_matmul_carries_lowering_config_into_the_dispatch():
    lanes = host_target().simd_bytes // 4  # 4 x 2 vectors: 8 accumulators, half of AVX2's 16 registers
    cfg = PassConfig(strategy="tiled", tiles=(32, 64), vector_tiles=(4, 2 * lanes, 1))
    built = build("matmul", {"M": 64, "N": 64, "K": 32}, "float32", {}, 2, config=cfg)
    assert "compilation_info" in built.lowered.text
    log = built.log
    assert "distribution 32x64" in log.decisions["tiling"] and f"register tile 4x{2 * lanes}x1" in log.decisions["tiling"]
    configs = " ".join(c for d in log.dispatches for c in d["lowering_configs"])
    assert "distribution = [32, 64, 0]" in configs and f"vector_common_parallel = [4, {2 * lanes}, 0]" in configs
    assert "tiled" in log.summary() and "register pressure" in log.summary()


def test_data_tiled_and_no_tile_flags():
    e = emit("matmul", {"M": 64, "N": 64, "K": 32}, "float32", {}, 2)
    dt = run_passes(e, PassConfig(strategy="data-tiled", tile_bytes=65536))
    assert "--iree-opt-data-tiling" in dt.flags and "--iree-llvmcpu-matmul-tile-bytes=65536" in dt.flags
    off = run_passes(e, PassConfig(tile=False))
    assert off.config.strategy == "default" and not any("data-tiling" in f for f in off.flags)
    assert "compilation_info" not in off.text


def test_register_pressure_guard_rejects_spilling_tiles_with_advice():
    # 16 x 64 float32 accumulators = 64 AVX-512 registers (or 128 AVX2 ones): must spill.
    cfg = PassConfig(strategy="tiled", tiles=(64, 64), vector_tiles=(16, 64, 1))
    with pytest.raises(SpillError, match="smaller vector tiles"):
        build("matmul", {"M": 64, "N": 64, "K": 64}, "float32", {}, 2, config=cfg)


def test_loop_spill_parsing_takes_the_largest_loop_report():
    stderr = (
        "remark: -:5:3: 38 spills 1.2e+06 total spills cost 38 reloads 1.2e+06 total reloads cost generated in loop\n"
        "remark: -:5:3: 84 spills 1.3e+06 total spills cost 102 reloads 1.3e+06 total reloads cost generated in loop\n"
        "remark: -:1:1: 263 spills 3.5e+06 total spills cost generated in function\n"
        "remark: <unknown>:0:0: 1 virtual registers copies 5.0e+00 total copies cost generated in loop\n"
    )
    assert _loop_spills(stderr) == (84, 102)
    assert _loop_spills("") == (0, 0)


def test_bad_configs_are_named():
    with pytest.raises(InputError, match="strategy must be one of"):
        PassConfig(strategy="fastest")
    with pytest.raises(InputError, match="vector_tiles"):
        PassConfig(vector_tiles=(8, 0, 1))
    with pytest.raises(InputError, match="matmul only"):
        run_passes(emit("softmax", {"R": 4, "N": 8}), PassConfig(strategy="tiled"))
    with pytest.raises(InputError, match="target must be one of"):
        compile_module("module {}", target="tpu")


def test_compile_error_is_contained():
    with pytest.raises(CompileError, match="iree-compile failed"):
        compile_module("func.func @main( {", "llvm-cpu")


@pytest.mark.parametrize(
    "target, marks",
    [
        ("cuda", (b"cuda-nvptx-fb", b"sm_89")),
        ("vulkan-spirv", (b"vulkan-spirv-fb",)),
        ("metal-spirv", (b"metal-msl-fb",)),
        ("rocm", (b"rocm-hsaco-fb", b"gfx942")),
    ],
)
def test_cross_compiles_offline(target, marks):
    built = build("softmax", {"R": 16, "N": 64}, "float32", target=target)
    assert built.vmfb[:2] == b"PK" and b"module.fb" in built.vmfb[:64]  # IREE's vmfb container
    for mark in marks:
        assert mark in built.vmfb, f"{target} artifact lacks {mark!r}"
    assert built.log.target == target and built.log.dispatches


def test_host_target_from_manifest_or_cpu_flags(monkeypatch):
    import uhop.hardware

    host_target.cache_clear()
    try:
        hw = host_target()
        assert hw.simd_bytes in (16, 32, 64) and hw.l2_bytes > 0 and hw.vector_registers in (16, 32)

        def missing(*a, **k):
            raise RuntimeError("no manifest")

        monkeypatch.setattr(uhop.hardware, "get_capabilities", missing, raising=False)
        host_target.cache_clear()
        fallback = host_target()
        assert fallback.source == "cpuinfo" and fallback.simd_bytes == hw.simd_bytes
    finally:
        host_target.cache_clear()
