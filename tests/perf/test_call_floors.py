"""The tuner's call floor: a candidate whose backend never ran this op under 3x the fastest so far,
on a no larger problem on this machine, is skipped instead of compiled (uhop/perf/telemetry.py
``call_floors``, uhop/tune/tuner.py ``_under_floor``)."""

from __future__ import annotations

import pytest

from uhop.backends.base import Candidate
from uhop.measure.bench import Timing
from uhop.problem import Problem, hardware_fingerprint


def _m(backend: str, status: str, t: float | None):
    from uhop.tune.tuner import Measurement

    timing = Timing.failed() if t is None else Timing(t, t, t, 0.0, 1 if status == "too-slow" else 5, 1)
    return Measurement(Candidate(backend, "x", {}), status, "", timing)


def _mm(n: int, dtype: str = "float32") -> Problem:
    return Problem.make("matmul", {"B": 1, "M": n, "N": n, "K": n}, dtype, {}, arity=2)


def test_floors_come_from_no_larger_problems_of_the_op_and_dtype(uhop_home):
    from uhop.perf.telemetry import call_floors, record_measurements
    from uhop.store import open_store

    store, fp = open_store(), hardware_fingerprint("cpu")
    record_measurements(_mm(8), [_m("opencl", "too-slow", 3e-4), _m("iree", "ok", 9e-5), _m("numba", "crash", None)], store=store)
    record_measurements(_mm(6), [_m("opencl", "too-slow", 2e-4)], store=store)
    record_measurements(_mm(64), [_m("numba", "ok", 1e-6)], store=store)  # larger: says nothing of 16^3
    record_measurements(_mm(4, "float64"), [_m("iree", "ok", 1e-6)], store=store)  # another dtype
    record_measurements(Problem.make("softmax", {"R": 2, "N": 2}, "float32"), [_m("iree", "ok", 1e-6)], store=store)
    p = _mm(16)
    floors = call_floors(store, p, fp, p.key())
    assert floors == pytest.approx({"opencl": 2e-4, "iree": 9e-5})  # the fastest; crashes carry no time
    assert call_floors(store, _mm(7), fp, _mm(7).key()) == pytest.approx({"opencl": 2e-4})
    assert call_floors(store, _mm(8), fp, _mm(8).key()) == pytest.approx({"opencl": 2e-4})  # not its own rows
    assert call_floors(store, _mm(5), fp, _mm(5).key()) == {}
    assert call_floors(object(), p, fp, p.key()) == {}  # an unreadable table: no floors, no error


def test_a_backend_too_slow_on_a_smaller_matmul_is_not_compiled_for_a_larger_one(uhop_home):
    """Real runs: OpenCL (PoCL) calls cost tens of microseconds or more; numpy's BLAS multiplies a
    4x4 matrix in a few. The first run times every OpenCL candidate and stops each as too slow;
    the second, on a larger matmul, skips them all before compiling; a smaller one is not judged
    by the larger one's record."""
    from uhop import config
    from uhop.backends import get

    ocl = get("opencl")
    if not ocl.available:
        pytest.skip(f"OpenCL unavailable: {ocl.availability[1]}")
    from uhop.tune.tuner import tune

    with config.override(backends=("numpy", "opencl"), tune_budget_s=60.0, isolate="never"):
        first = tune("matmul", {"B": 1, "M": 4, "N": 4, "K": 4}, "float32")
        slow = [m for m in first.measurements if m.candidate.backend == "opencl"]
        assert slow and all(m.status == "too-slow" for m in slow), [(m.status, m.reason) for m in slow]
        second = tune("matmul", {"B": 1, "M": 6, "N": 6, "K": 6}, "float32")
        ocl_second = [m for m in second.measurements if m.candidate.backend == "opencl"]
        assert second.best.candidate.backend == "numpy"
        assert ocl_second and all(m.status == "skipped" and m.reason.startswith("call floor: opencl") for m in ocl_second)
        assert not any("compile" in dict(m.phases) for m in ocl_second)
        smaller = tune("matmul", {"B": 1, "M": 3, "N": 3, "K": 3}, "float32")
        assert all(not m.reason.startswith("call floor") for m in smaller.measurements)


def test_on_a_gpu_only_steady_state_times_make_a_floor(uhop_home):
    """A too-slow candidate's one timed call on a GPU is a wall-clock launch and synchronization
    (Triton GEMMs of 64 cubed: 47-56 us on the H100, where 2048 cubed runs 28 us in steady state):
    not a floor there. Valid candidates' fastest samples are."""
    from uhop.perf.telemetry import call_floors, record_measurements
    from uhop.store import open_store

    def mm(n):
        return Problem.make("matmul", {"B": 1, "M": n, "N": n, "K": n}, "bfloat16", {}, arity=2, device="cuda:0")

    store, fp = open_store(), {"gpu": "a GPU of this test"}
    record_measurements(mm(64), [_m("triton", "too-slow", 5e-5), _m("torch", "ok", 1.1e-5)], fp, store=store)
    assert call_floors(store, mm(512), fp, mm(512).key()) == pytest.approx({"torch": 1.1e-5})


def test_call_floors_read_the_same_through_postgres(pg_url):
    """The same floors from PostgreSQL's telemetry table (one SQL text for both stores)."""
    from uhop.perf.pgstore import PostgresStore
    from uhop.perf.telemetry import call_floors, record_measurements

    s, fp = PostgresStore(pg_url), hardware_fingerprint("cpu")
    s.delete_telemetry()
    record_measurements(_mm(8), [_m("opencl", "too-slow", 3e-4), _m("iree", "ok", 9e-5)], fp, store=s, strict=True)
    record_measurements(_mm(64), [_m("opencl", "ok", 1e-6)], fp, store=s, strict=True)
    assert call_floors(s, _mm(16), fp, _mm(16).key()) == pytest.approx({"opencl": 3e-4, "iree": 9e-5})
    assert call_floors(s, _mm(4), fp, _mm(4).key()) == {}
    s.close()
