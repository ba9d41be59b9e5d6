"""uhop.backends.triton_kernels.launch without a GPU: the direct launcher's specialization key is
at least as fine as Triton's own (two arguments it files together, Triton files together: a
cached compiled kernel is never reused for an argument Triton would compile differently), and
under the CPU interpreter it is the plain JIT call. Direct launches on a GPU:
tests/gpu/test_triton_launch_gpu.py."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from uhop.backends.triton_kernels.launch import Launcher, _Plain, _spec  # noqa: E402


def _triton_spec(a):
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    return native_specialize_impl(CUDABackend, a, False, True, True)


def test_key_is_at_least_as_fine_as_tritons():
    rng = random.Random(0)
    ints = [0, 1, 2, 15, 16, 17, 32, -1, -16, 2**31 - 16, 2**31 - 1, 2**31, 2**31 + 16, -(2**31), -(2**31) - 16,
            2**62, 2**63, 2**64 - 16, 2**64 - 1]  # fmt: skip
    ints += [rng.randrange(-(2**40), 2**40) for _ in range(300)] + [16 * rng.randrange(1, 2**20) for _ in range(100)]
    base = torch.zeros(64)
    tensors = [base, base[1:], base[4:], base[3:], base.to(torch.bfloat16), base.to(torch.bfloat16)[8:],
               base.to(torch.bfloat16)[1:], base.to(torch.int32), base.to(torch.float16)[2:]]  # fmt: skip
    args = ints + tensors + [True, False, 0.5, 1.0, float("nan"), None]
    seen: dict = {}
    for a in args:
        seen.setdefault(_spec(a), set()).add(_triton_spec(a))
    assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}


def test_other_argument_types_take_the_jit_path():
    import numpy as np

    for a in (np.int64(16), (1, 2), "s"):
        with pytest.raises(_Plain):
            _spec(a)


def test_interpreter_runs_the_plain_jit_call(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import importlib

    import triton.language as tl

    from uhop.backends.triton_kernels import fix_interpreter

    fix_interpreter()

    @triton.jit
    def k(x_ptr, y_ptr, n, s, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m) * s, mask=m)

    importlib.invalidate_caches()
    x = torch.randn(300, dtype=torch.float64)
    y = torch.empty_like(x)
    launch = Launcher(k)
    launch((3,), x, y, 300, 2.5, BLOCK=128)
    assert launch._direct is False
    assert torch.equal(y, x * 2.5)


def test_arguments_outside_the_key_take_the_jit_path(monkeypatch):
    """A numpy int, an unhashable keyword value: the plain JIT call, every time, nothing cached."""
    import numpy as np

    calls = []

    class FakeJit:  # stands in for a JITFunction: records what its [grid](...) call got
        def __getitem__(self, grid):
            return lambda *a, **k: calls.append((grid, a, k)) or "compiled"

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    launch = Launcher(FakeJit())
    launch._direct = True  # as on a GPU
    x = torch.zeros(8)
    assert launch((1,), x, np.int64(16), BLOCK=8) == "compiled"
    assert launch((1,), x, 16, OPTS=[1, 2]) == "compiled"
    assert len(calls) == 2 and launch._cache == {}
