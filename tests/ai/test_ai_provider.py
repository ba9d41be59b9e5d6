"""The provider against the local fake OpenAI-compatible server: replies, retries, Retry-After,
timeouts, malformed and huge replies, budgets; plus the prompt and code-extraction helpers."""

from __future__ import annotations

import email.utils
import time

import pytest

pytest.importorskip("openai", reason="needs the openai client: pip install 'uhop[ai]'")

from fake_server import Act, FakeOpenAI, code_reply  # noqa: E402

from uhop import config  # noqa: E402
from uhop.ai.prompt import MAX_CODE_BYTES, extract_code, template  # noqa: E402
from uhop.ai.provider import Budget, Provider, ProviderConfig, ProviderError, retry_after_s  # noqa: E402
from uhop.ai.report import parse_since  # noqa: E402

MSG = [{"role": "user", "content": "write a softmax kernel"}]


@pytest.fixture
def fake():
    with FakeOpenAI() as f:
        yield f


def provider(fake, **kw) -> Provider:
    opts = {"timeout_s": 5.0, "max_retries": 2, "backoff_s": 0.05, "max_backoff_s": 5.0, **kw}
    return Provider(ProviderConfig.resolve(fake.base_url, "fake-model", "sk-test", **opts))


def test_reply_text_tokens_and_request(fake):
    fake.push(code_reply("x = 1"))
    r = provider(fake).complete(MSG, max_tokens=123, temperature=0.2)
    assert "```python\nx = 1\n```" in r.text
    assert r.tokens_in > 0 and r.tokens_out > 0 and not r.usage_estimated and r.retries == 0
    req = fake.requests[0]
    assert req["model"] == "fake-model" and req["max_tokens"] == 123 and req["temperature"] == 0.2
    assert req["messages"] == MSG


def test_usage_missing_is_estimated(fake):
    fake.push(Act(text="```python\nx = 1\n```", usage=False))
    r = provider(fake).complete(MSG)
    assert r.usage_estimated and r.tokens_in == len(MSG[0]["content"]) // 4


def test_429_honours_retry_after(fake):
    fake.push(Act(kind="status", status=429, headers={"Retry-After": "1"}), code_reply("x = 1"))
    r = provider(fake, backoff_s=0.01).complete(MSG)
    assert r.retries == 1 and len(fake.requests) == 2
    gap = fake.times[1] - fake.times[0]
    assert gap >= 0.95, f"retried after {gap:.3f} s, Retry-After asked for 1 s"


def test_retry_after_is_capped(fake):
    fake.push(Act(kind="status", status=429, headers={"Retry-After": "3600"}), code_reply("x = 1"))
    t0 = time.monotonic()
    r = provider(fake, max_backoff_s=0.2).complete(MSG)
    assert r.retries == 1 and time.monotonic() - t0 < 30


def test_429_until_retries_run_out(fake):
    fake.push(*[Act(kind="status", status=429, headers={"Retry-After": "0"})] * 3)
    with pytest.raises(ProviderError) as ei:
        provider(fake, max_retries=2).complete(MSG)
    assert ei.value.category == "rate-limited" and ei.value.retries == 2 and len(fake.requests) == 3


def test_500s_are_retried_with_backoff(fake):
    fake.push(Act(kind="status", status=500), Act(kind="status", status=503), code_reply("x = 1"))
    r = provider(fake, max_retries=2, backoff_s=0.1).complete(MSG)
    assert r.retries == 2
    # exponential backoff with jitter in [0.5, 1] x 0.1 x 2**i: at least 0.05 s, then 0.1 s
    assert fake.times[1] - fake.times[0] >= 0.05 and fake.times[2] - fake.times[1] >= 0.1


def test_500_exhausted(fake):
    fake.push(Act(kind="status", status=500), Act(kind="status", status=500))
    with pytest.raises(ProviderError) as ei:
        provider(fake, max_retries=1).complete(MSG)
    assert ei.value.category == "server-error" and "500" in ei.value.reason


def test_4xx_is_not_retried(fake):
    fake.push(Act(kind="status", status=401), code_reply("x = 1"))
    with pytest.raises(ProviderError) as ei:
        provider(fake).complete(MSG)
    assert ei.value.category == "client-error" and len(fake.requests) == 1


def test_stalled_response_times_out(fake):
    fake.push(Act(kind="stall", delay_s=30, text="late"))
    t0 = time.monotonic()
    with pytest.raises(ProviderError) as ei:
        provider(fake, timeout_s=0.5, max_retries=0).complete(MSG)
    assert ei.value.category == "timeout"
    assert time.monotonic() - t0 < 15  # the 30 s stall was not waited out


@pytest.mark.parametrize(
    "act",
    [
        Act(
            kind="raw", body=b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "mess'
        ),  # truncated JSON
        Act(
            kind="raw", body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"
        ),  # wrong type
        Act(kind="raw", body=b"just text", content_type="text/plain"),
        Act(kind="raw", body=b'{"object": "chat.completion", "choices": []}'),  # no choices
        Act(text=""),  # empty content
    ],
    ids=["truncated-json", "html", "plain-text", "no-choices", "empty-content"],
)
def test_malformed_replies(fake, act):
    fake.push(act)
    with pytest.raises(ProviderError) as ei:
        provider(fake).complete(MSG)
    assert ei.value.category == "malformed-reply", ei.value
    assert len(fake.requests) == 1  # not retried: the server answered


