"""Hardware manifests: schema validation, lookup, detection on this machine, GPU matching on real
device names, measured-over-datasheet precedence, constraint pruning and the ``uhop hw`` CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import uhop.hardware as hw
from uhop import config
from uhop.cli.hw import app
from uhop.hardware import (
    ManifestError,
    get_capabilities,
    load_manifest,
    lookup,
    manifests,
    normalize_dtype,
    probe,
)
from uhop.hardware.constraints import fits, prune, shared_mem_limit, triton_matmul_smem, triton_threads
from uhop.hardware.detect import DeviceInfo, match_cpu, match_gpu, parse_proc_cpuinfo, resolve
from uhop.hardware.schema import Figure, Measured

SHIPPED = sorted((Path(hw.__file__).parent / "manifests").glob("*.json"))
runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def _out(res) -> str:
    return res.output  # click >= 8.2 mixes stderr into output, as a terminal shows it


# -- shipped manifests ------------------------------------------------------------------------
def test_ships_the_families_the_issue_lists():
    assert {
        "a100-sxm", "l40s", "rtx-4090", "h100-sxm", "h200", "b200", "mi250x", "mi300x", "rx-7900-xtx",
        "max-1550", "apple-m", "x86-64-avx2", "x86-64-avx512", "arm64", "generic",
    } <= set(manifests())  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_manifest_validates(path):
    m = load_manifest(path)
    assert m.name == path.stem
    # shipped figures are datasheet figures; reported/measured only appear at run time
    for fig in _all_figures(m):
        assert fig.source == "datasheet"
    if m.kind == "gpu":
        assert m.gpu is not None and m.cpu is None
        assert m.gpu.max_threads_per_block.value % m.gpu.warp_size.value == 0
    if m.peak_flops("bf16") and m.peak_flops("fp32"):
        assert m.peak_flops("bf16") >= m.peak_flops("fp32")


def _all_figures(obj):
    if isinstance(obj, Figure | hw.IntFigure):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _all_figures(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_figures(v)
    elif hasattr(type(obj), "model_fields"):
        for k in type(obj).model_fields:
            yield from _all_figures(getattr(obj, k))


def test_h100_sxm_datasheet_figures():
    h = lookup("h100")
    g = h.gpu
    assert (h.name, h.arch, h.compute_units.value) == ("h100-sxm", "sm_90", 132)
    assert g.shared_mem_per_sm.value == 228 * 1024
    assert g.max_shared_mem_per_block_optin.value == 232448
    assert (g.registers_per_sm.value, g.max_registers_per_thread.value) == (65536, 255)
    assert (g.max_threads_per_block.value, g.warp_size.value) == (1024, 32)
    assert h.caches.l2_bytes.value == 50 * 1024**2
    assert h.peak_bandwidth() == pytest.approx(3.35e12)
    assert h.peak_flops("bf16") == pytest.approx(989e12, rel=0.01)
    assert h.peak_flops("fp32") == pytest.approx(67e12, rel=0.01)
    assert h.peak_flops("tf32") == pytest.approx(494e12, rel=0.01)
    assert h.peak_flops("fp8") == pytest.approx(1979e12, rel=0.01)
    assert g.tma and g.async_copy and any(e.kind == "wgmma" for e in h.tensor_engines)


# -- broken manifests -------------------------------------------------------------------------
def _h100() -> dict:
    return json.loads((Path(hw.__file__).parent / "manifests" / "h100-sxm.json").read_text())


BROKEN = [
    ("missing gpu.warp_size", lambda d: d["gpu"].pop("warp_size"), "gpu.warp_size"),
    ("missing arch", lambda d: d.pop("arch"), "arch"),
    ("string count", lambda d: d.update(compute_units="132"), "compute_units"),
    ("fractional int", lambda d: d["gpu"].update(max_threads_per_block=1024.5), "gpu.max_threads_per_block"),
    ("bool figure", lambda d: d["gpu"].update(registers_per_sm=True), "gpu.registers_per_sm"),
    ("negative bandwidth", lambda d: d["memory"].update(bandwidth_bytes_per_s=-3.35e12), "memory.bandwidth_bytes_per_s"),
    ("negative flops", lambda d: d["flops"].update(bf16={"value": -1.0}), "flops.bf16"),
    ("zero smem", lambda d: d["gpu"].update(shared_mem_per_sm=0), "gpu.shared_mem_per_sm"),
    ("mistyped bool", lambda d: d["gpu"].update(tma="yes"), "gpu.tma"),
    ("misspelled key", lambda d: d.update(sm_count=132), "sm_count"),
    ("unknown dtype", lambda d: d["flops"].update(fp128=1e12), "flops.fp128"),
    ("unknown source", lambda d: d["memory"]["size_bytes"].update(source="guess"), "memory.size_bytes.source"),
    ("bad mma shape", lambda d: d["tensor_engines"][0].update(mma_shapes=["64x64"]), "tensor_engines.0.mma_shapes.0"),
    ("bad vendor", lambda d: d.update(vendor="NVIDIA Corp"), "vendor"),
]


@pytest.mark.parametrize("label, mutate, field", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_manifest_fails_naming_the_field(tmp_path, label, mutate, field):
    d = _h100()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ManifestError) as ei:
        load_manifest(p)
    assert any(f == field or f.startswith(field + ".") for f in ei.value.fields), ei.value.fields
    assert f"'{field}" in str(ei.value)
    res = runner.invoke(app, ["validate", str(p)], env=WIDE)
    assert res.exit_code == 1
    assert field in _out(res)


def test_section_rules_and_non_json(tmp_path):
    d = _h100()
    d.pop("gpu")
    with pytest.raises(ManifestError, match="needs a 'gpu' section"):
        hw.parse_manifest(d)
    d = _h100()
    d["gpu"]["max_shared_mem_per_block_optin"] = 1024
    with pytest.raises(ManifestError, match="optin is below"):
        hw.parse_manifest(d)
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ManifestError, match="not JSON"):
        load_manifest(p)
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.json")


# -- lookup and dtypes ------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("h100", "h100-sxm"), ("H100-SXM", "h100-sxm"), ("h100 sxm", "h100-sxm"), ("NVIDIA H100", "h100-sxm"),
    ("MI300X", "mi300x"), ("pvc", "max-1550"), ("rdna3", "rx-7900-xtx"), ("B200", "b200"), ("generic", "generic"),
])  # fmt: skip
def test_lookup_is_case_insensitive_and_knows_aliases(name, expected):
    assert get_capabilities(name).name == expected


def test_lookup_returns_a_copy():
    a = lookup("h100")
    a.flops.pop("bf16")
    assert lookup("h100").peak_flops("bf16") == pytest.approx(989.4e12)


def test_unknown_name_lists_known_names():
    with pytest.raises(ManifestError) as ei:
        get_capabilities("h1000")
    msg = str(ei.value)
    assert "'h1000'" in msg and "h100-sxm" in msg and "mi300x" in msg and "name:" in msg
    with pytest.raises(ValueError, match="not both"):
        get_capabilities("h100", device="cpu")


def test_dtype_names():
    assert normalize_dtype("bfloat16") == "bf16"
    assert normalize_dtype(np.float32) == "fp32"
    assert normalize_dtype(np.dtype("float64")) == "fp64"
    assert normalize_dtype("torch.float16") == "fp16"
    assert normalize_dtype("float8_e4m3fn") == "fp8"
    with pytest.raises(ValueError, match="dtype"):
        normalize_dtype("complex64")
    h = lookup("a100")
    assert h.peak_flops("fp8") is None  # Ampere has no FP8
    assert h.peak_flops(np.float16) == pytest.approx(312e12)


# -- detection --------------------------------------------------------------------------------
def _proc_flags() -> frozenset[str]:
    return parse_proc_cpuinfo(Path("/proc/cpuinfo").read_text())["flags"]


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_detects_this_cpu():
    info = parse_proc_cpuinfo(Path("/proc/cpuinfo").read_text())
    flags = info["flags"]
    expected = ("x86-64-avx512" if "avx512f" in flags else "x86-64-avx2" if "avx2" in flags
                else "arm64" if os.uname().machine == "aarch64" else "generic")  # fmt: skip
    caps = get_capabilities(device="cpu")
    assert caps.name == expected
    assert caps.kind == "cpu" and caps.detection.level in ("exact", "generic")
    assert caps.compute_units.source == "reported"
    assert caps.compute_units.value == (info["physical"] or os.cpu_count())
    assert caps.memory.size_bytes.value > 2**30
    if "avx512f" in flags:  # this CI machine: Intel Xeon with AVX-512, 2 cores
        assert caps.cpu.simd == "avx512" and caps.cpu.vector_width_bits.value == 512
        assert "avx512f" in caps.cpu.extensions
    if caps.peak_flops("fp64") and caps.peak_flops_figure("fp64").source == "derived":
        assert caps.peak_flops("fp32") == pytest.approx(2 * caps.peak_flops("fp64"))


def test_default_device_without_gpu_is_the_cpu():
    if hw.detect.gpu_devices():
        pytest.skip("this machine has a GPU")
    assert get_capabilities().kind == "cpu"
    with pytest.raises(ValueError, match="device: no GPU"):
        get_capabilities(device="cuda:0")
    with pytest.raises(ValueError, match="device: expected"):
        get_capabilities(device="tpu")


ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp sve sve2 i8mm bf16
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd4f

processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp sve sve2 i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd4f
"""


