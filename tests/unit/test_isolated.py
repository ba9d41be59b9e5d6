"""Isolated tuning (``UHOP_ISOLATE``): candidates that kill their process are recorded failures;
the caller survives, the store gets the best honest kernel, and the worker is replaced."""

from __future__ import annotations

import numpy as np
import pytest

import uhop
from uhop import backends as bk
from uhop import config
from uhop.store import open_store
from uhop.tune.tuner import tune


@pytest.fixture
def faulty(monkeypatch):
    monkeypatch.setitem(bk.REGISTRY, "faulty", "faulty_backend:FaultyBackend")
    yield
    bk._instances.pop("faulty", None)


def test_register_validates_its_arguments():
    with pytest.raises(ValueError, match="target must look like"):
        bk.register("x", "no_colon_here")
    with pytest.raises(ValueError, match="name must be"):
        bk.register("", "a:B")


def test_isolate_setting_modes(monkeypatch):
    for raw, mode in (("1", "always"), ("0", "never"), ("auto", "auto"), ("", "auto"), ("off", "never")):
        monkeypatch.setenv("UHOP_ISOLATE", raw)
        assert config.reload().isolate == mode
    monkeypatch.setenv("UHOP_ISOLATE", "sometimes")
    with pytest.raises(ValueError, match="UHOP_ISOLATE must be auto, 1 or 0"):
        config.reload()
    monkeypatch.delenv("UHOP_ISOLATE")
    s = config.reload()
    # the default: every GPU candidate; on CPU, backends that JIT-compile native code
    assert s.isolates("cuda:0", bk.get("torch")) and s.isolates("cpu", bk.get("numba"))
    assert not s.isolates("cpu", bk.get("numpy")) and not s.isolates("cpu", bk.get("torch"))


def test_candidates_that_kill_the_worker_are_recorded_and_the_caller_lives(faulty):
    rng = np.random.default_rng()
    x = rng.standard_normal((64, 96)).astype(np.float32)
    with config.override(isolate=True, isolate_timeout_s=4, tune_budget_s=120, backends=("numpy", "faulty")):
        res = tune(op="softmax", dims={"R": 64, "N": 96})
        out = uhop.ops.softmax(x)
    by = {m.candidate.template: m for m in res.measurements if m.candidate.backend == "faulty"}
    assert by["segfault"].status == "crash" and "SIGSEGV" in by["segfault"].reason
    assert by["abort"].status == "crash" and "SIGABRT" in by["abort"].reason
    assert by["exit"].status == "crash" and "exit code 0" in by["exit"].reason
    assert by["hang"].status == "timeout" and "UHOP_ISOLATE_TIMEOUT_S" in by["hang"].reason
    # a fresh worker measures the next candidate normally: validated, then timed (on a loaded
    # 2-core VM its first timed call may pass 3x numpy's, a cut after validation, not a fault)
    h = by["honest"]
    assert h.ok or (h.status == "too-slow" and "first timed call" in h.reason and h.max_err is not None), h
    assert res.best is not None and res.best.ok and res.kernel is not None
    (entry,) = open_store().entries("softmax")
    assert entry.candidate["template"] != "segfault"
    x64 = x.astype(np.float64)
    ref = np.exp(x64 - x64.max(-1, keepdims=True))
    np.testing.assert_allclose(out, ref / ref.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_local_executor_fails_a_job_that_kills_its_worker_without_retrying(monkeypatch):
    monkeypatch.setitem(bk.REGISTRY, "faulty", "faulty_backend:CrashingBackend")
    bk._instances.pop("faulty", None)
    try:
        with config.override(backends=("numpy", "faulty")):
            res = tune(op="softmax", dims={"R": 32, "N": 40}, strategy="exhaustive", executor="local", budget_s=120)
    finally:
        bk._instances.pop("faulty", None)
    from uhop.tune.jobs import open_queue

    jobs = {j.params["template"]: j for j in open_queue().jobs(run_id=res.run_id)}
    for fault, sig in (("segfault", "SIGSEGV"), ("abort", "SIGABRT")):
        assert jobs[fault].status == "failed" and jobs[fault].retries == 0, jobs[fault]
        assert f"the candidate killed its worker ({sig})" in jobs[fault].error
    assert jobs["honest"].status == "done"
    assert res.best is not None and res.best.ok


def test_auto_isolates_crash_prone_cpu_backends(monkeypatch):
    """The default (``auto``) on CPU: a backend that runs generated native code is measured in the
    worker, so its segfault is a recorded failure; numpy's candidates run in-process."""
    monkeypatch.setitem(bk.REGISTRY, "faulty", "faulty_backend:GeneratedCodeBackend")
    bk._instances.pop("faulty", None)
    try:
        with config.override(isolate="auto", tune_budget_s=120, backends=("numpy", "faulty")):
            res = tune(op="softmax", dims={"R": 16, "N": 24})
    finally:
        bk._instances.pop("faulty", None)
    by = {m.candidate.id: m for m in res.measurements}
    assert by["faulty/segfault"].status == "crash" and "SIGSEGV" in by["faulty/segfault"].reason
    assert by["faulty/honest"].ok and res.best is not None and res.best.ok


def test_a_librarys_first_import_in_the_worker_is_reported_apart_from_the_candidate(uhop_home):
    """The worker imports a backend's library on its first candidate (torch: 1-2 s); that is a
    one-time cost of the worker, reported as the measurement's ``import`` phase (the tuner adds it
    to the probe and moves the deadline), not the candidate's compile: charged to the budget,
    torch's import left a 1024x4096x1024 GEMM + GELU no time for numba's kernels."""
    pytest.importorskip("torch")
    from uhop.backends.base import Candidate
    from uhop.problem import Problem
    from uhop.tune.isolated import IsolatedEvaluator

    p = Problem.make("softmax", {"R": 8, "N": 40}, "float32")
    ev = IsolatedEvaluator("cpu")  # a fresh worker: nothing imported beyond numpy and UHOP
    try:
        first = ev.evaluate(Candidate("torch", "eager", {}), p, trials=1)
        assert first.ok, first.reason
        phases = dict(first.phases)
        assert phases.get("import", 0.0) > 0.05  # torch's import, here
        assert phases["compile"] < phases["import"]
        again = ev.evaluate(Candidate("torch", "eager", {}), p, trials=1)
        assert again.ok and dict(again.phases).get("import", 0.0) < 0.01  # once per library
    finally:
        ev.close()
