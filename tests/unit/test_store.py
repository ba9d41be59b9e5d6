"""The SQLite kernel store: conflict rule, export/import, concurrent tuners, kill -9 mid-tuning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from uhop.store import MAX_SPREAD, SQLiteStore, replaces

PROBLEM = {"op": "softmax", "dims": {"R": 4, "N": 8}, "dtype": "float32", "params": {}, "arity": 1}


def _rec(store, key, backend, t, policy="tune"):
    return store.record(
        key, PROBLEM, {"backend": backend, "template": "t", "config": {}},
        [{"candidate": {"backend": backend, "template": "t", "config": {}}, "status": "ok", "median_s": t}],
        median_s=t, gflops=None, gbps=None, policy=policy, fingerprint={"x": 1}, content_hash="h",
    )  # fmt: skip


def test_faster_measured_entry_wins(tmp_path):
    s = SQLiteStore(tmp_path / "db.sqlite")
    assert _rec(s, "k", "a", 2e-3).candidate["backend"] == "a"
    assert _rec(s, "k", "b", 3e-3).candidate["backend"] == "a"  # slower: kept the old one
    assert _rec(s, "k", "c", 1e-3).candidate["backend"] == "c"
    assert _rec(s, "k", "d", None, policy="fast").candidate["backend"] == "c"  # unmeasured never replaces measured
    assert len(s.measurements("k")) == 4  # every writer's measurements are kept
    assert s.integrity_ok()


def test_replace_rule():
    from uhop.store import Entry

    def old(med, spread=None):
        return Entry("k", "softmax", {}, {}, med, None, None, "tune", {}, "h", 0.0, 0.0, spread)

    assert replaces(None, None, None)  # nothing stored: anything goes in
    assert not replaces(old(1e-3), None, None)  # unmeasured never replaces measured
    assert replaces(old(None), 5e-3, 0.5)  # measured beats unmeasured
    assert not replaces(old(1e-3), 0.99e-3, 0.0)  # within the 2% floor: noise
    assert replaces(old(1e-3), 0.97e-3, 0.0)
    assert not replaces(old(1e-3, spread=0.1), 0.92e-3, 0.01)  # within the stored entry's spread
    assert not replaces(old(1e-3), 0.92e-3, 0.1)  # within the new one's spread
    assert replaces(old(1e-3, spread=5.0), 0.4e-3, 0.0)  # a spread past MAX_SPREAD is capped
    assert replaces(old(1e-3), 9e-3, 0.0, force=True)


def test_schema_1_store_is_migrated(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    ddl = [line for line in __import__("uhop.store", fromlist=["_SCHEMA"])._SCHEMA.split(";") if line.strip()]
    for stmt in ddl:  # schema 1: no kernels.spread
        conn.execute(stmt.replace("updated REAL NOT NULL,\n    spread REAL", "updated REAL NOT NULL"))
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO kernels VALUES ('k','softmax','{}','{}',0.001,NULL,NULL,'tune','{}','h',0,0)")
    conn.commit()
    conn.close()
    s = SQLiteStore(db)
    assert s.get("k").median_s == 1e-3 and s.get("k").spread is None
    assert _rec(s, "k", "b", 0.5e-3).candidate["backend"] == "b"


def test_export_import_roundtrip(tmp_path):
    s = SQLiteStore(tmp_path / "a.db")
    _rec(s, "k1", "a", 1e-3)
    _rec(s, "k2", "b", 2e-3)
    assert s.export(tmp_path / "out.json") == 2
    t = SQLiteStore(tmp_path / "b.db")
    assert t.import_(tmp_path / "out.json") == 2
    assert [e.key for e in t.entries()] == ["k1", "k2"]
    assert t.measurements("k1")[0]["median_s"] == pytest.approx(1e-3)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a UHOP store export"):
        t.import_(tmp_path / "bad.json")


def test_newer_schema_is_refused(tmp_path):
    s = SQLiteStore(tmp_path / "db")
    s._conn().execute("UPDATE meta SET value='99' WHERE name='schema_version'")
    s.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        SQLiteStore(tmp_path / "db")


TUNER = textwrap.dedent(
    """
    import sys, numpy as np
    from uhop import config
    from uhop.tune.tuner import tune
    with config.override(bench_min_s=0.01, bench_repeat=3, tune_budget_s=30):
        for i in range(int(sys.argv[1])):
            tune("softmax", {"R": 64, "N": 256}, "float32")
    print("done", flush=True)
    """
)


def _spawn(home, n):
    env = {**os.environ, "UHOP_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-c", TUNER, str(n)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_processes_tuning_the_same_key_end_with_one_consistent_entry(tmp_path):
    procs = [_spawn(tmp_path, 2), _spawn(tmp_path, 2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    s = SQLiteStore(tmp_path / "uhop.db")
    entries = s.entries()
    assert len(entries) == 1
    e = entries[0]
    ms = s.measurements(e.key)
    ok = [m for m in ms if m["status"] == "ok"]
    assert e.candidate in [m["candidate"] for m in ok]
    # Each run's winner carries its interleaved re-timing; the entry in force is never beaten by
    # another run's winner by more than the conflict rule's margin: a winner replaces it only when
    # faster than old * (1 - margin), margin <= MAX_SPREAD, so every winner that did not is at
    # least e * (1 - MAX_SPREAD). (Bounding e by winner * (1 + MAX_SPREAD) instead failed under
    # load: an entry timed at 43 us with spread 0.59 kept its place against a 22.8 us winner.)
    winners = [m["median_s"] for m in ok if m["reason"].startswith("re-timed")] or [min(m["median_s"] for m in ok)]
    assert min(winners) >= e.median_s * (1 - MAX_SPREAD)
    assert s.integrity_ok()


def test_kill_9_during_tuning_leaves_the_store_intact_and_usable(tmp_path):
    p = _spawn(tmp_path, 1000)
    db = tmp_path / "uhop.db"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it has written at least once
        if db.exists():
            try:
                if SQLiteStore(db).entries():
                    break
            except Exception:
                pass
        time.sleep(0.2)
    time.sleep(0.7)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    s = SQLiteStore(db)
    assert s.integrity_ok()
    entries = s.entries()
    assert len(entries) == 1
    assert json.loads(json.dumps(entries[0].to_json()))["op"] == "softmax"
    _rec(s, "after-crash", "a", 1e-3)  # still writable
    assert s.get("after-crash") is not None


HASH = textwrap.dedent(
    """
    from uhop import backends as bk
    from uhop.backends.base import Candidate
    from uhop.problem import Problem
    from uhop.tune.tuner import content_hash
    p = Problem.make("softmax", {"R": 64, "N": 256}, "float32")
    c = Candidate.of("numpy", "blocked", block=64)
    print(p.key(), content_hash(c, p.key(), bk.get("numpy")))
    """
)


def test_keys_and_content_hashes_are_deterministic_across_processes(monkeypatch):
    """Same problem, candidate, code and versions: the same key and hash in every process; a
    different candidate, a different version or different backend code: a different hash."""
    from uhop import backends as bk
    from uhop.backends.base import Candidate
    from uhop.problem import Problem, hardware_fingerprint
    from uhop.tune.tuner import content_hash

    runs = {subprocess.run([sys.executable, "-c", HASH], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(runs) == 1
    key, h = runs.pop().split()
    p = Problem.make("softmax", {"R": 64, "N": 256}, "float32")
    assert p.key() == key and content_hash(Candidate.of("numpy", "blocked", block=64), key, bk.get("numpy")) == h
    assert content_hash(Candidate.of("numpy", "blocked", block=16), key, bk.get("numpy")) != h
    # a version change reaches the key through the hardware fingerprint
    real = hardware_fingerprint("cpu")
    hardware_fingerprint.cache_clear()
    import uhop.problem as prob

    monkeypatch.setattr(prob, "_version", lambda mod: "0.0.0-other")
    try:
        assert p.key() != key
    finally:
        hardware_fingerprint.cache_clear()
        monkeypatch.undo()
    assert hardware_fingerprint("cpu") == real
    # backend code change: the kernel modules' source is hashed
    backend = bk.get("numpy")
    monkeypatch.setattr(type(backend), "source_modules", ("uhop.backends.torch",), raising=False)
    assert content_hash(Candidate.of("numpy", "blocked", block=64), key, backend) != h


def test_a_problem_made_for_cuda_is_the_indexed_device_callers_have():
    """A tensor's device carries its index: ``uhop tune --device cuda`` stored under a key no
    caller ever asked for (and ``uhop bench --device cuda`` tuned every case twice)."""
    from uhop.problem import Problem

    a = Problem.make("softmax", {"R": 8, "N": 16}, "float32", device="cuda", array="torch")
    b = Problem.make("softmax", {"R": 8, "N": 16}, "float32", device="cuda:0", array="torch")
    assert a.device.startswith("cuda:") and (a.device != "cuda:0" or a.key() == b.key())
    assert Problem.make("softmax", {"R": 8, "N": 16}, "float32").device == "cpu"
