"""OpenCL backend, run for real on the OpenCL device found here (Debian's PoCL on CI): every op
and candidate against the float64 reference on fresh random inputs and odd shapes, the tuner and
store path, device limits feeding the hardware constraints, and device-resident launches."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("pyopencl", reason="pyopencl not installed (pip install 'uhop[opencl]')")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from uhop import backends as bk  # noqa: E402
from uhop import config  # noqa: E402
from uhop.backends import opencl as oc  # noqa: E402
from uhop.backends import opencl_kernels as ok  # noqa: E402
from uhop.config import override  # noqa: E402
from uhop.errors import InputError  # noqa: E402
from uhop.hardware.constraints import fits  # noqa: E402
from uhop.measure.validate import ValidationSet, check_kernel  # noqa: E402
from uhop.ops import expr as ex  # noqa: E402
from uhop.problem import Problem  # noqa: E402
from uhop.store import open_store  # noqa: E402
from uhop.tune.tuner import tune  # noqa: E402

OCL = bk.get("opencl")
if not OCL.available:  # CI installs pocl-opencl-icd (scripts/install_system_deps.sh): this must not skip there
    pytest.skip(f"OpenCL backend unavailable: {OCL.availability[1]}", allow_module_level=True)

HYP = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ODD = st.sampled_from([1, 3, 7, 17, 33, 65, 130])


def _check_all(problem: Problem, trials: int = 2) -> None:
    cands = OCL.candidates(problem)
    assert cands, f"no OpenCL candidate for {problem.describe()}"
    for cand in cands:
        kernel = OCL.compile(cand, problem)
        v = check_kernel(kernel, ValidationSet(problem, trials=trials), "numpy", "cpu")
        assert v.ok, f"{cand.id} on {problem.describe()}: {v.status}: {v.reason}"


def test_availability_names_the_device():
    ok_, reason = OCL.availability
    assert ok_ and "pyopencl" in reason and "compute units" in reason


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation,arity", [("none", 2), ("gelu", 3), ("gelu_tanh", 3), ("relu", 3), ("silu", 2)])
def test_matmul_every_tile(dtype, activation, arity):
    _check_all(Problem.make("matmul", {"B": 1, "M": 37, "N": 50, "K": 70}, dtype, {"activation": activation}, arity=arity))


def test_matmul_batched_and_broadcast_b():
    _check_all(Problem.make("matmul", {"B": 3, "M": 20, "N": 9, "K": 33}, "float32", {}, arity=2))
    rng = np.random.default_rng()
    a, b = rng.standard_normal((2, 3, 17, 5)), rng.standard_normal((5, 11))
    problem = Problem.make("matmul", {"B": 6, "M": 17, "N": 11, "K": 5}, "float64", {}, arity=2)
    out = OCL.compile(OCL.candidates(problem)[0], problem)(a, b)
    assert out.shape == (2, 3, 17, 11)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)


@given(M=ODD, N=ODD, K=ODD)
@HYP
def test_matmul_odd_shapes(M, N, K):
    _check_all(Problem.make("matmul", {"B": 1, "M": M, "N": N, "K": K}, "float32", {"activation": "gelu"}, arity=3), trials=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op,arity", [("softmax", 1), ("layernorm", 1), ("layernorm", 3), ("rmsnorm", 1), ("rmsnorm", 2)])
def test_row_ops(op, arity, dtype):
    _check_all(Problem.make(op, {"R": 29, "N": 203}, dtype, {}, arity=arity))


@given(R=ODD, N=ODD)
@HYP
def test_row_ops_odd_shapes(R, N):
    for op, arity in (("softmax", 1), ("layernorm", 3), ("rmsnorm", 2)):
        _check_all(Problem.make(op, {"R": R, "N": N}, "float32", {}, arity=arity), trials=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("expr,arity", [
    ("sigmoid(x0*1.5+0.5)*x0-0.25", 1),
    ("gelu(x0)+silu(x1)*tanh(x0)-erf(x1)", 2),
    ("maximum(x0,x1)/(abs(x1)+1)+minimum(x0,0.5)**2", 2),
    ("exp(x0)+log(abs(x0)+1)+sqrt(abs(x0))+rsqrt(abs(x0)+1)+sin(x0)*cos(x0)+relu(x0)", 1),
])  # fmt: skip
def test_elementwise_chains(expr, arity, dtype):
    _check_all(Problem.make("elementwise", {"N": 4099}, dtype, {"expr": ex.parse(expr).text()}, arity=arity))


def test_elementwise_nan_and_inf_follow_numpy():
    """maximum/minimum propagate NaN like numpy (OpenCL's fmax drops it); constants may be inf."""
    problem = Problem.make("elementwise", {"N": 6}, "float32", {"expr": ex.parse("maximum(x0, x1) + x0 * 0").text()}, arity=2)
    kernel = OCL.compile(OCL.candidates(problem)[0], problem)
    a = np.array([np.nan, 1, -np.inf, 2, 0, 3], np.float32)
    b = np.array([0, np.nan, 1, -5, np.inf, 3], np.float32)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(kernel(a, b), np.maximum(a, b) + a * 0)
    src = ok.elementwise_source(ex.call("add", ex.Var(0), ex.Const(math.inf)), 1, "float32")
    assert "INFINITY" in src


def test_tuner_store_and_best_first():
    problem = Problem.make("softmax", {"R": 64, "N": 256}, "float32", {}, arity=1)
    with override(tune_budget_s=60.0):  # a loaded 2-core machine: a short budget skips candidates
        res = tune(problem=problem, backends=("opencl",), policy="tune")
    assert res.best is not None and res.best.candidate.backend == "opencl"
    assert {m.candidate.id for m in res.measurements} == {c.id for c in OCL.candidates(problem)}
    # none fails; the budget planning may skip one, the first-call cutoff drop a slow one
    assert {m.status for m in res.measurements} <= {"ok", "skipped", "too-slow"}, [(m.candidate.id, m.status, m.reason) for m in res.measurements]
    assert open_store().get(res.key) is not None
    x = np.random.default_rng().standard_normal((64, 256)).astype(np.float32)
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    np.testing.assert_allclose(res.kernel(x), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_device_limits_feed_the_hardware_constraints():
    dev = oc.cl_device()
    caps = oc.device_manifest(dev)
    assert caps.gpu.max_threads_per_block.value == dev.device.max_work_group_size
    assert caps.gpu.max_shared_mem_per_block.value == dev.device.local_mem_size
    assert caps.gpu.max_threads_per_block.source == "reported"
    ok_, why = fits(caps, threads_per_block=dev.max_work_group + 1)
    assert not ok_ and "max_threads_per_block" in why
    assert not fits(caps, shared_mem_bytes=dev.local_mem + 1)[0]
    problem = Problem.make("matmul", {"B": 1, "M": 64, "N": 64, "K": 64}, "float32", {}, arity=2)
    for c in OCL.candidates(problem):  # every candidate offered fits the device
        ts, wpt = c.cfg["ts"], c.cfg["wpt"]
        assert fits(caps, shared_mem_bytes=(2 * ts * ts + ts) * 4, threads_per_block=ts * ts // wpt)[0]


def test_on_device_matches_host_path_without_host_copies():
    import pyopencl.array as cla

    dev = oc.cl_device()
    problem = Problem.make("layernorm", {"R": 10, "N": 100}, "float32", {}, arity=3)
    kernel = OCL.compile(OCL.candidates(problem)[0], problem)
    rng = np.random.default_rng()
    xs = [rng.standard_normal(s).astype(np.float32) for s in ((10, 100), (100,), (100,))]
    d = kernel.on_device(*[cla.to_device(dev.queue, x) for x in xs])
    assert isinstance(d, cla.Array) and d.shape == (10, 100)
    np.testing.assert_allclose(d.get(), kernel(*xs), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="float32"):
        kernel.on_device(cla.to_device(dev.queue, xs[0].astype(np.float64)), None, None)


def test_bad_shapes_name_the_argument():
    problem = Problem.make("rmsnorm", {"R": 4, "N": 8}, "float32", {}, arity=2)
    kernel = OCL.compile(OCL.candidates(problem)[0], problem)
    with pytest.raises(InputError, match="weight must have shape"):
        kernel(np.ones((4, 8), np.float32), np.ones(7, np.float32))
    mm = Problem.make("matmul", {"B": 1, "M": 4, "N": 4, "K": 4}, "float32", {}, arity=2)
    with pytest.raises(InputError, match="do not chain"):
        OCL.compile(OCL.candidates(mm)[0], mm)(np.ones((4, 4), np.float32), np.ones((5, 4), np.float32))


def test_platform_filter_with_no_match_says_which_variable(monkeypatch):
    monkeypatch.setenv("UHOP_OPENCL_PLATFORM", "no-such-platform-xyz")
    config.reload()
    with pytest.raises(RuntimeError, match="UHOP_OPENCL_PLATFORM"):
        oc.ClDevice()
