"""Validation trials drawn on the problem's device (``DeviceTrial``): the same math as the host
trials, real kernels checked through them. CI has no GPU, so these run the device code on torch's
CPU device (the code is device-generic; ``ValidationSet`` takes it for CUDA problems only)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from uhop import backends as bk  # noqa: E402
from uhop.measure import validate as vm  # noqa: E402
from uhop.problem import Problem  # noqa: E402

CASES = [
    ("softmax", {"R": 37, "N": 1000}, {}, None),
    ("layernorm", {"R": 19, "N": 333}, {"eps": 1e-5}, 3),
    ("rmsnorm", {"R": 19, "N": 333}, {"eps": 1e-6}, 2),
    ("elementwise", {"N": 5000}, {"expr": "gelu(x0)*x1+0.5*x0"}, 2),
    ("matmul", {"B": 1, "M": 33, "N": 17, "K": 65}, {"activation": "gelu"}, 3),
    ("attention", {"B": 2, "S": 9, "L": 13, "D": 8, "E": 8}, {"causal": True}, 3),
]


def _problem(op, dims, params, arity, dtype="float32"):
    return Problem.make(op, dims, dtype, params, arity=arity, device="cpu", array="torch")


@pytest.mark.parametrize("op,dims,params,arity", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_device_trial_matches_the_host_reference(op, dims, params, arity, dtype):
    p = _problem(op, dims, params, arity, dtype)
    rng = np.random.default_rng()
    t = vm.DeviceTrial.draw(p, rng, "uniform")
    assert t is not None
    want = p.spec.reference(*[x.astype(np.float64) for x in t.inputs], **p.param)  # numpy float64 on host copies
    np.testing.assert_allclose(t.reference, want, rtol=1e-12, atol=1e-14)
    assert t.shape == want.shape
    for x, hx in zip(t.dev_inputs, t.inputs, strict=True):
        assert str(x.dtype) == f"torch.{dtype}"
        if dtype == "bfloat16":  # host copies hold bfloat16 values exactly (round to nearest even)
            np.testing.assert_array_equal(vm._round_bf16(hx), hx)
        assert float(np.abs(hx).max()) <= 1.0 and np.any(hx != 0)
    # fresh draws: two trials differ
    t2 = vm.DeviceTrial.draw(p, rng, "uniform")
    assert not torch.equal(t.dev_inputs[0], t2.dev_inputs[0])


def test_elementwise_trials_are_drawn_on_the_device_and_the_flag_is_truthful(monkeypatch):
    """An elementwise chain's uniform inputs are drawn on the device (on the H100 its trials of
    2 x 64M elements were drawn by the host's RNG: only the baseline was timed in the budget),
    with as many inputs as the expression has; every op claiming ``uniform_inputs`` draws uniform
    [-1, 1) inputs on the host too, as many as ``input_count`` says."""
    from uhop.ops import REGISTRY

    drawn = []
    monkeypatch.setattr(vm, "draw_inputs", lambda *a, **k: drawn.append(a) or pytest.fail("drawn on the host"))
    p = _problem("elementwise", {"N": 4096}, {"expr": "gelu(x0)*x1+0.5*x0"}, None)
    t = vm.DeviceTrial.draw(p, np.random.default_rng(), "uniform")
    assert t is not None and len(t.dev_inputs) == 2 and not drawn
    monkeypatch.undo()
    for name, spec in REGISTRY.items():
        case = next((c for c in CASES if c[0] == name), None)
        if case is None or not spec.uniform_inputs:
            continue
        _, dims, params, arity = case
        pp = spec.normalize_params(params)
        xs = spec.make_inputs(dims, pp, np.random.default_rng(), "float32", arity)
        assert len(xs) == spec.input_count(pp, arity), name
        assert all(float(np.abs(x).max()) <= 1.0 for x in xs), name
    assert not REGISTRY["embedding"].uniform_inputs


def test_other_distributions_come_from_the_host_generator():
    p = _problem("softmax", {"R": 8, "N": 64}, {}, None)
    t = vm.DeviceTrial.draw(p, np.random.default_rng(1), "scaled")
    assert t is not None and float(np.abs(t.inputs[0]).max()) > 1.0  # scaled beyond [-1, 1)


def test_validation_set_on_device_checks_real_kernels(monkeypatch):
    monkeypatch.setattr(vm, "_device_trials_possible", lambda problem: True)
    p = _problem("layernorm", {"R": 64, "N": 300}, {"eps": 1e-5}, 3)
    vset = vm.ValidationSet(p, trials=2)
    assert all(isinstance(t, vm.DeviceTrial) for t in vset.trials)
    torch_backend = bk.get("torch")
    cand = torch_backend.candidates(p)[0]
    kernel = torch_backend.compile(cand, p)
    v = vm.check_kernel(kernel, vset, "torch", "cpu")
    assert v.ok, v.reason
    xs = vset.native_inputs(vset.trials[0], "torch", "cpu")
    assert xs[0].data_ptr() != vset.trials[0].dev_inputs[0].data_ptr()  # a copy per call

    def no_bias(x, w, b):
        return kernel(x, w, None)

    bad = vm.check_kernel(no_bias, vset, "torch", "cpu")
    assert not bad.ok and bad.status == "wrong-result"
    assert torch.equal(vset.device_reference(0, "cpu"), vset.trials[0].dev_reference)


def test_a_tuning_run_on_device_trials_validates_every_backend(monkeypatch, tmp_path):
    """The tuner end to end on device trials (here: torch's CPU device): torch kernels take the
    device fast path, numpy and numba kernels the host copies, and the pick is valid."""
    from uhop import config
    from uhop.store import open_store
    from uhop.tune.tuner import tune

    monkeypatch.setattr(vm, "_device_trials_possible", lambda problem: True)
    monkeypatch.setenv("UHOP_HOME", str(tmp_path))
    config.reload()
    p = _problem("softmax", {"R": 256, "N": 1000}, {}, None)
    made = []
    real = vm.DeviceTrial.draw.__func__

    def counting(cls, *a, **k):
        t = real(cls, *a, **k)
        made.append(t)
        return t

    monkeypatch.setattr(vm.DeviceTrial, "draw", classmethod(counting))
    with config.override(isolate="never"):
        res = tune(problem=p, policy="tune", store=open_store(), budget_s=20)
    assert made and all(t is not None for t in made)
    # validated on the device trials: ok, or too slow at its first timed call (validation comes
    # first; whether torch's softmax is within 3x of numba's 72 us here is the machine's load)
    ok = [m for m in res.measurements if m.ok or (m.status == "too-slow" and "not validated" not in m.reason)]
    assert len({m.candidate.backend for m in ok}) >= 2, [(m.candidate.id, m.status, m.reason) for m in res.measurements]
    x = torch.randn(256, 1000)
    torch.testing.assert_close(torch.as_tensor(res.kernel(x)), torch.softmax(x, -1), rtol=1e-5, atol=1e-6)
    config.reload()


@pytest.mark.parametrize("distribution", ["uniform", "scaled"])
def test_mixed_dtype_trials_hold_each_input_in_its_dtype(distribution):
    """An elementwise problem of mixed input dtypes: device and host trials draw each input in its
    own dtype (bfloat16 rounded to nearest even on both), the reference from those values, and
    the torch kernel (promoting as torch does) passes on both."""
    p = _problem("elementwise", {"N": 37 * 129, "C": 129}, {"expr": "sigmoid(x0*x1)*x0-x2", "bcast": "frs",
                 "reduce": "sum", "dtypes": "bfloat16,float32,float16"}, 3)  # fmt: skip
    want = [torch.bfloat16, torch.float32, torch.float16]
    rng = np.random.default_rng()
    dev = vm.DeviceTrial.draw(p, rng, distribution)
    assert dev is not None and [x.dtype for x in dev.dev_inputs] == want
    host = vm.ValidationSet(p, trials=1, distributions=[distribution])
    assert [x.dtype for x in host.native_inputs(host.trials[0], "torch", "cpu")] == want
    for t in (dev, host.trials[0]):
        np.testing.assert_array_equal(vm._round_bf16(t.inputs[0]), t.inputs[0])
        assert [x.dtype for x in t.inputs] == [np.float32, np.float32, np.float16]
        ref = p.spec.reference(*[x.astype(np.float64) for x in t.inputs], **p.param)
        np.testing.assert_allclose(t.reference, ref, rtol=1e-12, atol=1e-12)
    vs = vm.ValidationSet(p, trials=0)
    vs.trials = [dev, host.trials[0]]
    tb = bk.get("torch")
    v = vm.check_kernel(tb.compile(tb.candidates(p)[0], p), vs, "torch", "cpu")
    assert v.ok, v


@pytest.mark.parametrize("on_device", [False, True], ids=["host", "device"])
def test_inputs_only_sets_compute_no_reference(monkeypatch, on_device):
    """``references=False`` (timing a kernel, as ``uhop.ai.promote.served_timing`` does) draws the
    same inputs and never runs the float64 reference, on the host or the device path."""
    monkeypatch.setattr(vm, "_device_trials_possible", lambda problem: on_device)
    p = _problem("layernorm", {"R": 16, "N": 300}, {"eps": 1e-5}, 3)
    calls = []
    spec = p.spec
    for name in ("reference", "reference_torch"):
        real = getattr(spec, name)
        monkeypatch.setattr(spec, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    vset = vm.ValidationSet(p, trials=2, references=False)
    assert calls == [] and len(vset.trials) == 2
    for t in vset.trials:
        assert isinstance(t, vm.DeviceTrial) == on_device
        xs = vset.native_inputs(t, "torch", "cpu")
        assert [tuple(x.shape) for x in xs] == [(16, 300), (300,), (300,)]
    assert not torch.equal(*(vset.native_inputs(t, "torch", "cpu")[0] for t in vset.trials))  # fresh draws
    vm.ValidationSet(p, trials=1)
    assert calls  # the default set computes its reference
