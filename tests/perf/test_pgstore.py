"""The PostgreSQL store against a real server: same semantics as the SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

PROBLEM = {"op": "softmax", "dims": {"R": 4, "N": 8}, "dtype": "float32", "params": {}, "arity": 1}


def _rec(store, key, backend, t, policy="tune", problem=PROBLEM, content_hash=None, spread=None, force=False):
    return store.record(
        key, problem, {"backend": backend, "template": "t", "config": {}},
        [{"candidate": {"backend": backend, "template": "t", "config": {}}, "status": "ok", "median_s": t}],
        median_s=t, gflops=None, gbps=None, policy=policy, fingerprint={"x": 1},
        content_hash=content_hash or f"hash-of-{backend}", spread=spread, force=force,
    )  # fmt: skip


def test_conflict_rule_matches_sqlite(pg_url, tmp_path):
    from uhop.perf.pgstore import PostgresStore
    from uhop.store import SQLiteStore

    for s in (PostgresStore(pg_url), SQLiteStore(tmp_path / "db")):
        # every candidate has its own content hash, as real entries do
        assert _rec(s, "k", "a", 2e-3).candidate["backend"] == "a"
        assert _rec(s, "k", "b", 3e-3).candidate["backend"] == "a"  # slower: kept the old one
        assert _rec(s, "k", "c", 1e-3, spread=0.04).candidate["backend"] == "c"
        assert _rec(s, "k", "c2", 0.97e-3).candidate["backend"] == "c"  # within c's measured spread: a tie, kept
        assert _rec(s, "k", "d", None, policy="fast").candidate["backend"] == "c"  # unmeasured never wins
        assert _rec(s, "k", "e", 5e-3).candidate["backend"] == "c"  # other code, slower: never replaces
        assert _rec(s, "k", "f", 4e-3, force=True).candidate["backend"] == "f"  # uhop tune --force
        assert _rec(s, "k", "g", 0.5e-3).candidate["backend"] == "g"
        assert s.get("k").spread is None and _rec(s, "k2", "h", 1e-3, spread=0.1).spread == pytest.approx(0.1)
        assert len(s.measurements("k")) == 8
        assert s.measurements("k")[0]["candidate"] == {"backend": "a", "template": "t", "config": {}}
        assert s.get("missing") is None
        assert s.integrity_ok()
        s.close()


def test_unmeasured_replaced_by_measured_and_nan_is_null(pg_url):
    from uhop.perf.pgstore import PostgresStore

    s = PostgresStore(pg_url)
    assert _rec(s, "k", "fast", None, policy="fast").median_s is None
    e = _rec(s, "k", "tuned", float("nan"))  # NaN time is stored as NULL: still unmeasured
    assert e.median_s is None
    e = _rec(s, "k", "tuned2", 5e-3)
    assert (e.candidate["backend"], e.median_s, e.policy) == ("tuned2", 5e-3, "tune")


def test_entries_delete_and_roundtrip_with_sqlite(pg_url, tmp_path):
    from uhop.perf.pgstore import PostgresStore
    from uhop.store import SQLiteStore

    pg = PostgresStore(pg_url)
    _rec(pg, "k2", "b", 2e-3, problem={**PROBLEM, "op": "rmsnorm"})
    _rec(pg, "k1", "a", 1e-3)
    assert [e.key for e in pg.entries()] == ["k2", "k1"]  # ordered by op, then key
    assert [e.key for e in pg.entries("softmax")] == ["k1"]
    assert pg.export(tmp_path / "pg.json") == 2
    lite = SQLiteStore(tmp_path / "lite.db")
    assert lite.import_(tmp_path / "pg.json") == 2
    lite.export(tmp_path / "lite.json")
    a, b = (json.loads((tmp_path / f).read_text())["entries"] for f in ("pg.json", "lite.json"))
    strip = lambda es: [{k: v for k, v in e.items() if k not in ("created", "updated", "measurements")} for e in es]  # noqa: E731
    assert strip(a) == strip(b)
    pg2 = PostgresStore(pg_url)
    pg2.delete()
    assert pg2.import_(tmp_path / "lite.json") == 2
    assert pg2.get("k1").candidate["backend"] == "a"
    assert pg2.delete(key="k1") == 1 and pg2.measurements("k1") == []
    assert pg2.delete(op="rmsnorm") == 1 and pg2.entries() == []
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not a UHOP store export"):
        pg2.import_(tmp_path / "bad.json")


def test_newer_schema_is_refused(pg_url):
    import psycopg

    from uhop.perf.pgstore import PostgresStore

    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("UPDATE meta SET value='99' WHERE name='schema_version'")
    with pytest.raises(RuntimeError, match="schema version 99"):
        PostgresStore(pg_url)


def test_unreachable_server_is_a_clear_error():
    from uhop.perf.pgstore import PostgresStore

    with pytest.raises(RuntimeError, match=r"cannot connect to PostgreSQL"):
        PostgresStore("postgresql://nobody:secret@127.0.0.1:1/none")
    try:
        PostgresStore("postgresql://nobody:secret@127.0.0.1:1/none")
    except RuntimeError as exc:
        assert "secret" not in str(exc)  # the password is masked


WRITER = textwrap.dedent(
    """
    import sys
    from uhop.perf.pgstore import PostgresStore
    url, name, base = sys.argv[1], sys.argv[2], float(sys.argv[3])
    s = PostgresStore(url)
    for i in range(20):
        t = base * (1 + (20 - i) / 100)
        s.record("shared", {"op": "softmax"}, {"backend": name, "template": "t", "config": {}},
                 [{"candidate": {"backend": name, "template": "t", "config": {"i": i}}, "status": "ok", "median_s": t}],
                 median_s=t, gflops=None, gbps=None, policy="tune", fingerprint={}, content_hash="h")
    """
)


def test_concurrent_writers_keep_everything_and_fastest_wins(pg_url):
    from uhop.perf.pgstore import PostgresStore

    PostgresStore(pg_url).close()  # schema first; writers then race on rows only
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, pg_url, name, str(base)], stderr=subprocess.PIPE, text=True)
        for name, base in (("w1", 3e-3), ("w2", 1e-3), ("w3", 2e-3))
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    s = PostgresStore(pg_url)
    assert len(s.measurements("shared")) == 60
    e = s.get("shared")
    from uhop.store import MIN_GAIN

    # w2's last write (1.01e-3) replaces its earlier one only if 2% faster: within that of it
    assert e.candidate["backend"] == "w2" and 1e-3 * 1.01 <= e.median_s <= 1e-3 * 1.01 / (1 - MIN_GAIN)


def test_open_store_tune_and_telemetry_through_postgres(pg_url, monkeypatch):
    """UHOP_STORE=postgresql://...: the tuner stores its choice there and telemetry lands beside it."""
    from uhop import config
    from uhop.perf import telemetry
    from uhop.store import open_store
    from uhop.tune.tuner import tune

    monkeypatch.setenv("UHOP_STORE", pg_url)
    config.reload()
    with config.override(bench_min_s=0.002, bench_repeat=3):
        res = tune("softmax", {"R": 8, "N": 33}, "float32", backends=("numpy",))
        store = open_store()
        assert type(store).__name__ == "PostgresStore" and store.url == pg_url
        assert store.get(res.key).candidate == res.best.candidate.to_json()
        n = len([m for m in res.measurements if m.status != "skipped"])  # recorded by the tuner itself
    rows = telemetry.telemetry_db(store).rows("softmax")
    assert len(rows) == n == len([m for m in res.measurements if m.status != "skipped"]) > 0
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["median_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"] for r in ok)
    assert rows[0]["dims"] == {"R": 8, "N": 33} and rows[0]["hw_features"]["hw_cores"] >= 1


def test_invalidate_drops_the_choice_and_keeps_history(pg_url, tmp_path):
    from uhop.perf.pgstore import PostgresStore
    from uhop.store import SQLiteStore

    for s in (PostgresStore(pg_url), SQLiteStore(tmp_path / "db")):
        _rec(s, "k", "a", 1e-3)
        assert s.invalidate("k") and s.get("k") is None and not s.invalidate("k")
        assert len(s.measurements("k")) == 1
        assert _rec(s, "k", "b", 5e-3).candidate["backend"] == "b"  # a stale entry is always replaced
        s.close()
