"""The one-kernel gated MLP projection (``act(x @ Wg.T) * (x @ Wu.T)``) on a CUDA GPU: every
config UHOP would try for a Llama-style and a small-K shape, against float64 of the same inputs,
including an output width whose rows are not 16-byte aligned (the TMA store falls back)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("m", "n", "k"), [(300, 1000, 256), (2048, 1376, 512), (77, 129, 96)])
def test_every_config_matches_float64(m, n, k, dtype):
    from uhop.backends.triton_kernels import limits, swiglu

    lim = limits("cuda:0")
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    wg, wu = (torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5 for _ in range(2))
    want = F.silu(x.double() @ wg.double().T) * (x.double() @ wu.double().T)
    cands = swiglu.tiles(m, n, k, x.element_size(), lim.hopper, lim.fits)
    assert cands
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4  # float32: ieee products (no tf32 rounding)
    for template, cfg in cands:
        got = swiglu.make(template, cfg, "silu", lim.sm_count)(x, wg, wu)
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * float(want.abs().max()),
                                   msg=lambda s, t=template, c=cfg: f"{t}{c}: {s}")  # fmt: skip
