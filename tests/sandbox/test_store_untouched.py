"""Hostile kernels registered as user candidates reach the tuner and lose: the store keeps its
entries (gains nothing from them, loses nothing) and the host process survives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from uhop.backends import user
from uhop.errors import NoCandidateError
from uhop.sandbox.kernelfile import load
from uhop.store import open_store
from uhop.tune.tuner import tune

HOSTILE = Path(__file__).parent / "hostile"
CASES = ["wrong_result", "half_write", "wrong_after_warmup", "segfault_numpy", "first_output_forever", "raises"]


def _register_unchecked(path: Path) -> None:
    """Bypass ``uhop kernel add``'s check, as a tampered registry would."""
    kf = load(path)
    d = user.kernels_dir()
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, d / user.stored_name(kf))


def _snapshot(store):
    return sorted((e.key, e.candidate["backend"], e.median_s) for e in store.entries())


@pytest.mark.parametrize("name", CASES)
def test_hostile_user_kernel_never_chosen(name):
    store = open_store()
    dims = {"R": 37, "N": 61} if name not in ("wrong_result", "half_write") else {"B": 1, "M": 31, "N": 37, "K": 29}
    op = "softmax" if "R" in dims else "matmul"
    tune(op, {"R": 5, "N": 7} if op == "softmax" else {"B": 1, "M": 3, "N": 5, "K": 7}, "float32",
         backends=("numpy",), store=store)  # an unrelated entry that must survive  # fmt: skip
    before = _snapshot(store)
    _register_unchecked(HOSTILE / f"{name}.py")
    backend = user.UserKernelBackend()
    assert backend.available, backend.availability
    with pytest.raises(NoCandidateError) as info:
        tune(op, dims, "float32", backends=("user",), store=store)
    assert "user/" in str(info.value)
    assert _snapshot(store) == before
    res = tune(op, dims, "float32", backends=("user", "numpy"), store=store)
    assert res.best.candidate.backend == "numpy"
    bad = [m for m in res.measurements if m.candidate.backend == "user"]
    assert bad and not any(m.ok for m in bad)
