"""numba backend: every op and candidate config against the float64 reference on fresh random
inputs, odd shapes, NaN/Inf, strided inputs, and a traced user function dispatching to it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba not installed (pip install 'uhop[cpu]')")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import uhop  # noqa: E402
from uhop import backends as bk  # noqa: E402
from uhop import dispatch  # noqa: E402
from uhop.backends import numba as nbmod  # noqa: E402
from uhop.backends.base import Candidate  # noqa: E402
from uhop.config import override  # noqa: E402
from uhop.errors import InputError  # noqa: E402
from uhop.measure.validate import ValidationSet, check_kernel, compare  # noqa: E402
from uhop.ops import expr as ex  # noqa: E402
from uhop.ops.base import as_f64  # noqa: E402
from uhop.problem import Problem  # noqa: E402

NB = bk.get("numba")
HYP = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PRIMES_AND_ONE = st.sampled_from([1, 2, 3, 5, 7, 13, 31, 97, 127, 257, 1021])


def _check(problem: Problem, cand: Candidate, trials: int = 2) -> None:
    kernel = NB.compile(cand, problem)
    v = check_kernel(kernel, ValidationSet(problem, trials=trials), "numpy", "cpu")
    assert v.ok, f"{cand.id} on {problem.describe()}: {v.status}: {v.reason}"


def _reference(problem: Problem, xs: list) -> np.ndarray:
    return problem.spec.reference(*[as_f64(x) for x in xs], **problem.param)


def test_available_and_registered():
    assert NB.available, NB.availability
    assert NB.name == "numba" and NB.array == "numpy" and NB.devices == ("cpu",)
    assert set(NB.dtypes) == {"float32", "float64"}


def test_probe_reports_missing_numba(monkeypatch):
    monkeypatch.setattr(nbmod.importlib.util, "find_spec", lambda name: None)
    assert nbmod.NumbaBackend()._probe() == (False, "numba not installed: pip install 'uhop[cpu]'")


def test_declines_other_ops_and_dtypes():
    assert not NB.supports(Problem.make("conv2d", dict(N=1, C=1, H=4, W=4, K=1, R=3, S=3), "float32"))
    assert not NB.supports(Problem.make("softmax", {"R": 2, "N": 3}, "float16"))


# ---- every candidate config of every op ---------------------------------------------------------
CHAIN = "sigmoid(x0*1.5+0.5)*x0-0.25"


@pytest.mark.parametrize("dtype,n", [("float32", 1), ("float32", 300007), ("float64", 70001)])
def test_elementwise_every_candidate(dtype, n):
    problem = Problem.make("elementwise", {"N": n}, dtype, {"expr": CHAIN})
    cands = NB.candidates(problem)
    assert 2 <= len(cands) <= 5
    for cand in cands:
        _check(problem, cand)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn", sorted(ex.FUNCS))
def test_elementwise_every_function(dtype, fn):
    arity = ex.FUNCS[fn][0]
    problem = Problem.make("elementwise", {"N": 4099}, dtype, {"expr": f"{fn}({', '.join(f'x{i}' for i in range(arity))})"})
    if fn not in nbmod._FORMULAS:  # a function added to the IR later: declined, never miscompiled
        assert not NB.supports(problem)
        pytest.skip(f"numba backend has no formula for {fn}")
    assert NB.supports(problem)
    _check(problem, Candidate.of("numba", "fused", parallel=False, wide=True, chunk=1000), trials=3)


@pytest.mark.parametrize("expr", ["x0**2 + x1**3 - x0", "gelu(x0)*x1 + tanh(x2)", "exp(-square(x0))/(1+abs(x1))"])
def test_elementwise_multi_input_chains(expr):
    problem = Problem.make("elementwise", {"N": 10007}, "float32", {"expr": expr})
    _check(problem, NB.candidates(problem)[0], trials=3)


ROW_CASES = [
    ("softmax", 1, {}),
    ("layernorm", 1, {}),
    ("layernorm", 2, {}),
    ("layernorm", 3, {"eps": 1e-3}),
    ("rmsnorm", 1, {}),
    ("rmsnorm", 2, {"eps": 1e-5}),
]


@pytest.mark.parametrize("op,arity,params", ROW_CASES)
def test_row_ops_every_candidate(op, arity, params):
    problem = Problem.make(op, {"R": 4096, "N": 33}, "float32", params, arity=arity)
    cands = NB.candidates(problem)
    assert 2 <= len(cands) <= 5
    for cand in cands:
        _check(problem, cand)
    few_rows = Problem.make(op, {"R": 3, "N": 1000}, "float32", params, arity=arity)
    _check(few_rows, NB.candidates(few_rows)[0])


@pytest.mark.parametrize("op,arity,params", ROW_CASES)
def test_row_ops_float64(op, arity, params):
    problem = Problem.make(op, {"R": 257, "N": 129}, "float64", params, arity=arity)
    _check(problem, NB.candidates(problem)[0])


@pytest.mark.parametrize("activation,arity", [("none", 2), ("none", 3), ("relu", 2), ("gelu", 3), ("silu", 3)])
def test_matmul_epilogues(activation, arity):
    problem = Problem.make("matmul", {"B": 1, "M": 130, "N": 67, "K": 33}, "float32", {"activation": activation}, arity=arity)
    cands = NB.candidates(problem)
    for cand in cands if activation == "gelu" else cands[:1]:
        _check(problem, cand)


def test_matmul_batched_float64():
    problem = Problem.make("matmul", {"B": 3, "M": 17, "N": 5, "K": 7}, "float64", {"activation": "gelu"}, arity=3)
    for cand in NB.candidates(problem):
        _check(problem, cand)


@pytest.mark.parametrize("activation,arity", [("none", 2), ("gelu", 3), ("silu", 3)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_with_a_batched_b_as_tasks(activation, arity, dtype):
    """b with batch dims of its own (q @ k^T by hand): the task-parallel template first past tiny
    sizes, every candidate against float64, and BLAS's thread count as it was afterwards."""
    pytest.importorskip("threadpoolctl", reason="threadpoolctl not installed (pip install 'uhop[cpu]')")
    params = {"activation": activation, "batched_b": True}
    problem = Problem.make("matmul", {"B": 13, "M": 67, "N": 45, "K": 33}, dtype, params, arity=arity)
    cands = NB.candidates(problem)
    assert cands[0].template == "batched", cands
    libs = nbmod._blas_control().lib_controllers
    before = [lib.num_threads for lib in libs]
    for cand in cands:
        _check(problem, cand)
    assert [lib.num_threads for lib in libs] == before
    tiny = Problem.make("matmul", {"B": 2, "M": 4, "N": 4, "K": 4}, dtype, params, arity=arity)
    assert NB.candidates(tiny)[0].template == "blas+epilogue"
    # shared b: no batched template (one tall GEMM), and the batched one refuses a 2-D b by name
    shared = Problem.make("matmul", {"B": 13, "M": 67, "N": 45, "K": 33}, dtype, {"activation": activation}, arity=arity)
    assert all(c.template != "batched" for c in NB.candidates(shared))
    k = NB.compile(cands[0], problem)
    rng = np.random.default_rng()
    with pytest.raises(InputError, match="batch dims"):
        k(rng.standard_normal((13, 67, 33)).astype(dtype), rng.standard_normal((33, 45)).astype(dtype))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "dims", [dict(B=1, S=1, L=1, D=1, E=1), dict(B=3, S=37, L=53, D=16, E=9), dict(B=2, S=300, L=131, D=8, E=5)]
)
def test_attention_every_candidate(causal, dims):
    problem = Problem.make("attention", dims, "float32", {"causal": causal})
    for cand in NB.candidates(problem):
        _check(problem, cand)


