"""GPU kernel files in the sandbox: device nodes bound in, no RLIMIT_AS (it breaks CUDA), host
memory held by RSS polling, timing synchronized with the whole device. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from uhop.sandbox.check import check_file
from uhop.sandbox.kernelfile import StaticPolicy
from uhop.sandbox.worker import Limits

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
HONEST = Path(__file__).parent / "honest"


def test_honest_cuda_kernel_passes():
    res = check_file(HONEST / "softmax_torch_cuda.py", limits=Limits(wall_s=120))
    assert res.ok, res.line()
    assert res.median_s > 0


@pytest.mark.parametrize("isolation", ["auto", "seccomp"])
def test_triton_gpu_kernel_compiles_through_the_tool_broker(monkeypatch, isolation):
    """Triton compiles PTX with ptxas and builds its launcher with the C compiler; the sandboxed
    worker may not exec, so the tool broker runs both (docs/kernel_format.md)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    res = check_file(HONEST / "softmax_triton_cuda.py", limits=Limits(wall_s=120), isolation=isolation)
    assert res.ok, res.line()
    assert "tools" in res.layers and "seccomp" in res.layers
    assert res.median_s > 0


def test_triton_gpu_kernel_asking_for_a_shell_is_forbidden(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    f = tmp_path / "shell.py"
    f.write_text((HONEST / "softmax_triton_cuda.py").read_text().replace(
        "def run(x):\n", "def run(x):\n    triton.runtime.build.subprocess.run(['/bin/sh', '-c', 'true'])\n"))
    res = check_file(f, limits=Limits(wall_s=120), policy=StaticPolicy(enabled=False), time_it=False)
    assert res.category == "forbidden", res.line()


def test_cuda_host_memory_is_polled(tmp_path):
    f = tmp_path / "hog.py"
    f.write_text(
        "import time\nimport torch\nOP = 'softmax'\nARRAY = 'torch'\nDEVICE = 'cuda'\nHOLD = []\n"
        "def run(x):\n    HOLD.append(torch.ones(4 << 30, dtype=torch.uint8))\n    time.sleep(2)\n"
        "    return torch.softmax(x, -1)\n"
    )
    res = check_file(f, limits=Limits(wall_s=60, memory_bytes=1 << 30), time_it=False)
    assert res.category == "memory", res.line()


def test_registered_triton_cuda_kernel_is_tuned_and_served(monkeypatch, uhop_home):
    """A user's flow on a GPU: ``uhop kernel add`` a Triton CUDA file, then a tuning run of a
    CUDA problem it serves evaluates it in the sandbox (validated and timed, not an error), and
    ``uhop.ops`` serves whatever the store holds with float64-correct results."""
    import subprocess
    import sys

    import numpy as np

    import uhop
    from uhop.backends import user
    from uhop.problem import Problem
    from uhop.tune.tuner import tune

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cmd = [sys.executable, "-c", "import sys; from uhop.cli import main; sys.argv[0] = 'uhop'; main()"]
    r = subprocess.run([*cmd, "kernel", "add", str(HONEST / "softmax_triton_cuda.py")], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(user.list_kernels("softmax")) == 1
    prob = Problem.make("softmax", {"R": 512, "N": 1000}, "float32", device="cuda:0", array="torch")
    res = tune(problem=prob, budget_s=30.0, force=True, backends=("torch", "triton", "user"))
    (m,) = [m for m in res.measurements if m.candidate.backend == "user"]
    assert m.status in ("ok", "too-slow"), (m.status, m.reason)
    assert m.median_s > 0
    x = torch.randn(512, 1000, device="cuda")
    y = uhop.ops.softmax(x)
    x64 = x.double().cpu().numpy()
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    np.testing.assert_allclose(y.cpu().numpy(), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
