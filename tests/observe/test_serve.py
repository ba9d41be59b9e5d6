"""The dashboard over a real SQLite store (and PostgreSQL): every page renders, hostile strings
from the store are escaped, plots carry the store's numbers, the store is never written, and
binding beyond loopback needs a token."""

from __future__ import annotations

import hashlib
import html
import re
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from storegen import HOSTILE, assert_escaped, start

from uhop.serve.pages import PAGES

PATHS = [*PAGES, "/metrics"]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_every_page_renders_escaped_with_csp(dashboard):
    base, store = dashboard
    keys = [e.key for e in store.entries()]
    for path in [*PAGES, f"/latency?key={urllib.request.quote(keys[0])}", f"/history?key={urllib.request.quote(keys[0])}"]:
        status, headers, body = get(base + path)
        assert status == 200, (path, body[:300])
        assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in headers["Content-Security-Policy"]
        assert_escaped(body)
    # the hostile strings are shown, as text
    _, _, body = get(base + "/failures")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in body
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in body


def test_plot_points_match_the_store(dashboard):
    base, store = dashboard
    _, _, body = get(base + "/")
    bars = dict(re.findall(r'<rect class="pt bar"[^>]*data-label="([^"]+)" data-value="([^"]+)"', body))
    want = Counter(f"{e.op} @ {e.problem['device']}" for e in store.entries())
    assert {k: float(v) for k, v in bars.items()} == {k: float(n) for k, n in want.items()}
    e = store.entries()[3]
    _, _, body = get(base + "/latency?key=" + urllib.request.quote(e.key))
    pts = re.findall(r'<circle class="pt( chosen)?"[^>]*data-label="([^"]+)" data-value="([^"]+)"', body)
    chosen = [lab for c, lab, _ in pts if c]
    from uhop.serve.data import candidate_id

    assert [html.unescape(c) for c in chosen] == [candidate_id(e.candidate)]
    latest = {candidate_id(m["candidate"]): m["median_s"] for m in store.measurements(e.key) if m["status"] == "ok"}
    assert {html.unescape(lab): float(v) for _, lab, v in pts} == pytest.approx(latest)


