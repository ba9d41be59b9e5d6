"""``uhop mlir compile`` end to end (in-process through typer's runner)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from uhop.cli import build_app

runner = CliRunner()
app = build_app()


def run(*args, code=0):
    res = runner.invoke(app, list(args))
    assert res.exit_code == code, res.output + (str(res.exception) if res.exception else "")
    return res.output


def test_compile_writes_modules_artifact_and_log(tmp_path):
    out = run("mlir", "compile", "matmul", "--shape", "64x48x32", "--target", "llvm-cpu", "--out", str(tmp_path),
              "--strategy", "tiled", "--tiles", "32x48", "--vector-tiles", "4x16x1", "-p", "activation=relu",
              "--arity", "3")  # fmt: skip
    assert "distribution 32x48" in out and "register tile 4x16x1" in out
    assert (tmp_path / "matmul.mlir").read_text().count("linalg.matmul") == 1
    assert "compilation_info" in (tmp_path / "matmul.passes.mlir").read_text()
    assert (tmp_path / "matmul.llvm-cpu.vmfb").stat().st_size > 1000
    assert list((tmp_path / "configured").glob("*.mlir"))
    log = json.loads((tmp_path / "compile.json").read_text())
    assert log["decisions"]["tiling"].startswith("tiled") and log["dispatches"]
    assert "vectorization" in (tmp_path / "compile.log").read_text()


def test_toggles_are_reported(tmp_path):
    out = run("mlir", "compile", "elementwise", "--shape", "1000", "-p", "expr=exp(x0)*x0+1", "--out", str(tmp_path),
              "--no-tile", "--no-vectorize", "--no-fuse")  # fmt: skip
    assert "fusion: off" in out and "vectorization: off" in out and "IREE's heuristics" in out


def test_bad_arguments_are_named(tmp_path):
    assert "--target must be one of" in run("mlir", "compile", "softmax", "--shape", "4x8", "--target", "tpu", code=2)
    assert "--vector-tiles must be 3" in run("mlir", "compile", "matmul", "--shape", "8x8x8", "--vector-tiles", "8x8",
                                             "--out", str(tmp_path), code=2)  # fmt: skip
    assert "shape" in run("mlir", "compile", "softmax", "--shape", "axb", code=2)


def test_emit_and_targets():
    assert "linalg.generic" in run("mlir", "emit", "softmax", "--shape", "4x8")
    assert "cross-compile only" in run("mlir", "targets")
