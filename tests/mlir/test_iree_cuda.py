"""IREE's CUDA path: artifacts compiled here for sm_89 (IREE 3.13 refuses sm_90), the
device-resident runtime path, and ``benchmarks/iree_cuda_check.py`` end to end (compile for cuda;
run on the local CPU as a dry run; run on CUDA only where IREE's cuda driver finds a device)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from uhop.measure.validate import ValidationSet, compare
from uhop.mlir.compile import CompileError, compile_module, compiler_version
from uhop.mlir.emit import emit
from uhop.mlir.runtime import IreeModule, device_error
from uhop.problem import Problem

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "iree_cuda_check.py"
CASES = {"matmul_1024", "matmul_2048", "matmul_bias_gelu", "softmax", "layernorm", "elementwise"}


def script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.skipif(not compiler_version().startswith("3.13."), reason="the sm_90 refusal was recorded for IREE 3.13")
def test_iree_313_refuses_sm90_and_accepts_sm89():
    text = emit("elementwise", {"N": 8}, "float32", {"expr": "x0*x1"}).text
    with pytest.raises(CompileError, match=r"error: missing GPU target in #hal\.executable\.target"):
        compile_module(text, "cuda", ["--iree-cuda-target=sm_90"], use_cache=False)
    vmfb, log = compile_module(text, "cuda", use_cache=False)  # TARGETS["cuda"]: sm_89
    assert "--iree-cuda-target=sm_89" in log.flags
    assert b".target sm_89" in vmfb  # PTX, which the driver JIT-compiles for newer GPUs


@pytest.fixture(scope="module")
def cuda_artifacts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("iree_cuda")
    script("--compile", str(out), "--small")
    return out


def test_compile_for_cuda_writes_artifacts_and_manifest(cuda_artifacts):
    m = json.loads((cuda_artifacts / "manifest.json").read_text())
    assert m["target"] == "cuda" and m["iree_compiler"] == compiler_version() and not m["failed"]
    assert "--iree-cuda-target=sm_89" in m["target_flags"]
    probe = {p["arch"]: p for p in m["arch_probe"]}
    assert probe["sm_89"]["accepted"]
    if compiler_version().startswith("3.13."):
        assert not probe["sm_90"]["accepted"]
        assert probe["sm_90"]["error"] == "error: missing GPU target in #hal.executable.target"
    assert {a["name"] for a in m["artifacts"]} == CASES
    for a in m["artifacts"]:
        data = (cuda_artifacts / a["file"]).read_bytes()
        assert len(data) == a["bytes"] > 0 and hashlib.sha256(data).hexdigest() == a["sha256"]
        assert b".target sm_89" in data
        assert a["entry"] == "main" and a["dtype"] == "float32" and a["compile_s"] > 0
        assert "--iree-hal-target-device=cuda" in a["flags"] and a["dispatches"]
        spec_shapes = Problem.make(a["op"], a["dims"], "float32", a["params"], a["arity"]).spec.shapes_from_dims(
            a["dims"], a["params"], a["arity"]
        )
        assert [tuple(s) for s in a["input_shapes"]] == [tuple(s) for s in spec_shapes]


def test_device_resident_path_matches_float64_reference():
    """to_device once, invoke on device buffers, to_host for the check (local-task here; the same
    calls run on the cuda driver)."""
    problem = Problem.make("layernorm", {"R": 13, "N": 67}, "float32", {"eps": 1e-5}, 3)
    text = emit("layernorm", problem.dim, "float32", problem.param, 3).text
    vmfb, _ = compile_module(text, "llvm-cpu")
    module = IreeModule(vmfb, driver="local-task")
    assert module.synchronous, module.declaration
    vs = ValidationSet(problem, trials=2)
    for trial in vs.trials:
        views = [module.to_device(x) for x in trial.inputs]
        out = module.to_host(module.invoke(*views))
        module.sync()
        verdict = compare(out, trial.reference, problem)
        assert verdict.ok, verdict.reason
        assert not any(np.shares_memory(out, x) for x in trial.inputs)


def test_to_device_names_unsupported_dtype():
    text = emit("elementwise", {"N": 4}, "float32", {"expr": "x0"}).text
    module = IreeModule(compile_module(text, "llvm-cpu")[0])
    with pytest.raises(TypeError, match="x must be one of float32"):
        module.to_device(np.arange(4, dtype=np.int32))


def test_run_mode_dry_run_on_local_cpu(tmp_path):
    """The --run path the GPU run takes, on llvm-cpu artifacts and the local-task driver."""
    art, out = tmp_path / "cpu", tmp_path / "run.json"
    script("--compile", str(art), "--small", "--target", "llvm-cpu", "--only", "matmul_bias_gelu,softmax,elementwise")
    proc = script("--run", str(art), "--driver", "local-task", "--out", str(out), "--repeat", "20", "--rounds", "1",
                  "--min-time", "0.02")  # fmt: skip
    result = json.loads(out.read_text())
    assert result["iree_device_error"] is None and result["torch_device"] == "cpu"
    assert {r["name"] for r in result["rows"]} == {"matmul_bias_gelu", "softmax", "elementwise"}
    for r in result["rows"]:
        assert r["load_ok"] and r["ran"] and r["validated"] and r["torch_validated"], r["errors"]
        assert r["iree_ms"] > 0 and r["torch_ms"] > 0 and r["ratio"] == pytest.approx(r["iree_ms"] / r["torch_ms"])
    assert result["artifacts_on_device"]["validated"] == 3
    assert "ratio = iree ms / torch ms" in proc.stdout


def test_run_mode_records_a_missing_device_and_goes_on(tmp_path, cuda_artifacts):
    """With no usable device for the driver every row records the error; torch still runs."""
    if device_error("cuda") is None:
        pytest.skip("a CUDA device is reachable here: the missing-device path is not exercised")
    out = tmp_path / "run.json"
    script("--run", str(cuda_artifacts), "--driver", "cuda", "--out", str(out), "--only", "softmax", "--repeat", "20",
           "--rounds", "1", "--min-time", "0.02")  # fmt: skip
    row = json.loads(out.read_text())["rows"][0]
    assert not row["load_ok"] and row["errors"][0].startswith("device: ") and row["torch_ms"] > 0


def test_run_mode_on_cuda(tmp_path, cuda_artifacts):
    reason = device_error("cuda")
    if reason is not None:
        pytest.skip(f"no CUDA device through IREE's cuda driver: {reason}")
    out = tmp_path / "run.json"
    script("--run", str(cuda_artifacts), "--driver", "cuda", "--out", str(out), "--repeat", "20", "--rounds", "1",
           "--min-time", "0.02")  # fmt: skip
    for r in json.loads(out.read_text())["rows"]:
        assert r["load_ok"] and r["validated"], r["errors"]


def _loadable(name: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_loadable("libXi.so") or not _loadable("libXi.so.6"), reason="needs libXi.so.6 without libXi.so")
def test_unversioned_library_is_linked_and_script_reexecuted(tmp_path):
    """IREE's CUDA driver dlopens 'libcuda.so'; where only 'libcuda.so.1' exists the script links
    one and re-executes itself. Exercised on another library that ships only its versioned name."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import ctypes, importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('icc', {str(SCRIPT)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['icc'] = m; spec.loader.exec_module(m)\n"
        "print(m.ensure_dev_library('libXi.so', 'libXi.so.6'))\n"
        "ctypes.CDLL('libXi.so')\n"
    )
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("libXi.so linked to /") and "(LD_LIBRARY_PATH)" in proc.stdout
