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
