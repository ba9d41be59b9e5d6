"""The attempt and promotion tables on both stores: SQLite (always) and PostgreSQL (a real
server, skipped without its binaries), with the same semantics."""

from __future__ import annotations

import math

import pytest

from uhop.ai.attempts import attempt_store
from uhop.ai.promote import quarantine

PROBLEM = {"op": "softmax", "dims": {"R": 4, "N": 8}, "dtype": "float32", "params": {}, "arity": 1}


def _row(key="softmax:4x8", hw="h1", category="ok", code="def run(x):\n    return x\n", speedup=2.0, **kw):
    return {
        "run_id": "r1", "key": key, "op": "softmax", "problem": PROBLEM, "shape_class": "4x8", "dtype": "float32",
        "device": "cpu", "fingerprint": {"manifest": "x86-64-avx2"}, "hw_hash": hw, "model": "m", "endpoint": "h:1",
        "template": "kernel_v1", "template_sha256": "a" * 64, "round": 0, "variant": 0, "tokens_in": 10,
        "tokens_out": 5, "gen_s": 0.5, "check_s": 0.25, "category": category, "reason": "" if category == "ok" else "why",
        "max_err": 1e-7 if category == "ok" else math.nan, "median_s": 1e-4 if category == "ok" else None,
        "speedup_previous": speedup if category == "ok" else None, "code": code, **kw,
    }  # fmt: skip


def _exercise(store):
    db = attempt_store(store)
    a = db.add_attempt(_row())
    db.add_attempt(_row(category="wrong-result", code=""))
    db.add_attempt(_row(key="softmax:8x16", category="timeout", code=""))
    db.add_attempt(_row(key="softmax:8x16", speedup=None, code="def run(x):\n    return x * 1\n"))
    db.mark_promoted(a)
    rows = db.attempts()
    assert [r["category"] for r in rows] == ["ok", "wrong-result", "timeout", "ok"]
    assert rows[0]["promoted"] and rows[0]["problem"] == PROBLEM and "code" not in rows[0]
    assert rows[1]["max_err"] is None and rows[1]["median_s"] is None  # NaN and None stored as NULL
    assert db.attempts(key="softmax:8x16", with_code=True)[1]["code"].endswith("x * 1\n")
    assert db.attempts(since=rows[-1]["created"] + 10) == []
    # related problems: the other key's kernels (the one with a speedup first) and failure notes
    related, notes = db.related("softmax", "softmax:99x99", "h1")
    assert [r["code"] for r in related][0].endswith("return x\n") and len(related) == 2
    assert related[0]["problem_text"] == "softmax[4x8] float32" and related[0]["hw_name"] == "x86-64-avx2"
    assert {n["category"]: n["n"] for n in notes} == {"wrong-result": 1, "timeout": 1}
    related, _ = db.related("softmax", "softmax:4x8", "h1")  # its own attempts are not "related"
    assert [r["code"] for r in related] == ["def run(x):\n    return x * 1\n"]

    # a promotion over an earlier entry, then quarantine restores that entry
    cand_old = {"backend": "numpy", "template": "eager", "config": {}}
    cand_new = {"backend": "user", "template": "abc", "config": {"file": "softmax-abc.py"}}
    meas = [{"candidate": cand_old, "status": "ok", "median_s": 2e-4}]
    old = store.record("softmax:4x8", PROBLEM, cand_old, meas, median_s=2e-4, gflops=None, gbps=None, policy="tune",
                       fingerprint={"x": 1}, content_hash="h-old")  # fmt: skip
    store.record("softmax:4x8", PROBLEM, cand_new, [], median_s=1e-4, gflops=None, gbps=None, policy="tune",
                 fingerprint={"x": 1}, content_hash="h-new")  # fmt: skip
    pid = db.add_promotion("softmax:4x8", "softmax", "abc" * 10, "softmax-abc.py", 1e-4, old.to_json())
    assert db.promotions("softmax:4x8", active_only=True)[0]["id"] == pid
    out = quarantine(store, db, "softmax:4x8", "spot check failed")
    assert out["restored"] == cand_old and store.get("softmax:4x8").candidate == cand_old
    assert store.get("softmax:4x8").median_s == pytest.approx(2e-4)
    assert db.promotions(active_only=True) == [] and db.promotions()[0]["reason"] == "spot check failed"
    with pytest.raises(LookupError, match="no active AI promotion"):
        quarantine(store, db, "softmax:4x8")


def test_sqlite_attempts_promotions_quarantine():
    from uhop.store import open_store

    _exercise(open_store())


@pytest.mark.integration
def test_postgres_attempts_promotions_quarantine(pg_url):
    from uhop.perf.pgstore import PostgresStore

    store = PostgresStore(pg_url)
    try:
        _exercise(store)
    finally:
        store.close()
