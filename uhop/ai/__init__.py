"""The automation flywheel: LLM kernel generation through the sandbox (``docs/ai.md``).

``uhop.ai.generate(op, shape, ...)`` asks any OpenAI-compatible endpoint for kernel files, runs
each through the sandboxed validator (never importing it here), feeds the verdicts back for
``rounds`` rounds, records every attempt in the store's ``ai_attempts`` table and promotes a
kernel into the kernel store only when it beats the current best by more than the measured
spread. ``report()`` summarizes the attempts; ``quarantine(key)`` takes a promotion back.

Needs the ``openai`` client: ``pip install 'uhop[ai]'``.
"""

from __future__ import annotations

from typing import Any

from uhop.ai.loop import Attempt, FactoryOptions, GenerateResult, generate
from uhop.ai.provider import Budget, ProviderConfig, ProviderError
from uhop.ai.report import report


def quarantine(key: str, reason: str = "quarantined by hand", store: Any = None) -> dict[str, Any]:
    """Take the newest active AI promotion for ``key`` out of service and restore the entry it
    replaced (also the hook for a dispatch-time spot-check failure). ``LookupError`` if none."""
    from uhop.ai.attempts import attempt_store
    from uhop.ai.promote import quarantine as _quarantine
    from uhop.store import open_store

    store = store or open_store()
    return _quarantine(store, attempt_store(store), key, reason)


__all__ = [
    "Attempt",
    "Budget",
    "FactoryOptions",
    "GenerateResult",
    "ProviderConfig",
    "ProviderError",
    "generate",
    "quarantine",
    "report",
]
