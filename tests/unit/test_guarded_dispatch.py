"""``uhop.ops`` on torch tensors: a signature seen once is served through torch's C++ tensor guard
instead of the Python key (see ``uhop.dispatch.KernelCache``). A guard hit must always be the
kernel the key would find, including after background tuning swaps a kernel in."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import uhop  # noqa: E402
from uhop import config  # noqa: E402
from uhop.dispatch import _direct_cache, call_sig  # noqa: E402


def _ref_softmax(x):
    return torch.softmax(x.double(), -1)


def _close(y, ref):
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)


def test_second_call_is_served_by_a_guard_on_the_keyed_kernel():
    x = torch.randn(6, 33)
    with config.override(policy="tune", tune_budget_s=3):
        _close(uhop.ops.softmax(x), _ref_softmax(x))  # tunes, keys the kernel
        x2 = torch.randn(6, 33)
        _close(uhop.ops.softmax(x2), _ref_softmax(x2))  # key path hit: the guard is built
    (n, params, guard, k), = _direct_cache.guarded["softmax"]
    assert (n, params) == (1, {})
    assert k is _direct_cache[call_sig("softmax", (x,), {})]
    x3 = torch.randn(6, 33)
    assert guard.check(x3)
    _close(uhop.ops.softmax(x3), _ref_softmax(x3))


def test_a_kernel_swapped_in_is_served_at_once():
    """Background tuning replaces an interim kernel by a write to the cache: every guard goes."""
    x = torch.randn(5, 17)
    with config.override(policy="tune", tune_budget_s=3):
        uhop.ops.softmax(x)
        uhop.ops.softmax(x)
    assert "softmax" in _direct_cache.guarded
    calls = []

    def swapped(t):
        calls.append(1)
        return torch.softmax(t, -1)

    _direct_cache[call_sig("softmax", (x,), {})] = swapped
    assert _direct_cache.guarded == {}
    _close(uhop.ops.softmax(x), _ref_softmax(x))
    _close(uhop.ops.softmax(x), _ref_softmax(x))  # now through the rebuilt guard
    assert len(calls) == 2 and _direct_cache.guarded["softmax"][0][3] is swapped


def test_other_strides_dtypes_and_params_do_not_pass_the_guard():
    a = torch.randn(9, 9)
    with config.override(policy="tune", tune_budget_s=3):
        for _ in range(2):
            uhop.ops.softmax(a)
        (_, _, guard, _), = _direct_cache.guarded["softmax"]
        t = torch.randn(9, 9).t()  # same shape, transposed strides
        d = torch.randn(9, 9, dtype=torch.float64)
        assert not guard.check(t) and not guard.check(d) and not guard.check(torch.randn(9, 10))
        for y, x in ((uhop.ops.softmax(t), t), (uhop.ops.softmax(d), d)):
            _close(y, _ref_softmax(x))
        m, w = torch.randn(7, 8), torch.randn(8, 5)
        for _ in range(2):
            _close(uhop.ops.matmul(m, w), m.double() @ w.double())
        # the same tensors with an activation are another problem, never the guarded plain GEMM
        ref = torch.nn.functional.relu(m.double() @ w.double())
        _close(uhop.ops.matmul(m, w, activation="relu"), ref)


def test_at_most_a_few_signatures_per_op_are_guarded():
    with config.override(policy="fast"):
        xs = [torch.randn(3, n) for n in range(10, 17)]
        for _ in range(2):
            for x in xs:
                _close(uhop.ops.softmax(x), _ref_softmax(x))
    assert len(_direct_cache.guarded["softmax"]) == uhop.dispatch.GUARDED_PER_OP < len(xs)


def test_decorated_function_on_torch_tensors_is_served_by_a_guard_too():
    @uhop.optimize("softmax", policy="tune")
    def soft(x):
        return torch.softmax(x, -1)

    x = torch.randn(4, 21)
    with config.override(tune_budget_s=3):
        for _ in range(2):
            _close(soft(x), _ref_softmax(x))
    (n, _, guard, k), = soft._kernels.guarded[""]
    assert n == 1 and guard.check(x) and k is next(iter(soft._kernels.values()))
    y = torch.randn(4, 21)
    _close(soft(y), _ref_softmax(y))
    t = torch.randn(21, 4).t()  # transposed: a new signature, tuned and cached (guards dropped)
    _close(soft(t), _ref_softmax(t))
    for z in (t, y):  # each back through the key path once, then guarded
        _close(soft(z), _ref_softmax(z))
    assert [e[2].check(t) for e in soft._kernels.guarded[""]] == [True, False]


def test_guards_under_concurrent_swaps():
    """Calls keep returning correct results while another thread keeps swapping the kernel (as
    background tuning does): a reader never sees a half-built guard table."""
    import threading
    import time

    x = torch.randn(8, 40)
    with config.override(policy="tune", tune_budget_s=3):
        uhop.ops.softmax(x)
    sig = call_sig("softmax", (x,), {})
    stop = threading.Event()

    def swapper():
        kernels = [lambda t: torch.softmax(t, -1), lambda t: torch.softmax(t.double(), -1).float()]
        i = 0
        while not stop.is_set():
            _direct_cache[sig] = kernels[i % 2]
            i += 1
            time.sleep(0)  # let the caller run between swaps

    t = threading.Thread(target=swapper)
    t.start()
    try:
        ref = _ref_softmax(x)
        for _ in range(500):
            _close(uhop.ops.softmax(x), ref)
    finally:
        stop.set()
        t.join()
