"""``uhop.ops`` on CUDA tensors through the tensor guard (see ``uhop.dispatch.KernelCache``): the
guard tells devices apart, and a guarded call returns what the key path returns. Skipped without
a GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # marked gpu and skipped without one: tests/gpu/conftest.py

import uhop  # noqa: E402
from uhop import config  # noqa: E402
from uhop.dispatch import _direct_cache, clear_process_cache  # noqa: E402


def test_cuda_and_cpu_tensors_of_one_shape_keep_their_own_kernels():
    clear_process_cache()
    g = torch.randn(64, 1000, device="cuda", dtype=torch.bfloat16)
    c = g.float().cpu().to(torch.bfloat16)
    with config.override(policy="tune", tune_budget_s=5):
        for _ in range(2):
            for x in (g, c):
                y = uhop.ops.softmax(x)
                assert y.device == x.device
                torch.testing.assert_close(y.double().cpu(), torch.softmax(x.double(), -1).cpu(), rtol=2e-2, atol=2e-3)
    guards = _direct_cache.guarded["softmax"]
    assert len(guards) == 2
    assert [e[2].check(g) for e in guards].count(True) == 1
    assert [e[2].check(c) for e in guards].count(True) == 1
    clear_process_cache()