def test_attention_float64_batched_heads():
    rng = np.random.default_rng()
    q, k, v = (rng.uniform(-1, 1, (2, 3, n, d)) for n, d in ((129, 16), (70, 16), (70, 8)))
    problem = Problem.make("attention", dict(B=6, S=129, L=70, D=16, E=8), "float64", {"causal": True})
    out = NB.compile(NB.candidates(problem)[0], problem)(q, k, v)
    assert out.shape == (2, 3, 129, 8)
    assert compare(out, _reference(problem, [q, k, v]), problem).ok


def _attention_ref(q, k, v, causal):
    problem = Problem.make("attention", dict(B=q.shape[0], S=q.shape[1], L=k.shape[1], D=q.shape[2], E=v.shape[2]),
                           "float32", {"causal": causal})  # fmt: skip
    return problem, _reference(problem, [q, k, v])


def test_task_parallel_attention_first_and_blas_threads_restored():
    pytest.importorskip("threadpoolctl", reason="threadpoolctl not installed (pip install 'uhop[cpu]')")
    problem = Problem.make("attention", dict(B=4, S=300, L=300, D=32, E=32), "float32", {"causal": True})
    first = NB.candidates(problem)[0]
    assert first.cfg["parallel"] is True, first.id
    tiny = Problem.make("attention", dict(B=2, S=4, L=64, D=64, E=64), "float32", {"causal": False})
    assert NB.candidates(tiny)[0].cfg["parallel"] is False  # waking threads costs more than the work
    libs = nbmod._blas_control().lib_controllers
    before = [lib.num_threads for lib in libs]
    kernel = NB.compile(first, problem)
    rng = np.random.default_rng()
    q, k, v = (rng.standard_normal((4, 300, 32)).astype(np.float32) for _ in range(3))
    ref = _attention_ref(q, k, v, True)[1]
    # several caller threads at once: each result right, and the BLAS thread count restored after the last
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as ex_:
        outs = list(ex_.map(lambda _: kernel(q, k, v), range(6)))
    for out in outs:
        assert compare(out, ref, problem).ok
    assert [lib.num_threads for lib in libs] == before


