"""The AI factory on a GPU (skipped without one): a generated Triton CUDA kernel goes through
the GPU sandbox (the tool broker compiles it) and is judged as it would be served to CUDA
callers, against the store's in-process kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openai", reason="needs the openai client: pip install 'uhop[ai]'")
torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from fake_server import FakeOpenAI, code_reply  # noqa: E402

from uhop.ai import FactoryOptions, generate  # noqa: E402
from uhop.store import open_store  # noqa: E402

TRITON_CUDA = (Path(__file__).parents[1] / "sandbox" / "honest" / "softmax_triton_cuda.py").read_text()


def test_generated_triton_cuda_kernel_is_checked_and_judged_as_served(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with FakeOpenAI() as fake:
        fake.push(code_reply(TRITON_CUDA))
        res = generate("softmax", "512x1000", device="cuda", rounds=1, variants=1,
                       options=FactoryOptions(baseline="tune", check_wall_s=120.0), base_url=fake.base_url,
                       model="fake-coder", api_key="sk-test", timeout_s=5.0, max_retries=1, backoff_s=0.05)  # fmt: skip
    (a,) = res.attempts
    assert a.category == "ok", a.reason
    assert a.median_s > 0 and res.baseline_s is not None
    # served through the host (copies both ways plus the worker's round trip), it does not beat
    # the in-process kernel the tuning stored; the entry stays that kernel
    entry = open_store().get(res.key)
    assert a.promoted == (entry.candidate["backend"] == "user")
    if not a.promoted:
        assert a.median_s > res.baseline_s