def test_huge_reply_rejected_but_charged(fake):
    fake.push(code_reply("x = 1\n" + "# padding\n" * 400_000))  # ~4 MB of content
    with pytest.raises(ProviderError) as ei:
        provider(fake, max_reply_chars=200_000).complete(MSG)
    assert ei.value.category == "reply-too-large" and ei.value.tokens_out > 100_000


def test_budget_tokens_and_cost():
    b = Budget(max_tokens=1000, max_cost_usd=None, usd_per_mtok_in=2.0, usd_per_mtok_out=8.0)
    assert b.exhausted() is None and b.completion_cap(4096) == 1000
    b.charge(600, 300)
    assert b.completion_cap(4096) == 100 and b.exhausted() is None
    assert b.cost_usd == pytest.approx((600 * 2 + 300 * 8) / 1e6)
    b.charge(50, 50)
    assert "token budget" in b.exhausted()
    c = Budget(max_cost_usd=0.01, usd_per_mtok_in=1000.0)
    c.charge(11, 0)
    assert "cost budget" in c.exhausted()


def test_retry_after_parsing():
    assert retry_after_s({"retry-after": "7"}) == 7.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_s({"retry-after": when}) <= 31
    assert retry_after_s({}) is None and retry_after_s(None) is None


def test_config_from_env_and_errors(monkeypatch):
    monkeypatch.setenv("UHOP_AI_BASE_URL", "http://127.0.0.1:11434/v1/")
    monkeypatch.setenv("UHOP_AI_MODEL", "qwen2.5-coder")
    monkeypatch.setenv("UHOP_AI_API_KEY", "sk-env")
    config.reload()
    cfg = ProviderConfig.resolve()
    assert (cfg.base_url, cfg.model, cfg.api_key) == ("http://127.0.0.1:11434/v1", "qwen2.5-coder", "sk-env")
    assert ProviderConfig.resolve(model="other").model == "other"  # flags win
    monkeypatch.delenv("UHOP_AI_BASE_URL")
    config.reload()
    with pytest.raises(ValueError, match="base_url"):
        ProviderConfig.resolve()
    with pytest.raises(ValueError, match="base_url must be an http"):
        ProviderConfig.resolve("ftp://x", "m")
    with pytest.raises(ValueError, match="timeout_s"):
        ProviderConfig.resolve("http://x", "m", timeout_s=0)


def test_extract_code():
    code, why = extract_code(
        "Sure.\n```python\nimport numpy as np\nOP = 'softmax'\ndef run(x):\n    return x\n```\nDone."
    )
    assert code.startswith("import numpy") and why == ""
    code, _ = extract_code("```\nprint('helper')\n```\n```py\ndef run(x):\n    return x\n```")
    assert code.startswith("def run")  # the block that defines run
    assert extract_code("no code, sorry")[0] is None
    code, why = extract_code("```python\ndef run(x):\n    return x")  # cut off
    assert code is None and "not closed" in why
    code, why = extract_code("```python\n" + "x = 1\n" * (MAX_CODE_BYTES // 4) + "```")
    assert code is None and "limit" in why


def test_template_is_versioned_by_hash():
    t = template("kernel_v1")
    assert len(t.sha256) == 64 and "$op" in t.user and template("kernel_v1") is t
    with pytest.raises(ValueError, match="template must be one of kernel_v1"):
        template("nope")


def test_parse_since():
    assert parse_since("7d") == 7 * 86400 and parse_since("90") == 90 and parse_since(None) is None
    with pytest.raises(ValueError, match="since"):
        parse_since("7 days")


def test_prompt_holds_uhops_knowledge():
    from uhop.ai.prompt import PROMPT_CODE_CHARS, Best, build_messages
    from uhop.ops import get as get_op
    from uhop.problem import Problem

    p = Problem.make("matmul", get_op("matmul").parse_shape("96x80x64"), "float32", {"activation": "relu"})
    big = "def run(a, b):\n    return a @ b\n" + "# pad\n" * PROMPT_CODE_CHARS
    history = [
        {
            "round": 0,
            "variant": 0,
            "category": "wrong-result",
            "reason": "max abs error 3",
            "max_err": float("nan"),
        },
        {
            "round": 0,
            "variant": 1,
            "category": "ok",
            "reason": "",
            "max_err": 1e-6,
            "median_s": 2e-4,
            "code": big,
        },
    ]
    msgs = build_messages(template(), p, Best("numpy/eager", 4e-4, 0.08), history)
    system, user = msgs[0]["content"], msgs[1]["content"]
    assert msgs[0]["role"] == "system" and "def run(*inputs)" in system
    assert "matmul[" in user and '"activation": "relu"' in user and "def reference" in user
    assert "rtol=" in user and "FLOP" in user and "compute units" in user
    assert "numpy/eager: 400.0 us per call (spread 8.0%)" in user and "of the roofline bound" in user
    assert "round 0 variant 0: wrong-result: max abs error 3, time -" in user  # no "max err nan"
    assert "more characters cut" in user and len(user) < 3 * PROMPT_CODE_CHARS


def test_gpu_manifest_figures_in_prompt():
    from uhop.ai.prompt import hardware_text

    name, text = hardware_text("cuda:0", manifest="h100-sxm")
    assert name == "h100-sxm"
    for fig in (
        "shared mem per sm: 233472",
        "registers per sm: 65536",
        "warp size: 32",
        "wgmma",
        "memory bandwidth",
    ):
        assert fig in text, fig