def test_arm_cpuinfo_matches_arm64_with_sve2():
    p = parse_proc_cpuinfo(ARM_CPUINFO)
    assert p["vendor"] == "arm" and p["logical"] == 2 and "sve2" in p["flags"]
    info = DeviceInfo(kind="cpu", name=p["name"], api="/proc/cpuinfo", arch="aarch64", vendor=p["vendor"],
                      flags=p["flags"], reported={"compute_units": 2, "cpu.simd": "sve2"})  # fmt: skip
    assert match_cpu(info) == ("arm64", "exact")
    caps = resolve(info, manifests())
    assert caps.name == "arm64" and caps.cpu.simd == "sve2" and caps.vendor == "arm"


def test_unknown_cpu_falls_back_to_generic():
    info = DeviceInfo(kind="cpu", name="SiFive U74", api="/proc/cpuinfo", arch="riscv64")
    caps = resolve(info, manifests())
    assert caps.name == "generic" and caps.kind == "cpu" and caps.gpu is None
    assert caps.detection.level == "generic" and "SiFive U74" in caps.detection.notes[0]


# names and architectures as torch.cuda / ROCm / Level Zero report them
GPU_NAMES = [
    ("NVIDIA H100 80GB HBM3", "sm_90", "h100-sxm", "exact"),
    ("NVIDIA H100 PCIe", "sm_90", "h100-sxm", "arch"),
    ("NVIDIA H200", "sm_90", "h200", "exact"),
    ("NVIDIA H200 NVL", "sm_90", "h100-sxm", "arch"),
    ("NVIDIA A100-SXM4-80GB", "sm_80", "a100-sxm", "exact"),
    ("NVIDIA A100-PCIE-40GB", "sm_80", "a100-sxm", "arch"),
    ("NVIDIA L40S", "sm_89", "l40s", "exact"),
    ("NVIDIA GeForce RTX 4090", "sm_89", "rtx-4090", "exact"),
    ("NVIDIA B200", "sm_100", "b200", "exact"),
    ("AMD Instinct MI300X", "gfx942", "mi300x", "exact"),
    ("AMD Instinct MI250X", "gfx90a", "mi250x", "exact"),
    ("AMD Instinct MI210", "gfx90a", "mi250x", "arch"),
    ("AMD Radeon RX 7900 XTX", "gfx1100", "rx-7900-xtx", "exact"),
    ("Intel(R) Data Center GPU Max 1550", None, "max-1550", "exact"),
    ("Apple M2 Pro", "apple7+", "apple-m", "exact"),
    ("Tesla T4", "sm_75", None, "generic"),
]


