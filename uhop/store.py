"""The kernel store: chosen kernel per problem key plus every measurement taken.

SQLite by default (WAL, versioned schema, every write one ``BEGIN IMMEDIATE`` transaction, so
several processes can tune at once and a ``kill -9`` at any point leaves a consistent database).
A PostgreSQL store implements the same methods (``postgresql://`` URLs; see the perf store).

Conflict rule (:func:`replaces`, one rule for SQLite and PostgreSQL, decided inside the write
transaction): a measured entry replaces an unmeasured (``fast``) one; among measured entries a new
one replaces the old only when it is faster by more than the measured spread of either, so a
noisy re-run or a run restricted to some backends never replaces a faster valid entry; ``force``
(``uhop tune --force``) always replaces. Stale or failing entries are removed (:meth:`invalidate`)
before they are re-tuned, so they are always replaced. Every writer's measurements are kept.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: kernels.spread (the chosen kernel's measured spread)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kernels (
    key TEXT PRIMARY KEY,
    op TEXT NOT NULL,
    problem TEXT NOT NULL,
    candidate TEXT NOT NULL,
    median_s REAL,
    gflops REAL,
    gbps REAL,
    policy TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    content_hash TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    spread REAL
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    candidate TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    median_s REAL,
    spread REAL,
    n INTEGER,
    max_err REAL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_key ON measurements(key);
"""


@dataclass(frozen=True)
class Entry:
    key: str
    op: str
    problem: dict[str, Any]
    candidate: dict[str, Any]
    median_s: float | None
    gflops: float | None
    gbps: float | None
    policy: str
    fingerprint: dict[str, Any]
    content_hash: str
    created: float
    updated: float
    #: (p90 - p10) / median of the chosen kernel's timing; None for entries chosen without timing
    spread: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _dumps(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


#: a new measured entry must be at least this much faster than the stored one to replace it, even
#: when both spreads are smaller (timings taken at different moments differ by a few percent)
MIN_GAIN = 0.02
#: cap on the spread used by the rule (a pathological sample must not make an entry unbeatable)
MAX_SPREAD = 0.5


def replaces(old: Entry | None, median_s: float | None, spread: float | None, force: bool = False) -> bool:
    """Whether a new choice timed at ``median_s`` (None: chosen without timing) with relative
    ``spread`` replaces the stored entry ``old``: the conflict rule of every store."""
    if old is None or force:
        return True
    new_med, old_med = _num(median_s), _num(old.median_s)
    if new_med is None:
        return False  # unmeasured never replaces anything stored
    if old_med is None:
        return True  # measured beats unmeasured
    margin = min(MAX_SPREAD, max(MIN_GAIN, _num(spread) or 0.0, _num(old.spread) or 0.0))
    return new_med < old_med * (1.0 - margin)


def measurement_rows(key: str, op: str, measurements: Iterable[dict[str, Any]], now: float) -> list[tuple]:
    """Rows of the ``measurements`` table (both stores): key, op, candidate JSON, status, reason,
    median_s, spread, n, max_err, created."""
    return [
        (key, op, _dumps(m["candidate"]), m["status"], m.get("reason", ""), _num(m.get("median_s")),
         _num(m.get("spread")), m.get("n"), _num(m.get("max_err")), now)
        for m in measurements
    ]  # fmt: skip


def _quarantine_row(e: Entry, reason: str) -> dict[str, Any]:
    """The measurement row that records a quarantine (both stores): the reason names the content
    hash first, so :meth:`quarantined` finds it without a schema change."""
    return {"candidate": e.candidate, "status": "quarantined", "reason": f"content_hash={e.content_hash}; {reason}"[:500]}


def _wal(conn: sqlite3.Connection, timeout_s: float = 60.0) -> None:
    """Switch to WAL. Changing the journal mode can fail at once with "database is locked" while
    another process creates the same database (SQLite does not run the busy handler for it), so
    retry with backoff; a database already in WAL mode needs no change."""
    deadline, wait = time.monotonic() + timeout_s, 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(wait)
            wait = min(wait * 2, 0.25)


class SQLiteDB:
    """One SQLite file: a connection per thread and per process (never shared across ``fork``),
    WAL, a busy timeout, and ``BEGIN IMMEDIATE`` transactions, so writers queue on the lock instead
    of failing half-way through a lock upgrade. The kernel store, the job queue and the telemetry
    table all live in one such file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            _wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL+NORMAL survives process crashes (kill -9)
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class PostgresDB:
    """A PostgreSQL database: a connection per thread and per process (never shared across
    ``fork``), one transaction per ``with self._tx() as cursor``. Subclasses set ``self._pg_url``."""

    _pg_url: str

    def _conn(self) -> Any:
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or getattr(self._local, "pid", None) != os.getpid():
            conn = psycopg.connect(self._pg_url, autocommit=False, connect_timeout=10)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        conn = self._conn()
        try:
            with conn.cursor() as cur:
                yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class ExportImport:
    """``export``/``import_`` for any store with ``entries``, ``measurements`` and ``record``: one
    JSON document format, so every store imports every other's export."""

    def export(self, path: str | Path) -> int:
        """Write every entry with its measurements as JSON (atomically: temp file + rename)."""
        entries = self.entries()
        doc = {
            "uhop_store_export": SCHEMA_VERSION,
            "entries": [{**e.to_json(), "measurements": self.measurements(e.key)} for e in entries],
        }
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        tmp.replace(path)
        return len(entries)

    def import_(self, path: str | Path) -> int:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"FILE {path} is not a UHOP store export: {exc}") from None
        if not isinstance(doc, dict) or "uhop_store_export" not in doc:
            raise ValueError(f"FILE {path} is not a UHOP store export (no 'uhop_store_export' field)")
        n = 0
        for e in doc["entries"]:
            self.record(
                e["key"], e["problem"], e["candidate"], e.get("measurements", []),
                median_s=e.get("median_s"), gflops=e.get("gflops"), gbps=e.get("gbps"), policy=e.get("policy", "tune"),
                fingerprint=e.get("fingerprint", {}), content_hash=e.get("content_hash", ""), spread=e.get("spread"),
            )  # fmt: skip
            n += 1
        return n


