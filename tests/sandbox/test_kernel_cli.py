"""``uhop kernel check/add/list/remove`` end to end (real sandbox)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from uhop.backends import user
from uhop.cli.kernel import app
from uhop.problem import Problem

HERE = Path(__file__).parent
runner = CliRunner()


def test_check_valid_prints_time():
    r = runner.invoke(app, ["check", str(HERE / "honest" / "softmax_numpy.py")])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("valid: softmax") and " us per call" in r.output


def test_check_rejected_is_one_line():
    r = runner.invoke(app, ["check", str(HERE / "hostile" / "half_write.py"), "--op", "matmul"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rejected: partial-write: ")


def test_check_json():
    r = runner.invoke(app, ["check", str(HERE / "hostile" / "wrong_dtype.py"), "--json"])
    assert r.exit_code == 1
    d = json.loads(r.output)
    assert d["ok"] is False and d["category"] == "bad-output" and len(d["sha256"]) == 64


def test_check_allow_import(tmp_path):
    f = tmp_path / "k.py"
    f.write_text("import numpy as np\nimport statistics\nOP = 'softmax'\n"
                 "def run(x):\n    e = np.exp(x - x.max(axis=-1, keepdims=True))\n"
                 "    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)\n")  # fmt: skip
    assert runner.invoke(app, ["check", str(f), "--no-time"]).exit_code == 1
    r = runner.invoke(app, ["check", str(f), "--no-time", "--allow-import", "statistics"])
    assert r.exit_code == 0, r.output


def test_bad_usage():
    assert runner.invoke(app, ["check", "/nonexistent/k.py"]).exit_code == 2
    r = runner.invoke(app, ["check", str(HERE / "honest" / "softmax_numpy.py"), "--op", "nope"])
    assert r.exit_code == 2 and "--op" in r.output


def test_add_list_candidates_remove(uhop_home):
    f = HERE / "honest" / "softmax_numpy.py"
    r = runner.invoke(app, ["add", str(f)])
    assert r.exit_code == 0, r.output
    stored = list((uhop_home / "kernels").glob("softmax-*.py"))
    assert len(stored) == 1 and stored[0].read_bytes() == f.read_bytes()
    assert runner.invoke(app, ["add", str(f)]).exit_code == 0  # idempotent
    assert len(list((uhop_home / "kernels").glob("*.py"))) == 1
    assert "softmax" in runner.invoke(app, ["list"]).output
    prob = Problem.make("softmax", {"R": 9, "N": 33}, "float32")
    b = user.UserKernelBackend()
    cands = b.candidates(prob)
    assert len(cands) == 1 and b.kernel_sha256(cands[0]) == user.sha256_of(f)
    kernel = b.compile(cands[0], prob)
    import numpy as np

    x = np.random.default_rng(0).standard_normal((9, 33)).astype(np.float32)
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(kernel(x), e / e.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)
    kernel.close()
    assert b.candidates(Problem.make("matmul", {"B": 1, "M": 2, "N": 3, "K": 4}, "float32")) == []
    sha = user.sha256_of(f)
    assert runner.invoke(app, ["remove", sha[:12]]).exit_code == 0
    assert b.candidates(prob) == []


def test_add_rejects_hostile(uhop_home):
    r = runner.invoke(app, ["add", str(HERE / "hostile" / "returns_nan.py")])
    assert r.exit_code == 1 and r.output.startswith("rejected: wrong-result")
    assert not list((uhop_home / "kernels").glob("*.py")) if (uhop_home / "kernels").exists() else True


def test_tampered_registry_file_is_ignored(uhop_home):
    f = HERE / "honest" / "softmax_numpy.py"
    dest = user.add_kernel(f)
    dest.write_text(f.read_text() + "\n# edited after registration\n")
    assert user.list_kernels("softmax") == []


def test_real_entry_point_exit_codes():
    """Through ``uhop``'s own entry point, in a fresh process (as a user runs it)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "import sys; from uhop.cli import main; sys.argv[0] = 'uhop'; main()", "kernel", "check"]
    ok = subprocess.run([*cmd, str(HERE / "honest" / "softmax_numpy.py")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("valid: softmax")
    bad = subprocess.run([*cmd, str(HERE / "hostile" / "segfault_numpy.py")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stdout.strip() == bad.stdout.strip().splitlines()[0]
    assert bad.stdout.startswith("rejected: crash: ")


def test_a_registered_kernel_is_evaluated_before_the_budget_runs_out(uhop_home):
    """``uhop kernel add``, then a budgeted tuning run of a problem it serves: the file is
    evaluated right after the baseline (the prior ranked it with numpy's eager chain, and a 10 s
    run of softmax 512 x 1000 recorded it "skipped (budget spent)")."""
    from uhop.tune.tuner import tune

    f = HERE / "honest" / "softmax_numpy.py"
    assert runner.invoke(app, ["add", str(f)]).exit_code == 0
    res = tune("softmax", {"R": 512, "N": 1000}, "float32", budget_s=2.0, force=True,
               backends=("numpy", "torch", "numba", "user"))
    (m,) = [m for m in res.measurements if m.candidate.backend == "user"]
    # validated in the sandbox and timed (through the sandbox's round trip, ~5 ms per MB moved:
    # "too-slow" next to in-process kernels at this size is a result, not a skip)
    assert m.status in ("ok", "too-slow"), (m.status, m.reason)
    assert m.median_s > 0
    order = [x.candidate.backend for x in res.measurements]
    assert order.index("user") <= 2, order  # the baseline (and a lead candidate) before it


def test_a_registered_numpy_kernel_serves_torch_callers(uhop_home):
    """A registered file is a candidate for every problem of its op on its device, whatever array
    library the caller uses: a torch CPU caller's problem evaluates it (it was never offered), timed
    inside the conversions dispatch wraps around it, and the served result is a torch tensor."""
    import numpy as np
    import torch

    from uhop.dispatch import _adapt
    from uhop.tune.tuner import tune

    assert runner.invoke(app, ["add", str(HERE / "honest" / "softmax_numpy.py")]).exit_code == 0
    prob = Problem.make("softmax", {"R": 64, "N": 333}, "float32", array="torch")
    res = tune(problem=prob, budget_s=5.0, force=True, backends=("torch", "user"))
    (m,) = [m for m in res.measurements if m.candidate.backend == "user"]
    assert m.status in ("ok", "too-slow"), (m.status, m.reason)
    b = user.UserKernelBackend()
    k = _adapt(b.compile(b.candidates(prob)[0], prob), b, prob)
    x = torch.randn(64, 333)
    y = k(x)
    assert isinstance(y, torch.Tensor)
    x64 = x.double().numpy()
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    np.testing.assert_allclose(y.numpy(), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_a_cuda_file_on_a_machine_without_cuda_is_a_usage_error():
    """Not "rejected: crash: AssertionError: Torch not compiled with CUDA enabled": the machine
    lacks what the file needs, the file is not at fault (exit 2, the reason named)."""
    import pytest

    from uhop.problem import cuda_device_count

    if cuda_device_count():
        pytest.skip("this machine has a CUDA device")
    r = runner.invoke(app, ["check", str(HERE / "honest" / "softmax_torch_cuda.py")])
    assert r.exit_code == 2, r.output
    assert "DEVICE = 'cuda'" in r.output and "no CUDA device" in r.output