@pytest.mark.parametrize("name, arch, expected, level", GPU_NAMES, ids=[g[0] for g in GPU_NAMES])
def test_gpu_name_matching(name, arch, expected, level):
    m, got = match_gpu(name, arch, manifests().values())
    assert (m.name if m else None, got) == (expected, level)


# torch.cuda.get_device_properties(0) on the H100 SXM this project was tested on
H100_REPORTED = {
    "compute_units": 132, "memory.size_bytes": 85017493504, "caches.l2_bytes": 52428800, "gpu.warp_size": 32,
    "gpu.registers_per_sm": 65536, "gpu.max_threads_per_sm": 2048, "gpu.max_threads_per_block": 1024,
    "gpu.max_shared_mem_per_block": 49152, "gpu.max_shared_mem_per_block_optin": 232448,
    "gpu.shared_mem_per_sm": 233472, "clocks.boost_hz": 1.98e9, "~memory.bandwidth_bytes_per_s": 3.352e12,
}  # fmt: skip


def test_reported_figures_override_datasheet():
    info = DeviceInfo(kind="gpu", name="NVIDIA H100 80GB HBM3", api="torch.cuda", arch="sm_90", reported=H100_REPORTED)
    caps = resolve(info, manifests())
    assert caps.name == "h100-sxm" and caps.detection.level == "exact"
    assert caps.memory.size_bytes.value == 85017493504 and caps.memory.size_bytes.source == "reported"
    assert caps.gpu.max_shared_mem_per_block_optin.source == "reported"
    # the datasheet bandwidth stays: a derived figure only fills a gap
    assert caps.memory.bandwidth_bytes_per_s.source == "datasheet"
    assert caps.peak_flops("bf16") == pytest.approx(989.4e12)


