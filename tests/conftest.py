"""Shared fixtures: every test gets its own UHOP_HOME (store) and a clean process cache."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

import uhop  # noqa: F401, E402 - before any test module imports numpy or torch, as the README asks (UHOP_THREADS)

# CI draws the same hypothesis examples every run (a failure there is reproducible, not a dice
# roll); local runs keep exploring new ones.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


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
    # Short budgets keep the suite fast; tests that measure speed set their own. IREE compiles take
    # about a second per candidate: its own suite (tests/mlir) tunes it, the rest leave it out.
    # Blocking tuning (policy=tune) by default, so a test sees the tuned entry after its call;
    # tests of the default background mode (tests/unit/test_background.py) ask for it.
    with config.override(tune_budget_s=5.0, bench_min_s=0.005, bench_repeat=3, backends=("numpy", "torch", "numba"),
                         policy="tune"):
        yield home
    clear_process_cache()
    from uhop.store import close_stores

    close_stores()  # each test's home had its own store: its connections would stay open (fds)
    # The test's own environment changes go first: a variable it set to a bad value (to test the
    # error) must not fail this re-read of the settings.
    monkeypatch.undo()
    config.reload()


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def pytest_report_header(config):
    return f"UHOP test run; CI={os.environ.get('CI', '')}"


# ---- a real PostgreSQL server (perf store and job queue tests) ------------------------------
# A real PostgreSQL server for the perf tests: ``initdb`` + ``pg_ctl`` in a temp dir, on
# 127.0.0.1 at a free port, as user ``postgres`` when the suite runs as root (PostgreSQL refuses to
# run as root). One server per session, one fresh database per test; stopped at teardown with
# ``pg_ctl stop`` and, if that fails, by the postmaster's PID. Skipped (with the reason) only when
# the PostgreSQL server binaries are not installed (``scripts/install_system_deps.sh`` installs them).
# #
def _bindir() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server():
    """URL of a running PostgreSQL server's ``postgres`` database (trust auth, 127.0.0.1 only)."""
    pytest.importorskip("psycopg", reason="psycopg 3 not installed (pip install 'uhop[perf]')")
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/install_system_deps.sh")
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    if as_root:
        runuser = shutil.which("runuser")
        prefix = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-c"]
    base = Path(tempfile.mkdtemp(prefix="uhop-pg-"))
    if as_root:
        shutil.chown(base, "postgres")
    data, log = base / "data", base / "server.log"

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if prefix[-1:] == ["-c"]:  # su takes one shell string
            cmd = [*prefix, " ".join(cmd)]
        else:
            cmd = [*prefix, *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    r = run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    if r.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed: {r.stderr.strip()[-2000:]}")
    port = _free_port()
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    r = run(bindir / "pg_ctl", "-D", data, "-l", log, "-o", f"'{opts}'" if prefix[-1:] == ["-c"] else opts, "-w", "start")
    if r.returncode != 0:
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {r.stderr.strip()[-1000:]}\n{text[-2000:]}")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session's server; dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = pg_server.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from uhop import store as core_store

    s = core_store._stores.pop(url, None)
    if s is not None:
        s.close()
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _table_column(out: str, col: int, starts: int = 0) -> list[str]:
    """Cell ``col`` of every row of a rich table, folded lines joined (a row starts where column
    ``starts``, one that never wraps, is non-empty), spaces dropped: what a reader reassembles
    from an 80-column table."""
    cells: list[str] = []
    for ln in out.splitlines():
        parts = ln.split("│")
        if len(parts) < col + 2:
            continue
        if parts[starts + 1].strip():
            cells.append("")
        if cells:
            cells[-1] += parts[col + 1].replace(" ", "")
    return cells


@pytest.fixture
def table_column():
    """:func:`_table_column`: read a folded rich table back (CLI tests at 80 columns)."""
    return _table_column
