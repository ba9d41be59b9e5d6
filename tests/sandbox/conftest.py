"""Sandbox tests run the real sandbox: bubblewrap when usable (installed by
scripts/install_system_deps.sh), else rlimits + seccomp + unshare. The header says which."""

from __future__ import annotations

import pytest
from sandbox_cases import SECRET


def pytest_report_header(config):
    try:
        from uhop.sandbox.worker import resolve_isolation

        return f"uhop sandbox isolation: {resolve_isolation()}"
    except Exception as exc:  # pragma: no cover - reported, tests then fail loudly
        return f"uhop sandbox isolation: unavailable ({exc})"


@pytest.fixture(autouse=True)
def _secret_and_triton(monkeypatch):
    monkeypatch.setenv("UHOP_TEST_SECRET", SECRET)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
