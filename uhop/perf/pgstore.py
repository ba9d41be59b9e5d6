"""The PostgreSQL kernel store: a central store many machines share (``UHOP_STORE=postgresql://...``).

Same public methods and semantics as :class:`uhop.store.SQLiteStore`: ``get``, ``entries``,
``measurements``, ``record`` (one transaction under the conflict rule :func:`uhop.store.replaces`:
measured beats unmeasured, faster beyond the measured spread beats slower, ``force`` overrides;
every writer's measurements are kept), ``delete``, ``export``,
``import_``, ``integrity_ok``, ``url``, ``close``; plus the ``telemetry`` table
(:mod:`uhop.perf.telemetry`). Problem, candidate, fingerprint and the other JSON fields are
``jsonb`` so a central store can be queried by field (``fingerprint->>'cpu'``).

One connection per thread and process (a forked child opens its own). The conflict rule is decided
on the row locked with ``SELECT ... FOR UPDATE`` (after ``INSERT ... ON CONFLICT DO NOTHING``
created it if absent), so concurrent writers queue on the row; DDL
runs under an advisory lock so processes that open a fresh database together do not race.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from uhop.store import (
    SCHEMA_VERSION,
    Entry,
    ExportImport,
    PostgresDB,
    _dumps,
    _num,
    _quarantine_row,
    measurement_rows,
    replaces,
)

try:
    import psycopg
except ImportError as exc:  # open_store turns this into "pip install 'uhop[perf]'"
    raise ImportError(f"the PostgreSQL store needs psycopg 3: {exc}") from None

from uhop.perf.telemetry import COLUMNS as TEL_COLUMNS
from uhop.perf.telemetry import FLOORS_SQL
from uhop.perf.telemetry import JSON_COLUMNS as TEL_JSON

_DDL_LOCK = 7234101  # pg_advisory_xact_lock id for schema creation

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kernels (
    key TEXT PRIMARY KEY, op TEXT NOT NULL, problem JSONB NOT NULL, candidate JSONB NOT NULL,
    median_s DOUBLE PRECISION, gflops DOUBLE PRECISION, gbps DOUBLE PRECISION, policy TEXT NOT NULL,
    fingerprint JSONB NOT NULL, content_hash TEXT NOT NULL DEFAULT '',
    created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL, spread DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS measurements (
    id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, op TEXT NOT NULL, candidate JSONB NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', median_s DOUBLE PRECISION,
    spread DOUBLE PRECISION, n INTEGER, max_err DOUBLE PRECISION, created DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_key ON measurements(key);
CREATE TABLE IF NOT EXISTS telemetry (
    id BIGSERIAL PRIMARY KEY,
    created DOUBLE PRECISION NOT NULL, run_id TEXT NOT NULL, source TEXT NOT NULL,
    key TEXT NOT NULL, op TEXT NOT NULL, dims JSONB NOT NULL, dtype TEXT NOT NULL, params JSONB NOT NULL,
    problem JSONB NOT NULL, flops DOUBLE PRECISION, bytes DOUBLE PRECISION,
    backend TEXT NOT NULL, template TEXT NOT NULL, config JSONB NOT NULL, config_hash TEXT NOT NULL,
    hw_hash TEXT NOT NULL, fingerprint JSONB NOT NULL, hw_features JSONB NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', max_err DOUBLE PRECISION,
    median_s DOUBLE PRECISION, min_s DOUBLE PRECISION, max_s DOUBLE PRECISION, spread DOUBLE PRECISION,
    n INTEGER, calls INTEGER, energy_j DOUBLE PRECISION, versions JSONB NOT NULL,
    timer TEXT NOT NULL DEFAULT 'wall'
);
CREATE INDEX IF NOT EXISTS telemetry_op ON telemetry(op, key);
CREATE INDEX IF NOT EXISTS telemetry_floor ON telemetry(hw_hash, op, dtype)
"""

_KERNEL_COLS = "key, op, problem, candidate, median_s, gflops, gbps, policy, fingerprint, content_hash, created, updated, spread"