def test_task_failure_is_raised_and_blas_threads_restored():
    pytest.importorskip("threadpoolctl", reason="threadpoolctl not installed (pip install 'uhop[cpu]')")
    libs = nbmod._blas_control().lib_controllers
    before = [lib.num_threads for lib in libs]
    done = []

    def task(i):
        if i == 5:
            raise ValueError("task 5 failed")
        done.append(i)

    with pytest.raises(ValueError, match="task 5 failed"), nbmod._one_blas_thread():
        assert all(lib.num_threads == 1 for lib in libs)
        nbmod._run_tasks(task, list(range(40)))
    assert [lib.num_threads for lib in libs] == before and len(done) < 40


def test_task_parallel_attention_in_a_forked_child():
    """A forked child inherits the parent's pool object but none of its threads: it must make its own."""
    import multiprocessing as mp

    pytest.importorskip("threadpoolctl", reason="threadpoolctl not installed (pip install 'uhop[cpu]')")
    kernel = nbmod.attention_kernel("float32", False, True, False, 16)
    rng = np.random.default_rng()
    q, k, v = (rng.standard_normal((3, 64, 8)).astype(np.float32) for _ in range(3))
    kernel(q, k, v)  # the parent's pool now exists
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=lambda: results.put(kernel(q, k, v)))  # fork: the closure is inherited
    child.start()
    out = results.get(timeout=60)
    child.join(10)
    assert child.exitcode == 0
    problem, ref = _attention_ref(q, k, v, False)
    assert compare(out, ref, problem).ok


def test_a_child_forked_inside_a_task_parallel_call_gets_blas_threads_back():
    import multiprocessing as mp

    pytest.importorskip("threadpoolctl", reason="threadpoolctl not installed (pip install 'uhop[cpu]')")
    libs = nbmod._blas_control().lib_controllers
    before = [lib.num_threads for lib in libs]
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    with nbmod._one_blas_thread():  # as if another thread of the parent were inside attention
        child = ctx.Process(target=lambda: results.put([lib.num_threads for lib in libs]))
        child.start()
    assert results.get(timeout=60) == before
    child.join(10)
    assert [lib.num_threads for lib in libs] == before


@pytest.mark.parametrize(
    "op,dims,params,arity",
    [("elementwise", {"N": (1 << 20) + 1}, {"expr": CHAIN}, 1), ("layernorm", {"R": 67, "N": 45}, {}, 3),
     ("matmul", {"B": 2, "M": 9, "N": 6, "K": 4}, {"activation": "silu"}, 3),
     ("attention", {"B": 2, "S": 40, "L": 23, "D": 8, "E": 4}, {"causal": True}, 3)],
)  # fmt: skip
def test_typed_space_configs_validate(op, dims, params, arity):
    import random

    from uhop.space import space_of

    problem = Problem.make(op, dims, "float32", params, arity=arity)
    space = space_of(NB, problem)
    assert "parallel" in space.names
    rng = random.Random(0)
    for _ in range(4):
        _check(problem, space.candidate(space.sample(rng)), trials=1)


