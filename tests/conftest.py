"""Shared fixtures: every test gets its own UHOP_HOME (store) and a clean process cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def uhop_home(tmp_path, monkeypatch):
    from uhop import config
    from uhop.dispatch import clear_process_cache

    home = tmp_path / "uhop_home"
    monkeypatch.setenv("UHOP_HOME", str(home))
    monkeypatch.delenv("UHOP_STORE", raising=False)
    monkeypatch.delenv("UHOP_DISABLE", raising=False)
    config.reload()
    clear_process_cache()
    # Short budgets keep the suite fast; tests that measure speed set their own.
    with config.override(tune_budget_s=5.0, bench_min_s=0.005, bench_repeat=3):
        yield home
    clear_process_cache()
    config.reload()


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def pytest_report_header(config):
    return f"UHOP test run; CI={os.environ.get('CI', '')}"
