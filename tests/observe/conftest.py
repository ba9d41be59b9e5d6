"""Fixtures for the dashboard and report tests: synthetic stores and a running dashboard."""

from __future__ import annotations

import sys
import threading
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


def start(url: str, token: str | None = None):
    from uhop.serve import make_server

    srv = make_server(url, "127.0.0.1", 0, token=token)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture
def dashboard(small_store):
    srv, base = start(small_store[0])
    yield base, small_store[1]
    srv.shutdown()
    srv.server_close()