# ---- shapes -------------------------------------------------------------------------------------
@HYP
@given(a=PRIMES_AND_ONE, b=PRIMES_AND_ONE, chunk=st.sampled_from([1, 7, 4096]))
def test_elementwise_shapes(a, b, chunk):
    rng = np.random.default_rng()
    x, y = (rng.uniform(-2, 2, (a, b)).astype(np.float32) for _ in range(2))
    problem = Problem.make("elementwise", {"N": a * b}, "float32", {"expr": "silu(x0)*x1 + x0/3"})
    kernel = NB.compile(Candidate.of("numba", "fused", parallel=True, wide=True, chunk=chunk), problem)
    out = kernel(x, y)
    assert out.shape == (a, b) and out.dtype == np.float32
    assert compare(out, _reference(problem, [x, y]), problem).ok


@HYP
@given(r=PRIMES_AND_ONE, n=PRIMES_AND_ONE, rows=st.sampled_from([1, 3, 64]), op=st.sampled_from(["softmax", "layernorm", "rmsnorm"]))
def test_row_op_shapes(r, n, rows, op):
    rng = np.random.default_rng()
    x = rng.normal(0, 3, (2, r, n)).astype(np.float32)
    problem = Problem.make(op, {"R": 2 * r, "N": n}, "float32", arity=1)
    kernel = NB.compile(Candidate.of("numba", "rows", parallel=True, wide=True, rows=rows), problem)
    out = kernel(x)
    assert out.shape == x.shape
    v = compare(out, _reference(problem, [x]), problem)
    assert v.ok, v.reason


# ---- NaN / Inf ------------------------------------------------------------------------------------
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, -0.5, 3.0, -3.0, 20.0, -20.0, -100.0, 1e-30])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn", sorted(ex.FUNCS))
def test_elementwise_nan_inf_like_reference(dtype, fn):
    if fn not in nbmod._FORMULAS:
        pytest.skip(f"numba backend has no formula for {fn}")
    arity = ex.FUNCS[fn][0]
    if arity == 1:
        xs = [np.tile(SPECIALS, 7).astype(dtype)]
    else:  # every pair of specials
        a, b = np.meshgrid(SPECIALS, SPECIALS)
        xs = [a.ravel().astype(dtype), b.ravel().astype(dtype)]
    problem = Problem.make("elementwise", {"N": xs[0].size}, dtype, {"expr": f"{fn}({', '.join(f'x{i}' for i in range(arity))})"})
    cands = [Candidate.of("numba", "fused", parallel=False, wide=True, chunk=64)]
    if dtype == "float32":  # the parallel body is the same code per element; check it once per function
        cands.append(Candidate.of("numba", "fused", parallel=True, wide=False, chunk=5))
    for cand in cands:
        out = NB.compile(cand, problem)(*xs)
        # rounded to the dtype: pow(1e-30, -3) overflows float32 in any implementation
        with np.errstate(over="ignore"):
            ref = _reference(problem, xs).astype(dtype).astype(np.float64)
        v = compare(out, ref, problem)
        assert v.ok, f"{fn} {cand.id}: {v.reason}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_nan_inf_rows_like_reference(dtype):
    rng = np.random.default_rng()
    x = rng.uniform(-5, 5, (6, 37)).astype(dtype)
    x[0, 3] = np.nan
    x[1, 5] = np.inf
    x[2, :] = -np.inf
    x[3, ::2] = -np.inf
    x[4, 0] = 80.0  # large but finite: the row max keeps exp in range
    problem = Problem.make("softmax", {"R": 6, "N": 37}, dtype)
    for cand in NB.candidates(problem):
        out = NB.compile(cand, problem)(x)
        v = compare(out, _reference(problem, [x]), problem)
        assert v.ok, f"{cand.id}: {v.reason}"
        assert np.isnan(out[0]).all() and np.isnan(out[2]).all() and not np.isnan(out[3]).any()


