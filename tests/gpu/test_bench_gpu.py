"""``uhop bench --device cuda``: UHOP next to torch eager and torch.compile on CUDA tensors."""

from __future__ import annotations

import json

import pytest

from uhop.benchsuite import custom_case, run_cases


def test_one_case_on_the_gpu_in_bf16():
    (row,), meta = run_cases([custom_case("softmax", "2048x1000", dtype="bfloat16", device="cuda")], budget_s=5.0,
                             overhead=False)  # fmt: skip
    assert row["device"] == "cuda" and row["naive"] == "torch eager" and row["library"].startswith("torch.compile")
    assert row["uhop_s"] > 0 and row["naive_s"] > 0 and row["library_s"] > 0
    assert row["compile_first_call_s"] > row["library_s"]  # the compile, reported apart
    assert "gpu" in meta and meta["device"] == "cuda"


def test_cli_on_the_gpu(capsys):
    from uhop.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "layernorm", "--shape", "4096x5120", "--arity", "3", "--dtype", "bfloat16", "--device", "cuda",
              "--budget", "5", "--json", "-"])  # fmt: skip
    assert e.value.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["results"]
    assert row["speedup_vs_naive"] > 0 and row["speedup_vs_library"] > 0


def test_cli_tuned_for_cuda_serves_a_cuda_caller_in_a_new_process(tmp_path):
    """``uhop tune ... --device cuda``, then ``uhop.ops`` on a CUDA tensor in a new process: no
    second tuning (the entry was keyed ``cuda``, callers ask for ``cuda:0``)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "UHOP_HOME": str(tmp_path), "UHOP_TUNE_BUDGET_S": "10"}
    env.pop("UHOP_POLICY", None)
    p = subprocess.run([sys.executable, "-m", "uhop", "tune", "softmax", "--shape", "1024x1000", "--device", "cuda"],
                       env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    script = ("import json, torch, uhop\nfrom uhop.store import open_store\n"
              "uhop.ops.softmax(torch.randn(1024, 1000, device='cuda'))\nuhop.wait()\n"
              "print(json.dumps([(e.key, len(open_store().measurements(e.key))) for e in open_store().entries('softmax')]))")  # fmt: skip
    before = subprocess.run([sys.executable, "-c", script.replace("uhop.ops.softmax", "0 and uhop.ops.softmax")],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    after = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]
    assert json.loads(after.stdout.strip().splitlines()[-1]) == json.loads(before.stdout.strip().splitlines()[-1])
