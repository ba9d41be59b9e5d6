"""The model provider: any OpenAI-compatible chat-completions endpoint (a hosted API, vLLM,
Ollama, a llama.cpp server) through the official ``openai`` client.

Settings come from flags or ``UHOP_AI_BASE_URL``, ``UHOP_AI_MODEL``, ``UHOP_AI_API_KEY``. The
client's own retries are off: :meth:`Provider.complete` retries 429, 5xx, timeouts and dropped
connections itself with exponential backoff, honouring ``Retry-After`` (capped at
``max_backoff_s``), so every retry and every second waited is counted in the attempt's record.
A :class:`Budget` caps the tokens and the money one run may spend.

Failures are values of one exception type, :class:`ProviderError`, whose ``category`` is one of
:data:`CATEGORIES`; the refinement loop records it as the attempt's verdict and goes on.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

#: verdict categories of a request that produced no usable reply
CATEGORIES = ("rate-limited", "server-error", "timeout", "connection", "client-error", "malformed-reply",
              "reply-too-large", "budget")  # fmt: skip

_INSTALL = "pip install 'uhop[ai]'"


class ProviderError(Exception):
    """A request that produced no usable reply. ``category`` is one of :data:`CATEGORIES`;
    ``tokens_in``/``tokens_out`` what it was charged (0 when the server never answered)."""

    def __init__(self, category: str, reason: str, *, tokens_in: int = 0, tokens_out: int = 0,
                 wall_s: float = 0.0, retries: int = 0) -> None:  # fmt: skip
        super().__init__(f"{category}: {reason}")
        self.category, self.reason = category, reason[:500]
        self.tokens_in, self.tokens_out, self.wall_s, self.retries = tokens_in, tokens_out, wall_s, retries


@dataclass(frozen=True)
class ProviderConfig:
    """Where and how to ask. Times in seconds; ``max_tokens`` is the completion cap per request;
    ``max_reply_chars`` rejects a larger reply (``reply-too-large``) before anything parses it."""

    base_url: str
    model: str
    api_key: str = "unused"  # local servers (vLLM, Ollama, llama.cpp) ignore it; the client needs one
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_tokens: int = 4096
    temperature: float = 0.7
    max_reply_chars: int = 200_000

    @classmethod
    def resolve(cls, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                **options: Any) -> ProviderConfig:  # fmt: skip
        """Flags first, then ``UHOP_AI_BASE_URL`` / ``UHOP_AI_MODEL`` / ``UHOP_AI_API_KEY``."""
        from uhop.config import settings

        env = settings()
        base_url = base_url or env.ai_base_url
        model = model or env.ai_model
        if not base_url:
            raise ValueError(
                "base_url is required: pass --base-url URL (e.g. http://127.0.0.1:8000/v1) or set UHOP_AI_BASE_URL"
            )
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not model:
            raise ValueError("model is required: pass --model NAME or set UHOP_AI_MODEL")
        key = api_key or env.ai_api_key or cls.api_key
        cfg = cls(base_url=base_url.rstrip("/"), model=model, api_key=key)
        opts = {k: v for k, v in options.items() if v is not None}
        cfg = replace(cfg, **opts)
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            if not getattr(cfg, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(cfg, name)}")
        if cfg.max_retries < 0 or cfg.max_tokens < 1 or cfg.max_reply_chars < 1:
            raise ValueError("max_retries must be >= 0, max_tokens and max_reply_chars >= 1")
        return cfg


@dataclass
class Budget:
    """Tokens and money one run may spend (``None``: no cap). Prices in USD per million tokens."""

    max_tokens: int | None = None
    max_cost_usd: float | None = None
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0

    @property
    def cost_usd(self) -> float:
        return (self.tokens_in * self.usd_per_mtok_in + self.tokens_out * self.usd_per_mtok_out) / 1e6

    def charge(self, tokens_in: int, tokens_out: int) -> None:
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out

    def exhausted(self) -> str | None:
        """Why no further request may start, or ``None``."""
        if self.max_tokens is not None and self.tokens_in + self.tokens_out >= self.max_tokens:
            return f"token budget spent ({self.tokens_in + self.tokens_out} of {self.max_tokens})"
        if self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd:
            return f"cost budget spent (${self.cost_usd:.4f} of ${self.max_cost_usd:.4f})"
        return None

    def completion_cap(self, wanted: int) -> int:
        if self.max_tokens is None:
            return wanted
        return max(1, min(wanted, self.max_tokens - self.tokens_in - self.tokens_out))


@dataclass(frozen=True)
class Reply:
    """One completion: its text, the tokens charged, seconds from first request to reply
    (retry waits included) and how many retries it took."""

    text: str
    tokens_in: int
    tokens_out: int
    wall_s: float
    retries: int = 0
    finish_reason: str = ""
    usage_estimated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def retry_after_s(headers: Any) -> float | None:
    """Seconds asked for by ``Retry-After`` (delta-seconds or an HTTP date) or ``retry-after-ms``."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is None:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        when = email.utils.parsedate_to_datetime(ra) if ra else None
        return None if when is None else max(0.0, when.timestamp() - time.time())