def test_arch_match_drops_sku_figures_keeps_limits():
    rep = {**H100_REPORTED, "compute_units": 114, "memory.size_bytes": 85_000_000_000}
    info = DeviceInfo(kind="gpu", name="NVIDIA H100 PCIe", api="torch.cuda", arch="sm_90", reported=rep)
    caps = resolve(info, manifests())
    assert caps.detection.level == "arch" and "H100 PCIe" in caps.detection.notes[0]
    assert caps.compute_units.value == 114
    assert caps.peak_flops("bf16") is None  # SXM peaks would overstate a PCIe card
    assert caps.memory.bandwidth_bytes_per_s.source == "derived"
    assert not fits(caps, shared_mem_bytes=262144)[0]


def test_unknown_gpu_gets_generic_limits_with_note():
    info = DeviceInfo(kind="gpu", name="Tesla T4", api="torch.cuda", arch="sm_75", vendor="nvidia",
                      reported={"compute_units": 40, "gpu.max_shared_mem_per_block_optin": 65536,
                                "gpu.registers_per_sm": 0})  # fmt: skip
    caps = resolve(info, manifests())
    assert caps.kind == "gpu" and caps.cpu is None and caps.vendor == "nvidia" and caps.arch == "sm_75"
    assert caps.detection.level == "generic" and "Tesla T4" in caps.detection.notes[0]
    assert shared_mem_limit(caps) == 65536
    assert fits(caps, shared_mem_bytes=65536)[0] and not fits(caps, shared_mem_bytes=65537)[0]


# -- measured figures -------------------------------------------------------------------------
def test_probe_measures_and_measured_beats_datasheet(tmp_path):
    with config.override(home=tmp_path):
        before = get_capabilities(device="cpu")
        assert before.measured is None
        measured, info = probe.probe("cpu", size_bytes=4 * 2**20, matmul_n=64, min_time_s=0.01)
        path = probe.save(measured, info)
        assert path.parent == tmp_path / "hardware"
        caps = get_capabilities(device="cpu")
        assert caps.peak_bandwidth() == measured.bandwidth_bytes_per_s.value > 0
        assert caps.peak_flops("float64") == measured.flops["fp64"].value > 0
        assert caps.peak_flops_figure("fp32").source == "measured"
        path.write_text("{corrupt")  # a broken store file never breaks lookups
        assert get_capabilities(device="cpu").measured is None


def test_measured_precedence_on_a_datasheet_manifest():
    h = lookup("h100")
    m = Measured(device="NVIDIA H100 80GB HBM3", manifest="h100-sxm", host="x", when="2026-11-25T00:00:00+00:00",
                 method="torch.mm", bandwidth_bytes_per_s=Figure(value=3.0e12, source="measured"),
                 flops={"bf16": Figure(value=7.15e14, source="measured")})  # fmt: skip
    hm = h.model_copy(update={"measured": m})
    assert hm.peak_flops("bf16") == 7.15e14 and hm.peak_bandwidth() == 3.0e12
    assert hm.peak_flops("fp32") == h.peak_flops("fp32")  # not measured: datasheet
    with pytest.raises(ValueError, match="source 'measured'"):
        Measured(device="x", manifest="x", host="x", when="x", method="x", flops={"bf16": Figure(value=1.0)})


# -- constraints ------------------------------------------------------------------------------
@pytest.mark.parametrize("bm, bn, bk, stages", [(256, 256, 64, 4), (128, 128, 128, 4), (128, 128, 64, 8)])
def test_h100_rules_out_the_max_autotune_config(bm, bn, bk, stages):
    # torch.compile max-autotune, 8192x4096x4096 bf16 on an H100: Triton failed with
    # "out of resource: shared memory, Required: 262144, Hardware limit: 232448"
    h = lookup("h100")
    smem = triton_matmul_smem(bm, bn, bk, stages, 2)
    assert smem == 262144
    ok, why = fits(h, shared_mem_bytes=smem, threads_per_block=triton_threads(h, 8))
    assert not ok
    assert why == "shared_mem_bytes=262144 exceeds gpu.max_shared_mem_per_block_optin=232448 (h100-sxm, datasheet)"
    assert fits(h, shared_mem_bytes=triton_matmul_smem(128, 256, 64, 3, 2))[0]  # 147456 bytes