class SQLiteStore(SQLiteDB, ExportImport):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._conn().executescript(_SCHEMA)  # idempotent DDL; executescript commits on its own
        with self._tx() as db:
            cols = {r[1] for r in db.execute("PRAGMA table_info(kernels)")}
            if "spread" not in cols:  # schema 1 -> 2
                db.execute("ALTER TABLE kernels ADD COLUMN spread REAL")
                db.execute("UPDATE meta SET value=? WHERE name='schema_version'", (str(SCHEMA_VERSION),))
            row = db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta(name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(
                    f"store {self.path} has schema version {row[0]}, newer than this UHOP's {SCHEMA_VERSION}; "
                    "upgrade uhop or point UHOP_HOME elsewhere"
                )

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    # ---- reads ---------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        row = self._conn().execute("SELECT * FROM kernels WHERE key=?", (key,)).fetchone()
        return self._entry(row) if row else None

    def entries(self, op: str | None = None) -> list[Entry]:
        q, args = "SELECT * FROM kernels", ()
        if op:
            q, args = q + " WHERE op=?", (op,)
        return [self._entry(r) for r in self._conn().execute(q + " ORDER BY op, key", args)]

    def measurements(self, key: str) -> list[dict[str, Any]]:
        cur = self._conn().execute(
            "SELECT candidate, status, reason, median_s, spread, n, max_err, created FROM measurements "
            "WHERE key=? ORDER BY id",
            (key,),
        )
        cols = [c[0] for c in cur.description]
        out = []
        for r in cur:
            d = dict(zip(cols, r, strict=True))
            d["candidate"] = json.loads(d["candidate"])
            out.append(d)
        return out

    def _entry(self, row: tuple) -> Entry:
        (key, op, problem, cand, med, gf, gb, policy, fp, ch, created, updated, spread) = row
        return Entry(
            key, op, json.loads(problem), json.loads(cand), med, gf, gb, policy, json.loads(fp), ch, created, updated, spread
        )

    # ---- writes ---------------------------------------------------------------------------
    def record(
        self,
        key: str,
        problem: dict[str, Any],
        chosen: dict[str, Any] | None,
        measurements: Iterable[dict[str, Any]],
        *,
        median_s: float | None,
        gflops: float | None,
        gbps: float | None,
        policy: str,
        fingerprint: dict[str, Any],
        content_hash: str = "",
        spread: float | None = None,
        force: bool = False,
    ) -> Entry | None:
        """Store measurements and (if ``chosen``) the choice, in one transaction; the choice takes
        the key only under the conflict rule (:func:`replaces`). Returns the entry in force
        afterwards, which is the stored one (another writer's, or an earlier faster run's) when
        the new choice did not beat it."""
        now = time.time()
        op = problem["op"]
        with self._tx() as db:
            db.executemany(
                "INSERT INTO measurements(key, op, candidate, status, reason, median_s, spread, n, max_err, created) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                measurement_rows(key, op, measurements, now),
            )
            if chosen is not None:
                row = db.execute("SELECT * FROM kernels WHERE key=?", (key,)).fetchone()
                if replaces(self._entry(row) if row else None, median_s, spread, force):
                    db.execute(
                        "INSERT OR REPLACE INTO kernels(key, op, problem, candidate, median_s, gflops, gbps, policy, "
                        "fingerprint, content_hash, created, updated, spread) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (key, op, _dumps(problem), _dumps(chosen), _num(median_s), _num(gflops), _num(gbps), policy,
                         _dumps(fingerprint), content_hash, row[10] if row else now, now, _num(spread)),
                    )  # fmt: skip
            row = db.execute("SELECT * FROM kernels WHERE key=?", (key,)).fetchone()
        return self._entry(row) if row else None

    def invalidate(self, key: str) -> bool:
        """Drop the choice for ``key`` (stale or failing), keeping its measurements as history."""
        with self._tx() as db:
            return db.execute("DELETE FROM kernels WHERE key=?", (key,)).rowcount > 0

    def quarantine(self, key: str, reason: str) -> bool:
        """Withdraw the choice for ``key`` because its kernel failed a dispatch-time spot check:
        in one transaction, a ``quarantined`` measurement row (the kernel's candidate, its
        content hash and ``reason``) and the entry's removal. Returns whether an entry was there.
        :meth:`quarantined` answers from those rows, so a re-tune can skip the kernel."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT * FROM kernels WHERE key=?", (key,)).fetchone()
            if row is None:
                return False
            e = self._entry(row)
            db.executemany(
                "INSERT INTO measurements(key, op, candidate, status, reason, median_s, spread, n, max_err, created) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                measurement_rows(key, e.op, [_quarantine_row(e, reason)], now),
            )
            db.execute("DELETE FROM kernels WHERE key=?", (key,))
        return True

    def quarantined(self, content_hash: str) -> bool:
        """Whether a kernel with this content hash was ever quarantined (any key)."""
        like = f"%content_hash={content_hash};%"
        q = "SELECT 1 FROM measurements WHERE status='quarantined' AND reason LIKE ? LIMIT 1"
        return self._conn().execute(q, (like,)).fetchone() is not None

    def delete(self, key: str | None = None, op: str | None = None) -> int:
        with self._tx() as db:
            if key is not None:
                n = db.execute("DELETE FROM kernels WHERE key=?", (key,)).rowcount
                db.execute("DELETE FROM measurements WHERE key=?", (key,))
            elif op is not None:
                n = db.execute("DELETE FROM kernels WHERE op=?", (op,)).rowcount
                db.execute("DELETE FROM measurements WHERE op=?", (op,))
            else:
                n = db.execute("DELETE FROM kernels").rowcount
                db.execute("DELETE FROM measurements")
        return n

    def integrity_ok(self) -> bool:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


_stores: dict[str, SQLiteStore] = {}


def close_stores() -> None:
    """Close and forget every store this process opened (a process that moves between many
    homes: the test suite gives each test its own). Each thread's connection to a store closes
    once the store is dropped; this thread's closes now. Call it when no background work is
    running (``uhop.wait()``)."""
    import sys

    for store in list(_stores.values()):
        try:
            store.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    _stores.clear()
    if "uhop.perf.telemetry" in sys.modules:  # its tables live in the stores' files
        sys.modules["uhop.perf.telemetry"].close_all()


def open_store(url: str | None = None) -> SQLiteStore:
    """The store for ``url`` (default: ``UHOP_STORE`` or SQLite under ``UHOP_HOME``), cached per URL."""
    from uhop.config import settings

    url = url or settings().resolved_store_url
    if url not in _stores:
        if url.startswith("sqlite:///"):
            _stores[url] = SQLiteStore(url[len("sqlite:///") :])
        elif url.startswith(("postgresql://", "postgres://")):
            try:
                from uhop.perf.pgstore import PostgresStore  # type: ignore[import-not-found]
            except ImportError as exc:
                raise RuntimeError(f"UHOP_STORE={url!r} needs the PostgreSQL store (pip install 'uhop[perf]'): {exc}") from None
            _stores[url] = PostgresStore(url)
        else:
            raise ValueError(f"UHOP_STORE must be sqlite:///PATH or postgresql://..., got {url!r}")
    return _stores[url]
