"""Honest kernel files pass the sandboxed validator; the validator's own machinery (shapes,
classification, limits, overhead) behaves as documented."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sandbox_cases import HONEST

from uhop.problem import Problem
from uhop.sandbox.check import SHAPES, check, check_file, problems_for
from uhop.sandbox.kernelfile import StaticPolicy, load
from uhop.sandbox.worker import Limits, Worker, WorkerPool, resolve_isolation

HONEST_NUMPY = [p for p in HONEST if "torch" not in p.read_text()]


@pytest.mark.parametrize("path", HONEST_NUMPY, ids=lambda p: p.stem)
def test_honest_numpy_kernels_pass_and_are_timed(path):
    res = check_file(path)
    assert res.ok, res.line()
    assert math.isfinite(res.median_s) and res.median_s > 0
    assert res.sha256 == load(path).sha256 and len(res.sha256) == 64
    assert len(res.shapes) >= 2
    assert res.line().startswith("ok: ")


def test_honest_torch_kernel_passes():
    pytest.importorskip("torch", reason="torch not installed (pip install 'uhop[torch]')")
    res = check_file(Path(__file__).parent / "honest" / "rmsnorm_torch.py", time_it=False)
    assert res.ok, res.line()


def test_honest_triton_kernel_passes():
    pytest.importorskip("triton", reason="Triton not installed (pip install 'uhop[gpu]')")
    # The Triton interpreter runs one program per row in Python: small shapes keep this fast.
    res = check_file(Path(__file__).parent / "honest" / "softmax_triton.py", shapes=["5x7", "3x33"], time_it=False)
    assert res.ok, res.line()


def test_validation_shapes_cover_every_op():
    from uhop.ops import REGISTRY

    assert set(SHAPES) == set(REGISTRY)
    for op, shapes in SHAPES.items():
        assert len(shapes) >= 2
        for s in shapes:
            REGISTRY[op].parse_shape(s)


@settings(max_examples=4, deadline=None)
@given(r=st.sampled_from([1, 2, 3, 7, 13]), n=st.sampled_from([1, 5, 17, 31, 127]))
def test_honest_softmax_at_odd_shapes(r, n):
    kf = load(Path(__file__).parent / "honest" / "softmax_numpy.py")
    probs = [Problem.make("softmax", {"R": r, "N": n}, "float32"), Problem.make("softmax", {"R": r + 2, "N": n + 1}, "float32")]
    res = check(kf, probs, trials=2, time_it=False)
    assert res.ok, res.line()


def test_float64_and_params(tmp_path):
    f = tmp_path / "relu_mm.py"
    f.write_text(
        "import numpy as np\nOP = 'matmul'\nPARAMS = {'activation': 'relu'}\nDTYPES = ('float64',)\n"
        "def run(a, b):\n    return np.maximum(a @ b, 0.0)\n"
    )
    res = check_file(f, dtype="float64", time_it=False)
    assert res.ok, res.line()
    assert "activation=relu" in res.shapes[0]
    assert not check_file(f, dtype="float32").ok  # not declared in DTYPES


def test_grouped_query_attention_file_gets_whole_groups(tmp_path):
    """A kernel file for grouped-query attention (PARAMS kv_groups=4) is validated at the default
    shapes with their batch-heads rounded to whole groups of two k/v heads at least; one that gets
    the grouping wrong (k/v of query head i read as head i % n, not i // 4) is rejected."""
    body = ("import numpy as np\nOP = 'attention'\nPARAMS = {'kv_groups': 4}\n"
            "def run(q, k, v):\n    k, v = {expand}\n"
            "    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])\n"
            "    p = np.exp(s - s.max(-1, keepdims=True))\n"
            "    return ((p / p.sum(-1, keepdims=True)) @ v).astype(q.dtype)\n")  # fmt: skip
    good, bad = tmp_path / "gqa.py", tmp_path / "gqa_tiled.py"
    good.write_text(body.replace("{expand}", "np.repeat(k, 4, axis=-3), np.repeat(v, 4, axis=-3)"))
    bad.write_text(body.replace("{expand}", "np.tile(k, (4, 1, 1)), np.tile(v, (4, 1, 1))"))
    res = check_file(good, time_it=False)
    assert res.ok, res.line()
    assert all("kv_groups=4" in s for s in res.shapes), res.shapes
    res = check_file(bad, time_it=False)
    # whole heads right (those whose i % n is i // 4) and whole heads wrong: the wrong region has a
    # skipped block's shape, so it may be reported as a partial write; rejected either way
    assert not res.ok and res.category in ("wrong-result", "partial-write"), res.line()


@pytest.mark.parametrize(
    "text,category",
    [
        ("OP = 'softmax'\n", "bad-file"),
        ("def run(x):\n    return x\n", "bad-file"),
        ("OP = 'nope'\ndef run(x):\n    return x\n", "bad-file"),
        ("OP = 'softmax'\ndef run(x:\n", "bad-file"),
        ("OP = 'softmax'\nimport os\ndef run(x):\n    return x\n", "forbidden"),
    ],
)
def test_malformed_files(tmp_path, text, category):
    f = tmp_path / "k.py"
    f.write_text(text)
    res = check_file(f)
    assert res.category == category, res.line()


def test_op_mismatch(tmp_path):
    res = check_file(Path(__file__).parent / "honest" / "softmax_numpy.py", op="matmul")
    assert res.category == "bad-file" and "softmax" in res.reason


def test_isolation_layers_reported():
    iso = resolve_isolation()
    with Worker(iso, Limits()) as w:
        layers = w.load("OP = 'softmax'\ndef run(x):\n    return x.copy()\n", "k.py")
    assert {"rlimits", "seccomp"} <= set(layers)
    assert ("bwrap" in layers) == (iso == "bwrap")
    print(f"sandbox layers: {'+'.join(layers)}")


def test_crashed_worker_is_discarded_and_the_next_one_is_fresh():
    wp = WorkerPool(limits=Limits(wall_s=5))
    try:
        w = wp.take()
        w.load("import numpy as np\nOP = 'softmax'\ndef run(x):\n    np.lib.stride_tricks.as_strided(x, (4,), (1 << 44,)).sum()\n", "k.py")
        with pytest.raises(Exception) as info:
            w.request({"cmd": "call", "slot": 0, "repeat": 1}, [np.ones((2, 2), np.float32)])
        assert getattr(info.value, "category", "") == "crash"
        assert w.dead
        w2 = wp.take()
        w2.load("OP = 'softmax'\ndef run(x):\n    return x + 1\n", "k.py")
        _, out = w2.request({"cmd": "call", "slot": 0, "repeat": 1}, [np.ones((2, 2), np.float32)])
        assert np.array_equal(out[0], np.full((2, 2), 2, np.float32))
        w2.kill()
    finally:
        wp.close()


def test_sandbox_overhead_per_candidate():
    """Start (from the warm spare) + load + one call's transfer, beyond the kernel's own time.
    The budget is 100 ms on an idle 2-core CPU; the assertion leaves room for a loaded CI box."""
    kf = load(Path(__file__).parent / "honest" / "softmax_numpy.py")
    probs = problems_for(kf)
    wp = WorkerPool()
    try:
        check(kf, probs, time_it=False, workers=wp)  # warms the spare
        time.sleep(1.0)  # let the spare finish starting, as it does while the previous candidate runs
        res = check(kf, probs, time_it=True, workers=wp)
    finally:
        wp.close()
    assert res.ok, res.line()
    print(f"sandbox overhead per candidate: {res.overhead_s * 1e3:.1f} ms (start+load {res.details['start_load_s'] * 1e3:.1f} ms, "
          f"round trip {res.details['timing']['rtt_s'] * 1e6:.0f} us)")
    assert res.overhead_s < 0.5


def test_builtin_syscall_table_matches_libseccomp():
    """The x86-64 BPF filter is built from our own table: check it against libseccomp's."""
    sc = pytest.importorskip("pyseccomp")
    from uhop.sandbox import syscall_filter

    for name, nr in syscall_filter.X86_64.items():
        got = sc.resolve_syscall(sc.Arch.X86_64, name)
        assert (got.decode() if isinstance(got, bytes) else got) == nr, name
    assert set(syscall_filter.DENY) | set(syscall_filter.WRITES) <= set(syscall_filter.X86_64)


def test_filter_covers_every_thread(tmp_path):
    """TSYNC: the BLAS threads started before the filter are filtered too (mode 2 everywhere)."""
    from uhop.sandbox.kernelfile import StaticPolicy

    f = tmp_path / "modes.py"
    f.write_text(
        "import glob\nOP = 'softmax'\ndef run(x):\n    modes = []\n"
        "    for p in glob.glob('/proc/self/task/*/status'):\n"
        "        modes += [ln.split()[1] for ln in open(p) if ln.startswith('Seccomp:')]\n"
        "    raise RuntimeError('modes ' + ','.join(modes))\n"
    )
    res = check_file(f, policy=StaticPolicy(enabled=False), time_it=False)
    modes = res.reason.split("modes ")[1].split(",")
    assert modes and set(modes) == {"2"}, res.reason


def test_spare_worker_follows_environment_changes(monkeypatch, tmp_path):
    """A spare started under other settings (TRITON_INTERPRET here) is not handed out."""
    f = tmp_path / "env.py"
    f.write_text("import os\nOP = 'softmax'\ndef run(x):\n    raise RuntimeError('mode=' + os.environ.get('TRITON_INTERPRET', 'unset'))\n")
    wp = WorkerPool()
    try:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        kf = load(f, StaticPolicy(enabled=False))
        assert check(kf, problems_for(kf), workers=wp).reason.endswith("mode=1")
        monkeypatch.delenv("TRITON_INTERPRET")
        assert check(kf, problems_for(kf), workers=wp).reason.endswith("mode=unset")
    finally:
        wp.close()


def test_off_by_one_percent_everywhere_is_a_wrong_result_not_a_partial_write():
    # near-zero reference values stay within tolerance of a 1%-off result, so a few elements
    # of every row are "right"; that must not read as rows the kernel never wrote
    import numpy as np

    from uhop.problem import Problem
    from uhop.sandbox.check import _is_partial

    rng = np.random.default_rng()
    p = Problem.make("matmul", {"B": 1, "M": 37, "N": 31, "K": 61}, "float32")
    a, b = rng.uniform(-1, 1, (37, 61)), rng.uniform(-1, 1, (61, 31))
    ref = a @ b
    # scattered near-zero values (1.3%, as in the CI run): within tolerance of any 1% error
    ref.reshape(-1)[rng.choice(ref.size, ref.size // 75, replace=False)] = 1e-9
    assert not _is_partial((ref * 1.01).astype(np.float32), ref, p, None)
    missed = ref.astype(np.float32).copy()
    missed[:, -5:] = rng.uniform(-50, 50, (37, 5))  # a missed tail tile: garbage in whole columns
    assert _is_partial(missed, ref, p, None)