def test_thread_and_register_limits():
    h, mi = lookup("h100"), lookup("mi300x")
    assert triton_threads(h, 32) == 1024 and fits(h, threads_per_block=1024)[0]
    ok, why = fits(h, threads_per_block=triton_threads(h, 64))
    assert not ok and "max_threads_per_block=1024" in why
    assert triton_threads(mi, 16) == 1024 and not fits(mi, threads_per_block=triton_threads(mi, 32))[0]
    assert fits(h, registers_per_thread=255)[0]
    assert "max_registers_per_thread=255" in fits(h, registers_per_thread=256)[1]
    ok, why = fits(h, registers_per_thread=128, threads_per_block=1024)
    assert not ok and "registers_per_sm=65536" in why
    assert fits(lookup("x86-64-avx512"), shared_mem_bytes=10**9, threads_per_block=10**6)[0]
    with pytest.raises(ValueError, match="shared_mem_bytes"):
        fits(h, shared_mem_bytes=-1)
    with pytest.raises(ValueError, match="num_stages"):
        triton_matmul_smem(128, 128, 64, 0, 2)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["h100", "a100", "l40s", "mi300x", "b200"]),
       *[st.sampled_from([16, 32, 64, 128, 256])] * 3, st.integers(1, 8), st.sampled_from([1, 2, 4]))  # fmt: skip
def test_fits_matches_the_shared_memory_limit(name, bm, bn, bk, stages, itemsize):
    caps = lookup(name)
    smem = triton_matmul_smem(bm, bn, bk, stages, itemsize)
    assert fits(caps, shared_mem_bytes=smem)[0] == (smem <= shared_mem_limit(caps))


def test_prune_splits_configs_with_reasons():
    h = lookup("h100")
    configs = [(128, 256, 64, 3), (256, 256, 64, 4), (64, 64, 32, 2)]
    kept, dropped = prune(configs, h, lambda c: {"shared_mem_bytes": triton_matmul_smem(*c, 2)})
    assert kept == [(128, 256, 64, 3), (64, 64, 32, 2)]
    assert dropped[0][0] == (256, 256, 64, 4) and "262144" in dropped[0][1]


# -- CLI --------------------------------------------------------------------------------------
def test_cli_list():
    res = runner.invoke(app, ["list"], env=WIDE)
    assert res.exit_code == 0, res.output
    for name in manifests():
        assert name in res.output
    assert "228 KiB" in res.output and "wgmma" in res.output and "3.35 TB/s" in res.output


def test_cli_show():
    res = runner.invoke(app, ["show", "H100"], env=WIDE)
    assert res.exit_code == 0 and "232,448" in res.output and "sm_90" in res.output
    res = runner.invoke(app, ["show", "mi300x", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["arch"] == "gfx942"
    res = runner.invoke(app, ["show", "--device", "cpu"], env=WIDE)
    assert res.exit_code == 0 and "detected:" in res.output and "reported" in res.output
    res = runner.invoke(app, ["show", "h1000"], env=WIDE)
    assert res.exit_code == 2 and "known names" in _out(res) and "h100-sxm" in _out(res)


def test_cli_validate_ok(tmp_path):
    res = runner.invoke(app, ["validate", str(SHIPPED[0])])
    assert res.exit_code == 0 and "valid manifest" in res.output


def test_cli_probe(tmp_path):
    with config.override(home=tmp_path):
        res = runner.invoke(app, ["probe", "--device", "cpu", "--size-mb", "4", "--matmul-n", "64",
                                  "--min-time-s", "0.01", "--dtype", "float64"], env=WIDE)  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "saved:" in res.output and "measured" in res.output
        stored = list((tmp_path / "hardware").glob("cpu-*.json"))
        assert len(stored) == 1
        data = json.loads(stored[0].read_text())
        assert set(data["flops"]) == {"fp64"} and data["bandwidth_bytes_per_s"]["source"] == "measured"
        res = runner.invoke(app, ["probe", "--dtype", "complex64", "--device", "cpu"])
        assert res.exit_code == 2 and "dtype" in _out(res)
