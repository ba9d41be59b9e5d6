"""The one-kernel gated MLP projection (``act(x @ Wg.T) * (x @ Wu.T)``) on a CUDA GPU: every
config UHOP would try for a Llama-style and a small-K shape, against float64 of the same inputs,
including an output width whose rows are not 16-byte aligned (the TMA store falls back)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize(("m", "n", "k"), [(300, 1000, 256), (2048, 1376, 512), (77, 129, 96)])
def test_every_config_matches_float64(m, n, k):
    from uhop.backends.triton_kernels import limits, swiglu

    lim = limits("cuda:0")
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    wg, wu = (torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(2))
    want = F.silu(x.double() @ wg.double().T) * (x.double() @ wu.double().T)
    cands = swiglu.tiles(m, n, k, 2, lim.hopper, lim.fits)
    assert cands
    for template, cfg in cands:
        got = swiglu.make(template, cfg, "silu", lim.sm_count)(x, wg, wu)
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()),
                                   msg=lambda s, t=template, c=cfg: f"{t}{c}: {s}")  # fmt: skip
