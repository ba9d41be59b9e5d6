"""Every candidate of every available CPU backend, for every op it claims, validated against the
float64 reference on fresh random inputs. Loops over the registry: a new backend is tested here
automatically."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uhop import backends as bk
from uhop.measure.validate import ValidationSet, check_kernel
from uhop.problem import Problem

CASES = [
    ("matmul", {"B": 1, "M": 37, "N": 19, "K": 23}, {}, 2),
    ("matmul", {"B": 3, "M": 5, "N": 7, "K": 11}, {"activation": "gelu"}, 3),
    ("matmul", {"B": 1, "M": 1, "N": 13, "K": 1}, {"activation": "relu"}, 3),
    ("matmul", {"B": 1, "M": 16, "N": 16, "K": 16}, {"activation": "silu"}, 2),
    ("softmax", {"R": 33, "N": 97}, {}, 1),
    ("softmax", {"R": 1, "N": 1}, {}, 1),
    ("layernorm", {"R": 17, "N": 131}, {}, 3),
    ("layernorm", {"R": 5, "N": 7}, {}, 1),
    ("rmsnorm", {"R": 19, "N": 61}, {}, 2),
    ("elementwise", {"N": 1009}, {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"}, 1),
    ("elementwise", {"N": 77}, {"expr": "gelu(x0)+silu(x1)*tanh(x0)-relu(x1)/(1+abs(x0))"}, 2),
    ("elementwise", {"N": 1}, {"expr": "exp(x0)"}, 1),
    ("attention", {"B": 3, "S": 17, "L": 13, "D": 8, "E": 5}, {}, 3),
    ("attention", {"B": 2, "S": 11, "L": 11, "D": 16, "E": 16}, {"causal": True}, 3),
    ("attention", {"B": 2, "S": 9, "L": 12, "D": 16, "E": 8}, {"scale": 1.0}, 3),  # T5's: no 1/sqrt(D)
    ("attention", {"B": 3, "S": 13, "L": 13, "D": 8, "E": 8}, {"causal": True, "scale": 0.05}, 3),
    # grouped-query attention: 6 query batch-heads over 2 key/value ones (query i reads kv i // 3)
    ("attention", {"B": 6, "S": 11, "L": 14, "D": 8, "E": 8}, {"kv_groups": 3}, 3),
    ("attention", {"B": 4, "S": 9, "L": 9, "D": 16, "E": 8}, {"causal": True, "kv_groups": 2}, 3),
    ("attention", {"B": 4, "S": 9, "L": 12, "D": 16, "E": 16}, {"kv_groups": 4}, 4),  # with a mask
    ("conv2d", {"N": 2, "C": 3, "H": 11, "W": 9, "K": 5, "R": 3, "S": 3}, {"padding": 1}, 3),
    ("conv2d", {"N": 1, "C": 4, "H": 13, "W": 13, "K": 2, "R": 5, "S": 3}, {"stride": 2}, 2),
]


# Covered by their own suites: iree (seconds per compile: tests/mlir), user (sandboxed files: tests/sandbox),
# opencl (a driver build per candidate: tests/backends/test_opencl.py checks every one).
OWN_SUITES = ("iree", "user", "opencl")


def _cpu_backends():
    return [b for b in bk.all_backends() if b.available and "cpu" in b.devices and b.name not in OWN_SUITES]


def _check_all(op, dims, params, arity, dtype="float32"):
    problem = Problem.make(op, dims, dtype, params, arity)
    vset = ValidationSet(problem, trials=2)
    checked = 0
    for b in _cpu_backends():
        if not b.supports(problem):
            continue
        for cand in b.candidates(problem):
            kernel = b.compile(cand, problem)
            v = check_kernel(kernel, vset, b.array, "cpu")
            assert v.ok, f"{cand.id} on {problem.describe()}: {v.status}: {v.reason}"
            checked += 1
    return checked


@pytest.mark.parametrize("op,dims,params,arity", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_candidate_matches_reference(op, dims, params, arity, dtype):
    assert _check_all(op, dims, params, arity, dtype) >= 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(r=st.sampled_from([1, 2, 3, 7, 31, 64, 97]), n=st.sampled_from([1, 2, 5, 13, 128, 257]))
def test_row_ops_any_shape(r, n):
    for op, arity in (("softmax", 1), ("layernorm", 3), ("rmsnorm", 2)):
        assert _check_all(op, {"R": r, "N": n}, {}, arity) >= 1


@settings(max_examples=10, deadline=None)
@given(m=st.sampled_from([1, 3, 17, 64]), n=st.sampled_from([1, 5, 33]), k=st.sampled_from([1, 7, 29, 128]))
def test_matmul_any_shape(m, n, k):
    assert _check_all("matmul", {"B": 1, "M": m, "N": n, "K": k}, {"activation": "relu"}, 3) >= 1


def test_kernels_take_non_contiguous_views():
    rng = np.random.default_rng()
    a = rng.uniform(-1, 1, (64, 48)).astype(np.float32)
    b = rng.uniform(-1, 1, (32, 64)).astype(np.float32)
    at, bt = a.T, b.T  # (48, 64) x (64, 32), both strided
    problem = Problem.make("matmul", {"B": 1, "M": 48, "N": 32, "K": 64}, "float32", {}, 2, layout="strided")
    for backend in _cpu_backends():
        if backend.supports(problem):
            for cand in backend.candidates(problem):
                out = np.asarray(backend.compile(cand, problem)(*[backend.to_native(x, "cpu") for x in (at, bt)]))
                np.testing.assert_allclose(out, at.astype(np.float64) @ bt.astype(np.float64), rtol=1e-4, atol=1e-4)
    x = rng.uniform(-1, 1, (40, 30)).astype(np.float32)[:, ::2]
    p = Problem.make("softmax", {"R": 40, "N": 15}, "float32", {}, 1, layout="strided")
    for backend in _cpu_backends():
        if backend.supports(p):
            for cand in backend.candidates(p):
                out = np.asarray(backend.compile(cand, p)(backend.to_native(x, "cpu")))
                e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
                np.testing.assert_allclose(out, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_unavailable_backends_say_why():
    for b in bk.all_backends():
        ok, why = b.availability
        assert isinstance(why, str) and why, b.name
        if not ok:
            assert "\n" not in why