# ---- layouts --------------------------------------------------------------------------------------
def test_strided_and_transposed_inputs():
    rng = np.random.default_rng()
    base = rng.uniform(-1, 1, (64, 130)).astype(np.float32)
    xt, xs = base.T, base[:, ::2]  # transposed; strided last dim
    for op, x in [("softmax", xt), ("layernorm", xs), ("rmsnorm", xt)]:
        problem = Problem.make(op, {"R": x.shape[0], "N": x.shape[1]}, "float32", layout="strided")
        out = NB.compile(NB.candidates(problem)[0], problem)(x)
        assert out.flags.c_contiguous and not np.shares_memory(out, base)
        assert compare(out, _reference(problem, [x]), problem).ok, op
    problem = Problem.make("elementwise", {"N": xt.size}, "float32", {"expr": "x0*x1 + exp(x0)"}, layout="strided")
    y = rng.uniform(-1, 1, (128, 130)).astype(np.float32)[::2].T  # (130, 64), both axes strided
    out = NB.compile(NB.candidates(problem)[0], problem)(xt, y)
    assert out.shape == xt.shape
    assert compare(out, _reference(problem, [xt, y]), problem).ok
    problem = Problem.make("matmul", {"B": 1, "M": 130, "N": 64, "K": 64}, "float32", {"activation": "relu"}, arity=3)
    bias = rng.uniform(-1, 1, 128).astype(np.float32)[::2]
    out = NB.compile(NB.candidates(problem)[0], problem)(xt, base[:, :64], bias)
    assert compare(out, _reference(problem, [xt, base[:, :64], bias]), problem).ok


def test_kernels_reject_mismatched_inputs_by_name():
    from uhop.errors import InputError

    problem = Problem.make("elementwise", {"N": 10}, "float32", {"expr": "x0*x1"})
    kernel = NB.compile(NB.candidates(problem)[0], problem)
    with pytest.raises(InputError, match="one size"):
        kernel(np.ones(10, np.float32), np.ones(9, np.float32))
    problem = Problem.make("layernorm", {"R": 4, "N": 8}, "float32", arity=2)
    with pytest.raises(InputError, match="weight"):
        NB.compile(NB.candidates(problem)[0], problem)(np.ones((4, 8), np.float32), np.ones(7, np.float32))
    problem = Problem.make("matmul", {"B": 1, "M": 4, "N": 8, "K": 3}, "float32", {"activation": "relu"}, arity=3)
    with pytest.raises(InputError, match="bias"):
        NB.compile(NB.candidates(problem)[0], problem)(np.ones((4, 3), np.float32), np.ones((3, 8), np.float32), np.ones(9, np.float32))


def test_compiled_functions_are_shared_between_configs():
    problem = Problem.make("elementwise", {"N": 999}, "float32", {"expr": "x0*2.5 - 1"})
    NB.compile(Candidate.of("numba", "fused", parallel=True, wide=True, chunk=64), problem)
    before = len(nbmod._nk()._compiled)
    NB.compile(Candidate.of("numba", "fused", parallel=True, wide=True, chunk=128), problem)
    assert len(nbmod._nk()._compiled) == before  # block size is a runtime argument: no recompile


LOAD = """
import json, sys
import numpy as np
from uhop.backends import get
from uhop.backends.base import Candidate
from uhop.problem import Problem
cases = [
    (Problem.make("softmax", {"R": 33, "N": 70}, "float32"), Candidate.of("numba", "rows", parallel=True, wide=False, rows=8)),
    (Problem.make("layernorm", {"R": 9, "N": 40}, "float64", {"eps": 1e-5}, arity=3),
     Candidate.of("numba", "rows", parallel=False, wide=False, rows=4)),
    (Problem.make("matmul", {"B": 1, "M": 8, "N": 16, "K": 5}, "float32", {"activation": "gelu_tanh"}, arity=3),
     Candidate.of("numba", "blas+epilogue", parallel=True, wide=False, rows=4)),
]
nb = get("numba")
for p, c in cases:
    xs = p.spec.make_inputs(p.dim, p.param, np.random.default_rng(0), p.dtype, p.arity)
    nb.compile(c, p)(*xs)
from uhop.backends import numba_kernels
fns = list(numba_kernels._compiled.values())
print(json.dumps({"hits": sum(sum(f.stats.cache_hits.values()) for f in fns),
                  "misses": sum(sum(f.stats.cache_misses.values()) for f in fns), "n": len(fns)}))
"""