def test_metrics_endpoint_matches_the_store(dashboard):
    from prometheus_client.parser import text_string_to_metric_families

    base, store = dashboard
    status, headers, body = get(base + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    entries = {(s.labels["op"], s.labels["backend"]): s.value for s in fams["uhop_store_entries"].samples}
    want = Counter((e.op, e.candidate["backend"]) for e in store.entries())
    assert entries == {k: float(n) for k, n in want.items()}
    total = sum(s.value for s in fams["uhop_store_measurements"].samples)
    assert total == sum(1 for e in store.entries() for m in store.measurements(e.key) if m["status"] != "skipped")
    runs = {s.labels["window"]: s.value for s in fams["uhop_store_recent_tuning_runs"].samples}
    assert runs["24h"] == 12 * 3


def test_read_only_never_writes_the_store(small_store):
    url, store = small_store
    path = Path(url[len("sqlite:///"):])
    store.close()
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.parent.iterdir()}
    srv, base = start(url)
    try:
        for p in PATHS:
            assert get(base + p)[0] == 200
        for method in ("POST", "PUT", "DELETE"):
            req = urllib.request.Request(base + "/", method=method, data=b"x")
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(req, timeout=30)
            assert exc.value.code == 405
        with pytest.raises(Exception, match="readonly"):
            srv.reader.rows("DELETE FROM kernels")
    finally:
        srv.shutdown()
        srv.server_close()
    # SQLite's readers of a WAL database may create the -shm index and an empty -wal; the
    # database file itself is byte-identical and nothing was logged for it
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.parent.iterdir()}
    assert after["uhop.db"] == before["uhop.db"]
    wal = path.parent / "uhop.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_token_required_beyond_loopback_and_enforced(small_store):
    from uhop.serve import make_server

    with pytest.raises(ValueError, match="UHOP_SERVE_TOKEN"):
        make_server(small_store[0], "0.0.0.0", 0, token="")
    with pytest.raises(ValueError, match="at least 16"):
        make_server(small_store[0], "127.0.0.1", 0, token="short")
    token = "t0k3n-" + "x" * 20
    srv, base = start(small_store[0], token=token)
    try:
        assert get(base + "/")[0] == 401
        assert get(base + "/metrics")[0] == 401
        assert get(base + "/", {"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"})[0] == 401
        assert get(base + "/", {"Authorization": f"Bearer {token}"})[0] == 200
        status, headers, _ = get(base + f"/failures?token={token}")
        assert status == 303 and headers["Location"] == "/failures"
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        assert get(base + "/", {"Cookie": f"uhop_token={token}"})[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_cli_refuses_public_bind_without_token(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from uhop import config
    from uhop.cli import build_app

    monkeypatch.delenv("UHOP_SERVE_TOKEN", raising=False)
    config.reload()
    storegen_path = tmp_path / "s.db"
    import storegen

    storegen.small_store(storegen_path, n=2, runs=1)
    r = CliRunner().invoke(build_app(), ["serve", "--host", "0.0.0.0", "--port", "0", "--store", f"sqlite:///{storegen_path}"])
    assert r.exit_code == 2 and "UHOP_SERVE_TOKEN" in r.output


def test_missing_store_is_a_clear_error(tmp_path):
    from uhop.serve import make_server

    with pytest.raises(FileNotFoundError, match="no SQLite store"):
        make_server(f"sqlite:///{tmp_path}/none.db")
    with pytest.raises(ValueError, match="sqlite:///PATH or postgresql"):
        make_server("mysql://x")


def test_postgresql_store_renders_the_same(small_store, pg_url, tmp_path):
    from uhop.perf.pgstore import PostgresStore
    from uhop.serve import make_server

    url, store = small_store
    store.export(tmp_path / "export.json")
    PostgresStore(pg_url).import_(tmp_path / "export.json")
    pg = make_server(pg_url, "127.0.0.1", 0).reader
    sq = make_server(url, "127.0.0.1", 0).reader
    assert [e["key"] for e in pg.entries()] == [e["key"] for e in sq.entries()]
    assert sorted(pg.status_counts()) == sorted(sq.status_counts())
    for _path, (_, view) in PAGES.items():
        from uhop.serve.pages import Ctx

        assert_escaped(view(pg, {}, Ctx()))
    key = store.entries()[0].key
    assert [m["id"] for m in pg.measurements(key)] == [m["id"] for m in sq.measurements(key)]
    with pytest.raises(Exception, match="read-only"):
        pg.rows("DELETE FROM kernels")


def test_hostile_strings_cover_the_fixture():
    assert any("<script>" in h for h in HOSTILE) and any("onerror" in h for h in HOSTILE)


def test_pareto_page_matches_a_real_multi_objective_run():
    import uhop
    from uhop.store import open_store

    res = uhop.tune("softmax", dims={"R": 64, "N": 128}, strategy="nsga2", executor="inline", max_evals=8,
                    objectives=("latency", "memory"), backends=("numpy",))  # fmt: skip
    srv, base = start(open_store().url)
    try:
        status, _, body = get(base + "/pareto")
    finally:
        srv.shutdown()
        srv.server_close()
    assert status == 200 and res.run_id in body
    pts = re.findall(r'<circle class="pt( chosen)?"[^>]*data-label="([^"]+)" data-x="([^"]+)" data-y="([^"]+)"', body)
    front = {html.unescape(lab): (float(x), float(y)) for c, lab, x, y in pts if c}
    assert front == {m.candidate.id: (pytest.approx(m.median_s), pytest.approx(m.mem_bytes)) for m in res.pareto}
    assert len(pts) == sum(1 for m in res.measurements if m.ok)
