"""Every AI generation attempt, and every promotion, in the central store's database.

Two tables live next to the kernel store's (the SQLite file of :func:`uhop.store.open_store`, or
the PostgreSQL database of a ``postgresql://`` URL, like :mod:`uhop.perf.telemetry`):

* ``ai_attempts``: one row per generated variant: run id, key, op, problem, shape class, dtype,
  device, hardware fingerprint and its hash, model, base URL host, prompt template and its
  sha256, round and variant, tokens in/out, generation and check seconds, verdict category and
  reason, max error, per-call seconds, the baseline's and the previous best's seconds, the two
  speedups, promoted or not, whether the prompt carried knowledge from related problems, the
  code's sha256 and the code itself (the transfer source for related problems).
* ``ai_promotions``: one row per promotion: key, kernel sha256 and file, seconds, the store
  entry it replaced (JSON, ``null`` when there was none), and when and why it was quarantined.

Times are seconds; ``created`` is Unix seconds.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from uhop.store import PostgresDB, SQLiteDB

ATTEMPT_COLUMNS = (
    "created", "run_id", "key", "op", "problem", "shape_class", "dtype", "device", "fingerprint", "hw_hash",
    "model", "endpoint", "template", "template_sha256", "round", "variant", "tokens_in", "tokens_out", "gen_s",
    "check_s", "category", "reason", "max_err", "median_s", "baseline_s", "previous_best_s", "speedup_baseline",
    "speedup_previous", "promoted", "transfer", "sha256", "code",
)  # fmt: skip
JSON_COLUMNS = ("problem", "fingerprint")
PROMOTION_COLUMNS = (
    "created",
    "key",
    "op",
    "sha256",
    "file",
    "median_s",
    "previous",
    "quarantined",
    "reason",
)

_DDL = """
CREATE TABLE IF NOT EXISTS ai_attempts (
    id {pk},
    created {real} NOT NULL, run_id TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL, problem TEXT NOT NULL,
    shape_class TEXT NOT NULL, dtype TEXT NOT NULL, device TEXT NOT NULL, fingerprint TEXT NOT NULL,
    hw_hash TEXT NOT NULL, model TEXT NOT NULL, endpoint TEXT NOT NULL, template TEXT NOT NULL,
    template_sha256 TEXT NOT NULL, round INTEGER NOT NULL, variant INTEGER NOT NULL,
    tokens_in INTEGER NOT NULL DEFAULT 0, tokens_out INTEGER NOT NULL DEFAULT 0, gen_s {real}, check_s {real},
    category TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', max_err {real}, median_s {real}, baseline_s {real},
    previous_best_s {real}, speedup_baseline {real}, speedup_previous {real}, promoted INTEGER NOT NULL DEFAULT 0,
    transfer INTEGER NOT NULL DEFAULT 0, sha256 TEXT NOT NULL DEFAULT '', code TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ai_attempts_op ON ai_attempts(op, key);
CREATE INDEX IF NOT EXISTS ai_attempts_created ON ai_attempts(created);
CREATE TABLE IF NOT EXISTS ai_promotions (
    id {pk},
    created {real} NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL, sha256 TEXT NOT NULL, file TEXT NOT NULL,
    median_s {real}, previous TEXT, quarantined {real}, reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ai_promotions_key ON ai_promotions(key);
"""


def _num(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class AttemptStore:
    """The two AI tables over one database (``db``: a :class:`~uhop.store.SQLiteDB` or
    :class:`~uhop.store.PostgresDB`). Every write is one transaction."""

    def __init__(self, db: SQLiteDB | PostgresDB) -> None:
        self.db = db
        self.pg = isinstance(db, PostgresDB)
        ddl = _DDL.format(pk="BIGSERIAL PRIMARY KEY" if self.pg else "INTEGER PRIMARY KEY AUTOINCREMENT",
                          real="DOUBLE PRECISION" if self.pg else "REAL")  # fmt: skip
        with self.db._tx() as cur:
            for stmt in filter(str.strip, ddl.split(";")):
                cur.execute(stmt)

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if not self.pg:  # a plain read: no write lock (WAL readers never wait for writers)
            c = self.db._conn().execute(sql, tuple(args))
            cols = [d[0] for d in c.description]
            return [dict(zip(cols, r, strict=True)) for r in c.fetchall()]
        with self.db._tx() as cur:
            c = cur.execute(self._q(sql), tuple(args))
            cols = [d[0] for d in c.description]
            return [dict(zip(cols, r, strict=True)) for r in c.fetchall()]

    # ---- attempts ---------------------------------------------------------------------------
    def add_attempt(self, row: Mapping[str, Any]) -> int:
        vals = []
        for c in ATTEMPT_COLUMNS:
            v = row.get(c)
            if c in JSON_COLUMNS:
                v = json.dumps(v or {}, sort_keys=True, default=str)
            elif c in ("promoted", "transfer"):
                v = int(bool(v))
            elif c in ("tokens_in", "tokens_out", "round", "variant"):
                v = int(v or 0)
            elif isinstance(v, float):
                v = _num(v)
            elif v is None and c not in ("gen_s", "check_s", "max_err", "median_s", "baseline_s", "previous_best_s",
                                         "speedup_baseline", "speedup_previous"):  # fmt: skip
                v = ""
            vals.append(v)
        if "created" not in row:
            vals[0] = time.time()
        sql = f"INSERT INTO ai_attempts({', '.join(ATTEMPT_COLUMNS)}) VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})"
        with self.db._tx() as cur:
            if self.pg:
                return int(cur.execute(self._q(sql) + " RETURNING id", vals).fetchone()[0])
            return int(cur.execute(sql, vals).lastrowid)

    def mark_promoted(self, attempt_id: int) -> None:
        with self.db._tx() as cur:
            cur.execute(self._q("UPDATE ai_attempts SET promoted=1 WHERE id=?"), (attempt_id,))

    def attempts(self, *, since: float | None = None, op: str | None = None, key: str | None = None,
                 run_id: str | None = None, with_code: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        """Attempt rows (oldest first), JSON columns decoded; ``code`` only with ``with_code``."""
        cols = [c for c in ATTEMPT_COLUMNS if with_code or c != "code"]
        where, args = [], []
        for col, v in (("op", op), ("key", key), ("run_id", run_id)):
            if v is not None:
                where.append(f"{col}=?")
                args.append(v)
        if since is not None:
            where.append("created>=?")
            args.append(since)
        sql = f"SELECT id, {', '.join(cols)} FROM ai_attempts" + (
            f" WHERE {' AND '.join(where)}" if where else ""
        )
        rows = self._rows(sql + " ORDER BY id", args)
        for r in rows:
            for c in JSON_COLUMNS:
                r[c] = json.loads(r[c]) if r.get(c) else {}
            r["promoted"], r["transfer"] = bool(r["promoted"]), bool(r["transfer"])
        return rows

    def related(
        self, op: str, key: str, hw_hash: str, *, limit: int = 2
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Knowledge for a problem from *other* problems of the same op (other shapes on any
        device, or this shape class on another device): the fastest validated kernels (by speedup
        over the best there, this device first) and the commonest failure categories."""
        good = self._rows(
            "SELECT problem, fingerprint, hw_hash, speedup_previous, code FROM ai_attempts "
            "WHERE op=? AND category='ok' AND code != '' AND NOT (key=? AND hw_hash=?) "
            "ORDER BY CASE WHEN hw_hash=? THEN 0 ELSE 1 END, COALESCE(speedup_previous, 0) DESC LIMIT 20",
            (op, key, hw_hash, hw_hash),
        )  # fmt: skip
        related, seen = [], set()
        for r in good:
            if r["code"] in seen or len(related) >= limit:
                continue
            seen.add(r["code"])
            p, fp = json.loads(r["problem"]), json.loads(r["fingerprint"])
            from uhop.ops import get as get_op

            dims = "x".join(str(p.get("dims", {}).get(d, "?")) for d in get_op(op).dims)
            related.append({"problem_text": f"{op}[{dims}] {p.get('dtype', '')}", "hw_name": fp.get("manifest") or fp.get("cpu") or "?",
                            "speedup": _num(r["speedup_previous"]), "code": r["code"]})  # fmt: skip
        notes = self._rows(
            "SELECT category, COUNT(*) AS n, MAX(reason) AS reason FROM ai_attempts "
            "WHERE op=? AND category != 'ok' AND NOT (key=? AND hw_hash=?) GROUP BY category ORDER BY n DESC LIMIT 5",
            (op, key, hw_hash),
        )  # fmt: skip
        return related, notes

    # ---- promotions -------------------------------------------------------------------------
    def add_promotion(
        self, key: str, op: str, sha256: str, file: str, median_s: float, previous: Mapping[str, Any] | None
    ) -> int:
        sql = "INSERT INTO ai_promotions(created, key, op, sha256, file, median_s, previous, quarantined, reason) VALUES (?,?,?,?,?,?,?,NULL,'')"
        vals = (
            time.time(),
            key,
            op,
            sha256,
            file,
            _num(median_s),
            None if previous is None else json.dumps(dict(previous), default=str),
        )
        with self.db._tx() as cur:
            if self.pg:
                return int(cur.execute(self._q(sql) + " RETURNING id", vals).fetchone()[0])
            return int(cur.execute(sql, vals).lastrowid)

    def promotions(self, key: str | None = None, *, active_only: bool = False) -> list[dict[str, Any]]:
        where = []
        args: list[Any] = []
        if key is not None:
            where.append("key=?")
            args.append(key)
        if active_only:
            where.append("quarantined IS NULL")
        sql = (
            "SELECT id, "
            + ", ".join(PROMOTION_COLUMNS)
            + " FROM ai_promotions"
            + (f" WHERE {' AND '.join(where)}" if where else "")
        )
        rows = self._rows(sql + " ORDER BY id", args)
        for r in rows:
            r["previous"] = json.loads(r["previous"]) if r.get("previous") else None
        return rows

    def mark_quarantined(self, promotion_id: int, reason: str) -> None:
        with self.db._tx() as cur:
            cur.execute(
                self._q("UPDATE ai_promotions SET quarantined=?, reason=? WHERE id=?"),
                (time.time(), reason[:500], promotion_id),
            )


class _PgDB(PostgresDB):
    def __init__(self, url: str) -> None:
        self._pg_url = url
        self._local = threading.local()


_dbs: dict[str, AttemptStore] = {}


def attempt_store(store: Any) -> AttemptStore:
    """The attempt tables in the database of a kernel store (SQLite or PostgreSQL), cached per URL."""
    url = store.url
    if url not in _dbs:
        if url.startswith("sqlite:///"):
            _dbs[url] = AttemptStore(SQLiteDB(url[len("sqlite:///") :]))
        else:
            _dbs[url] = AttemptStore(_PgDB(getattr(store, "_pg_url", url)))
    return _dbs[url]