def test_row_kernels_compiled_in_one_process_load_from_disk_in_the_next(tmp_path):
    """Row, epilogue and elementwise kernels are generated modules kept by numba's on-disk cache
    under UHOP_HOME: a second process (a warm start, an isolation worker) loads, never recompiles."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "UHOP_HOME": str(tmp_path)}
    runs = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["n"] == 3 and first["misses"] >= 3, first
    assert second["misses"] == 0 and second["hits"] >= 3, second


# ---- recycled outputs ---------------------------------------------------------------------------
BIG = (1 << 20) + 3  # float32 elements: just over OutputPool.MIN_BYTES


def test_recycled_outputs_validate_and_are_never_reused_while_referenced():
    problem = Problem.make("elementwise", {"N": BIG}, "float32", {"expr": CHAIN})
    cands = NB.candidates(problem)
    assert any(c.cfg.get("recycle") for c in cands) and any(not c.cfg.get("recycle") for c in cands)
    cand = next(c for c in cands if c.cfg.get("recycle"))
    _check(problem, cand, trials=3)  # includes the stale-output check on held previous outputs
    kernel = NB.compile(cand, problem)
    x = np.random.default_rng().uniform(-1, 1, BIG).astype(np.float32)
    a, b = kernel(x), kernel(x)  # both pooled, both held
    a_copy, b_address = a.copy(), b.ctypes.data
    c = kernel(-x)  # pool full and busy: a fresh array
    assert not np.shares_memory(a, c) and not np.shares_memory(b, c)
    del b
    d = kernel(2 * x)
    assert d.ctypes.data == b_address  # nobody held it any more: recycled
    np.testing.assert_array_equal(a, a_copy)
    del d
    view = kernel(x)[::2]  # only a view of that buffer survives
    view_copy = view.copy()
    e = kernel(-x)
    assert not np.shares_memory(e, view)
    np.testing.assert_array_equal(view, view_copy)
    np.testing.assert_array_equal(a, a_copy)
    del view, e
    out = kernel(x)
    assert not np.shares_memory(kernel(out), out)  # an input is never chosen as the output


def test_recycling_softmax_keeps_results_distinct():
    problem = Problem.make("softmax", {"R": 1025, "N": 1024}, "float32")
    cand = next(c for c in NB.candidates(problem) if c.cfg.get("recycle"))
    _check(problem, cand, trials=3)


# ---- dispatch -----------------------------------------------------------------------------------
def test_traced_numpy_function_dispatches_to_numba(tmp_path):
    with override(home=tmp_path, backends=("numba",), tune_budget_s=30.0):
        dispatch.clear_process_cache()

        @uhop.optimize("elementwise")
        def chain(x):
            return (1 / (1 + np.exp(-(x * 1.5 + 0.5)))) * x - 0.25

        x = np.random.default_rng().uniform(-3, 3, (257, 31)).astype(np.float32)
        out = chain(x)
        ref = (1 / (1 + np.exp(-(x.astype(np.float64) * 1.5 + 0.5)))) * x - 0.25
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
        assert out.dtype == np.float32 and out.shape == x.shape
        backends = {b.name for _, b, _ in dispatch._resolved.values()}
        assert backends == {"numba"}
        again = chain(x[::-1].copy())  # cache hit: same kernel, fresh output
        assert not np.shares_memory(again, out)
        dispatch.clear_process_cache()


def test_module_imports_without_numba_kernels():
    # the backend module must not import numba at import time (the probe reports a missing install)
    spec = importlib.util.find_spec("uhop.backends.numba")
    src = spec.loader.get_source("uhop.backends.numba")
    assert "\nimport numba" not in src and "\nfrom numba" not in src


def test_gemm_epilogues_never_start_numbas_pool_after_blas():
    """The GEMM + epilogue kernels run their epilogue serially: numba's OpenMP pool right after a
    multi-threaded BLAS call gained nothing where UHOP's thread policy reaches both pools, and in a
    process that imported torch before uhop (one libgomp, started with the default spin) it ran 3x
    slower from the main thread, while the tuner, timing from its own thread, saw no difference."""
    for dims, params in (({"B": 1, "M": 512, "N": 1024, "K": 1024}, {"activation": "gelu_tanh"}),
                         ({"B": 1, "M": 4096, "N": 64, "K": 64}, {"activation": "silu"}),
                         ({"B": 4, "M": 64, "N": 96, "K": 32}, {"activation": "relu", "batched_b": True})):  # fmt: skip
        problem = Problem.make("matmul", dims, "float32", params)
        epilogues = [c for c in NB.candidates(problem) if c.template == "blas+epilogue"]
        assert epilogues and all(c.cfg["parallel"] is False for c in epilogues), epilogues
        space = NB.space(problem)
        assert [p.choices for p in space.params if p.name == "parallel"] == [(False,)]
