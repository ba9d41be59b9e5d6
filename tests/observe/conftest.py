"""Fixtures for the dashboard and report tests: synthetic stores and a running dashboard."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import storegen  # noqa: E402


@pytest.fixture
def small_store(tmp_path):
    """(url, store) of a 12-problem SQLite store, 3 tuning runs each, hostile strings throughout."""
    path = tmp_path / "obs" / "uhop.db"
    path.parent.mkdir()
    store = storegen.small_store(path)
    return f"sqlite:///{path}", store


@pytest.fixture
def dashboard(small_store):
    srv, base = storegen.start(small_store[0])
    yield base, small_store[1]
    srv.shutdown()
    srv.server_close()