class Provider:
    """``complete(messages)`` against one OpenAI-compatible endpoint."""

    def __init__(self, config: ProviderConfig, sleep: Any = time.sleep) -> None:
        try:
            import openai
        except ImportError as exc:
            raise ImportError(f"the AI kernel factory needs the openai client ({_INSTALL}): {exc}") from None
        self.config = config
        self._openai = openai
        self._sleep = sleep
        self.client = openai.OpenAI(base_url=config.base_url, api_key=config.api_key, timeout=config.timeout_s,
                                    max_retries=0)  # fmt: skip

    def _wait_s(self, attempt: int, exc: Any) -> float:
        asked = retry_after_s(getattr(getattr(exc, "response", None), "headers", None))
        if asked is None:  # exponential backoff with jitter, so parallel runs do not retry in step
            asked = self.config.backoff_s * (2**attempt) * (0.5 + random.random() / 2)
        return min(asked, self.config.max_backoff_s)

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                 temperature: float | None = None, seed: int | None = None) -> Reply:  # fmt: skip
        """One chat completion. Raises :class:`ProviderError` when no usable reply came back."""
        oa, cfg = self._openai, self.config
        t0 = time.monotonic()
        retries = 0
        while True:
            try:
                resp = self.client.chat.completions.create(
                    model=cfg.model, messages=messages,  # type: ignore[arg-type]
                    max_tokens=max_tokens or cfg.max_tokens,
                    temperature=cfg.temperature if temperature is None else temperature,
                    **({"seed": seed} if seed is not None else {}),
                )  # fmt: skip
                break
            except (
                oa.RateLimitError,
                oa.InternalServerError,
                oa.APITimeoutError,
                oa.APIConnectionError,
            ) as exc:
                status = getattr(exc, "status_code", None)
                if isinstance(exc, oa.RateLimitError):
                    cat = "rate-limited"
                elif isinstance(exc, oa.APITimeoutError):
                    cat = "timeout"
                elif isinstance(exc, oa.APIConnectionError):
                    cat = "connection"
                else:
                    cat = "server-error"
                if retries >= cfg.max_retries:
                    detail = f"HTTP {status}" if status else type(exc).__name__
                    raise ProviderError(cat, f"{detail} after {retries + 1} request(s): {exc}"[:300],
                                        wall_s=time.monotonic() - t0, retries=retries) from None  # fmt: skip
                self._sleep(self._wait_s(retries, exc))
                retries += 1
            except oa.APIStatusError as exc:  # other 4xx: a bad key, an unknown model; retrying cannot help
                raise ProviderError("client-error", f"HTTP {exc.status_code}: {exc}"[:300],
                                    wall_s=time.monotonic() - t0, retries=retries) from None  # fmt: skip
            except (oa.APIResponseValidationError, ValueError, TypeError, KeyError) as exc:
                raise ProviderError("malformed-reply", f"{type(exc).__name__}: {exc}"[:300],
                                    wall_s=time.monotonic() - t0, retries=retries) from None  # fmt: skip
        return self._reply(resp, messages, t0, retries)

    def _reply(self, resp: Any, messages: list[dict[str, str]], t0: float, retries: int) -> Reply:
        wall = time.monotonic() - t0
        # A server that answers 200 with something else (HTML, plain text, a cut-off body) gives
        # the client a str or a half-built object: judged here, never trusted to have fields.
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices:
            kind = type(resp).__name__
            raise ProviderError("malformed-reply", f"no choices in the reply (got {kind}: {str(resp)[:120]!r})",
                                wall_s=wall, retries=retries)  # fmt: skip
        msg = getattr(choices[0], "message", None)
        text = getattr(msg, "content", None)
        usage = getattr(resp, "usage", None)
        tin, tout = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        estimated = not (isinstance(tin, int) and isinstance(tout, int))
        if estimated:  # some servers send no usage: ~4 characters per token, so budgets still bind
            tin = sum(len(m.get("content", "")) for m in messages) // 4
            tout = len(text or "") // 4
        if not isinstance(text, str) or not text.strip():
            raise ProviderError("malformed-reply", "the reply has no message content", tokens_in=tin,
                                tokens_out=tout, wall_s=wall, retries=retries)  # fmt: skip
        if len(text) > self.config.max_reply_chars:
            raise ProviderError("reply-too-large", f"{len(text)} characters, the limit is {self.config.max_reply_chars}",
                                tokens_in=tin, tokens_out=tout, wall_s=wall, retries=retries)  # fmt: skip
        return Reply(text, int(tin), int(tout), wall, retries, str(getattr(choices[0], "finish_reason", "") or ""),
                     estimated)  # fmt: skip


def usd(x: float) -> str:
    return f"${x:.4f}" if math.isfinite(x) else "-"