def _masked(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages)."""
    head, sep, tail = url.partition("://")
    if "@" in tail:
        cred, _, host = tail.rpartition("@")
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        tail = f"{cred}@{host}"
    return head + sep + tail


class PostgresStore(PostgresDB, ExportImport):
    def __init__(self, url: str) -> None:
        self._url = self._pg_url = url
        self._local = threading.local()
        try:
            conn = self._conn()
        except psycopg.OperationalError as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(f"UHOP_STORE {_masked(url)}: cannot connect to PostgreSQL: {msg}") from None
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            # schema 1 -> 2; only when the column is missing: an ALTER takes an exclusive lock,
            # and other processes may be writing rows right now
            cur.execute("SELECT 1 FROM information_schema.columns WHERE table_name='kernels' AND column_name='spread' "
                        "AND table_schema=current_schema()")  # fmt: skip
            if cur.fetchone() is None:
                cur.execute("ALTER TABLE kernels ADD COLUMN IF NOT EXISTS spread DOUBLE PRECISION")
            cur.execute("SELECT value FROM meta WHERE name='schema_version'")
            row = cur.fetchone()
            if row is None:
                cur.execute("INSERT INTO meta(name, value) VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),))
            elif int(row[0]) < SCHEMA_VERSION:  # the ALTER above migrated it
                cur.execute("UPDATE meta SET value=%s WHERE name='schema_version'", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(
                    f"store {_masked(url)} has schema version {row[0]}, newer than this UHOP's {SCHEMA_VERSION}; "
                    "upgrade uhop or point UHOP_STORE elsewhere"
                )
        del conn

    @property
    def url(self) -> str:
        return self._url

    def _read(self, q: str, args: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
        with self._tx() as cur:
            cur.execute(q, args)
            return [c.name for c in cur.description], cur.fetchall()

    # ---- reads ---------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        _, rows = self._read(f"SELECT {_KERNEL_COLS} FROM kernels WHERE key=%s", (key,))
        return self._entry(rows[0]) if rows else None

    def entries(self, op: str | None = None) -> list[Entry]:
        q, args = f"SELECT {_KERNEL_COLS} FROM kernels", ()
        if op:
            q, args = q + " WHERE op=%s", (op,)
        # COLLATE "C": byte order, as SQLite sorts, whatever the database's locale
        _, rows = self._read(q + ' ORDER BY op COLLATE "C", key COLLATE "C"', args)
        return [self._entry(r) for r in rows]

    def measurements(self, key: str) -> list[dict[str, Any]]:
        cols, rows = self._read(
            "SELECT candidate, status, reason, median_s, spread, n, max_err, created FROM measurements "
            "WHERE key=%s ORDER BY id",
            (key,),
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]

    @staticmethod
    def _entry(row: tuple) -> Entry:
        return Entry(*row)

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
        """Store measurements and (if ``chosen``) the choice, in one transaction. Returns the entry
        in force afterwards, which is another writer's if theirs was better."""
        now = time.time()
        op = problem["op"]
        rows = measurement_rows(key, op, measurements, now)
        with self._tx() as cur:
            if rows:
                cur.executemany(
                    "INSERT INTO measurements(key, op, candidate, status, reason, median_s, spread, n, max_err, created) "
                    "VALUES (%s,%s,%s::jsonb,%s,%s,%s,%s,%s,%s,%s)",
                    rows,
                )
            if chosen is not None:
                values = (key, op, _dumps(problem), _dumps(chosen), _num(median_s), _num(gflops), _num(gbps), policy,
                          _dumps(fingerprint), content_hash, now, now, _num(spread))  # fmt: skip
                cur.execute(
                    f"INSERT INTO kernels({_KERNEL_COLS}) VALUES (%s,%s,%s::jsonb,%s::jsonb,%s,%s,%s,%s,%s::jsonb,%s,%s,%s,%s) "
                    "ON CONFLICT(key) DO NOTHING",
                    values,
                )
                if cur.rowcount == 0:  # a row exists: lock it, then apply the rule
                    cur.execute(f"SELECT {_KERNEL_COLS} FROM kernels WHERE key=%s FOR UPDATE", (key,))
                    old = cur.fetchone()
                    if replaces(self._entry(old), median_s, spread, force):
                        cur.execute(
                            "UPDATE kernels SET problem=%s::jsonb, candidate=%s::jsonb, median_s=%s, gflops=%s, gbps=%s, "
                            "policy=%s, fingerprint=%s::jsonb, content_hash=%s, updated=%s, spread=%s WHERE key=%s",
                            (*values[2:10], now, _num(spread), key),
                        )
            cur.execute(f"SELECT {_KERNEL_COLS} FROM kernels WHERE key=%s", (key,))
            row = cur.fetchone()
        return self._entry(row) if row else None

    def invalidate(self, key: str) -> bool:
        """Drop the choice for ``key`` (stale or failing), keeping its measurements as history."""
        with self._tx() as cur:
            cur.execute("DELETE FROM kernels WHERE key=%s", (key,))
            return cur.rowcount > 0

    def quarantine(self, key: str, reason: str) -> bool:
        """As :meth:`uhop.store.SQLiteStore.quarantine`: a ``quarantined`` measurement row and the
        entry's removal, in one transaction."""
        now = time.time()
        with self._tx() as cur:
            cur.execute(f"SELECT {_KERNEL_COLS} FROM kernels WHERE key=%s FOR UPDATE", (key,))
            row = cur.fetchone()
            if row is None:
                return False
            e = self._entry(row)
            cur.executemany(
                "INSERT INTO measurements(key, op, candidate, status, reason, median_s, spread, n, max_err, created) "
                "VALUES (%s,%s,%s::jsonb,%s,%s,%s,%s,%s,%s,%s)",
                measurement_rows(key, e.op, [_quarantine_row(e, reason)], now),
            )
            cur.execute("DELETE FROM kernels WHERE key=%s", (key,))
        return True

    def quarantined(self, content_hash: str) -> bool:
        _, rows = self._read("SELECT 1 FROM measurements WHERE status='quarantined' AND reason LIKE %s LIMIT 1",
                             (f"%content_hash={content_hash};%",))  # fmt: skip
        return bool(rows)

    def delete(self, key: str | None = None, op: str | None = None) -> int:
        with self._tx() as cur:
            if key is not None:
                cur.execute("DELETE FROM kernels WHERE key=%s", (key,))
                n = cur.rowcount
                cur.execute("DELETE FROM measurements WHERE key=%s", (key,))
            elif op is not None:
                cur.execute("DELETE FROM kernels WHERE op=%s", (op,))
                n = cur.rowcount
                cur.execute("DELETE FROM measurements WHERE op=%s", (op,))
            else:
                cur.execute("DELETE FROM kernels")
                n = cur.rowcount
                cur.execute("DELETE FROM measurements")
        return n

    def integrity_ok(self) -> bool:
        """True if the server answers, the schema version is readable and every kernel row's JSON
        fields are objects (PostgreSQL's own storage is crash-safe; this checks UHOP's data)."""
        try:
            _, rows = self._read(
                "SELECT (SELECT value FROM meta WHERE name='schema_version'), "
                "(SELECT COUNT(*) FROM kernels WHERE jsonb_typeof(problem) != 'object' "
                " OR jsonb_typeof(candidate) != 'object' OR jsonb_typeof(fingerprint) != 'object')"
            )
        except psycopg.Error:
            return False
        return rows[0][0] is not None and rows[0][1] == 0

    # ---- telemetry (see uhop.perf.telemetry) ---------------------------------------------------
    def insert_telemetry(self, rows: Sequence[Mapping[str, Any]]) -> int:
        marks = ", ".join("%s::jsonb" if c in TEL_JSON else "%s" for c in TEL_COLUMNS)
        with self._tx() as cur:
            cur.executemany(
                f"INSERT INTO telemetry({', '.join(TEL_COLUMNS)}) VALUES ({marks})",
                [tuple(_dumps(r[c]) if c in TEL_JSON and not isinstance(r[c], str) else r[c] for c in TEL_COLUMNS)
                 for r in rows],
            )  # fmt: skip
        return len(rows)

    def telemetry_rows(self, op: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        q, args = f"SELECT id, {', '.join(TEL_COLUMNS)} FROM telemetry WHERE TRUE", []
        if op:
            q, args = q + " AND op=%s", [*args, op]
        if status:
            q, args = q + " AND status=%s", [*args, status]
        cols, rows = self._read(q + " ORDER BY id", args)
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def telemetry_floors(self, args: Sequence[Any], statuses: str) -> dict[str, float]:
        return {b: float(t) for b, t in self._read(FLOORS_SQL.format("%s", statuses), tuple(args))[1] if t is not None}

    def telemetry_count(self, op: str | None = None) -> int:
        q, args = ("SELECT COUNT(*) FROM telemetry WHERE op=%s", (op,)) if op else ("SELECT COUNT(*) FROM telemetry", ())
        return int(self._read(q, args)[1][0][0])

    def delete_telemetry(self, op: str | None = None) -> int:
        with self._tx() as cur:
            if op:
                cur.execute("DELETE FROM telemetry WHERE op=%s", (op,))
            else:
                cur.execute("DELETE FROM telemetry")
            return cur.rowcount
