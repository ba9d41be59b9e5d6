"""Telemetry: one row per measurement, with everything a cost model (or a person) needs.

The ``telemetry`` table lives in the same database as the kernel store (the SQLite file of
:func:`uhop.store.open_store` or the PostgreSQL database of a ``postgresql://`` URL). Each row
holds: op, problem (dims, dtype, params, FLOP and byte counts), backend, template, config and its
hash (:func:`uhop.space.candidate_hash`), the hardware fingerprint (and its hash) and manifest
features (:func:`uhop.perf.features.hardware_features`), time statistics in seconds (median, min,
max, spread = (p90-p10)/median, samples, calls per sample), energy in joules per call where the
platform exposes a counter (Linux RAPL), the validation outcome (status, reason, max error),
library versions, the clock the times come from, the source (``tune`` or ``collect``) and a
timestamp (Unix seconds).

The tuner calls :func:`record_measurements` after each tuning run; failures to write telemetry
are logged and swallowed (telemetry never breaks tuning).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import platform
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from uhop.store import SQLiteDB

log = logging.getLogger("uhop.perf")

#: columns of the telemetry table, in order (JSON columns hold sort_keys JSON text)
COLUMNS = (
    "created", "run_id", "source", "key", "op", "dims", "dtype", "params", "problem", "flops", "bytes",
    "backend", "template", "config", "config_hash", "hw_hash", "fingerprint", "hw_features",
    "status", "reason", "max_err", "median_s", "min_s", "max_s", "spread", "n", "calls", "energy_j",
    "versions", "timer",
)  # fmt: skip
JSON_COLUMNS = ("dims", "params", "problem", "config", "fingerprint", "hw_features", "versions")

SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS telemetry (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL, run_id TEXT NOT NULL, source TEXT NOT NULL,
    key TEXT NOT NULL, op TEXT NOT NULL, dims TEXT NOT NULL, dtype TEXT NOT NULL, params TEXT NOT NULL,
    problem TEXT NOT NULL, flops REAL, bytes REAL,
    backend TEXT NOT NULL, template TEXT NOT NULL, config TEXT NOT NULL, config_hash TEXT NOT NULL,
    hw_hash TEXT NOT NULL, fingerprint TEXT NOT NULL, hw_features TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', max_err REAL,
    median_s REAL, min_s REAL, max_s REAL, spread REAL, n INTEGER, calls INTEGER, energy_j REAL,
    versions TEXT NOT NULL, timer TEXT NOT NULL DEFAULT 'wall'
);
CREATE INDEX IF NOT EXISTS telemetry_op ON telemetry(op, key);
CREATE INDEX IF NOT EXISTS telemetry_floor ON telemetry(hw_hash, op, dtype);
"""

#: per backend, the fastest call recorded on one machine for the same op and dtype on other,
#: no larger problems (:func:`call_floors`); {0} is the driver's placeholder, {1} the statuses read
FLOORS_SQL = ("SELECT backend, MIN(min_s) FROM telemetry WHERE hw_hash={0} AND op={0} AND dtype={0} AND key<>{0} "
              "AND status IN ({1}) AND min_s > 0 AND COALESCE(flops, 0) <= {0} AND COALESCE(bytes, 0) <= {0} "
              "GROUP BY backend")  # fmt: skip
#: the statuses whose times :func:`call_floors` reads, on a CPU and on a GPU
FLOOR_STATUSES = {"cpu": "'ok', 'too-slow'", "gpu": "'ok'"}


def _num(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _dumps(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def hw_hash(fingerprint: Mapping[str, Any]) -> str:
    return hashlib.sha256(_dumps(dict(fingerprint)).encode()).hexdigest()[:16]


@functools.cache
def versions() -> dict[str, str | None]:
    from uhop.problem import _version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for mod in ("uhop", "numpy", "torch", "numba", "triton", "scipy"):
        out[mod] = _version(mod)
    return out


# ---- energy -------------------------------------------------------------------------------------
_RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


def read_energy_j() -> float | None:
    """Package energy counter in joules (Linux RAPL), or None where the platform hides it (VMs,
    non-Intel/AMD, no permission). Differences of two reads give energy; the counter wraps."""
    try:
        return int(_RAPL.read_text()) / 1e6
    except (OSError, ValueError):
        return None


# ---- rows ---------------------------------------------------------------------------------------
def make_rows(
    problem: Any,
    measurements: Iterable[Any],
    fingerprint: Mapping[str, Any] | None = None,
    *,
    key: str | None = None,
    source: str = "tune",
    run_id: str | None = None,
    energy_j: Mapping[str, float] | None = None,
    timer: str = "wall",
    hw: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Telemetry rows for ``measurements`` (tuner ``Measurement`` objects or their ``to_json``
    dicts) of ``problem`` (a :class:`~uhop.problem.Problem` or its JSON). ``energy_j`` maps a
    candidate id to joules per call; ``timer`` names the clock the times were read from
    (``wall``: ``perf_counter``; ``thread-cpu`` / ``process-cpu``: CPU time, immune to
    preemption on a shared machine); ``hw`` replaces the detected manifest features (a device
    emulated by restricting this one, e.g. to AVX2). Skipped candidates (never run) are not recorded."""
    from uhop.backends.base import Candidate
    from uhop.config import settings
    from uhop.perf.features import hardware_features
    from uhop.problem import Problem, hardware_fingerprint
    from uhop.space import candidate_hash

    if not isinstance(problem, Problem):
        problem = Problem.from_json(problem)
    fp = dict(fingerprint) if fingerprint is not None else hardware_fingerprint(problem.device)
    key = key or problem.key(settings().shape_buckets)
    hw = dict(hw) if hw is not None else hardware_features(problem.device)
    now, run_id = time.time(), run_id or uuid.uuid4().hex[:12]
    common = {
        "created": now, "run_id": run_id, "source": source, "key": key, "op": problem.op,
        "dims": _dumps(dict(problem.dims)), "dtype": problem.dtype, "params": _dumps(dict(problem.params)),
        "problem": _dumps(problem.to_json()), "flops": _num(problem.flops()), "bytes": _num(problem.bytes()),
        "hw_hash": hw_hash(fp), "fingerprint": _dumps(fp), "hw_features": _dumps(hw), "versions": _dumps(versions()),
        "timer": timer,
    }  # fmt: skip
    rows = []
    for m in measurements:
        if isinstance(m, Mapping):
            d = dict(m)
            cand = d["candidate"]
            cand = cand if isinstance(cand, Candidate) else Candidate.from_json(cand)
            t = d
        else:
            d = m.to_json()
            cand = m.candidate
            t = dataclasses.asdict(m.timing) if getattr(m, "timing", None) is not None else d
        if d["status"] == "skipped":
            continue
        ok = d["status"] == "ok" and _num(t.get("median_s")) is not None
        slow = d["status"] == "too-slow"  # its one timed call, where it got that far: min_s only
        rows.append({
            **common, "backend": cand.backend, "template": cand.template, "config": _dumps(dict(cand.config)),
            "config_hash": candidate_hash(cand), "status": d["status"], "reason": str(d.get("reason", ""))[:500],
            "max_err": _num(d.get("max_err")),
            "median_s": _num(t.get("median_s")) if ok else None, "min_s": _num(t.get("min_s")) if ok or slow else None,
            "max_s": _num(t.get("max_s")) if ok else None, "spread": _num(t.get("spread")) if ok else None,
            "n": t.get("n"), "calls": t.get("calls"),
            "energy_j": _num((energy_j or {}).get(cand.id)),
        })  # fmt: skip
    return rows


def record_measurements(
    problem: Any,
    measurements: Iterable[Any],
    fingerprint: Mapping[str, Any] | None = None,
    *,
    store: Any = None,
    key: str | None = None,
    source: str = "tune",
    energy_j: Mapping[str, float] | None = None,
    timer: str = "wall",
    hw: Mapping[str, float] | None = None,
    strict: bool = False,
) -> int:
    """Record one tuning run's measurements as telemetry rows in ``store`` (default: the
    configured store), in one transaction. Returns the number of rows written; on failure logs a
    warning and returns 0 (``strict=True`` raises instead)."""
    try:
        from uhop.store import open_store

        rows = make_rows(problem, measurements, fingerprint, key=key, source=source, energy_j=energy_j, timer=timer, hw=hw)
        if rows:
            telemetry_db(store or open_store()).insert(rows)
        return len(rows)
    except Exception as exc:
        if strict:
            raise
        log.warning("telemetry not recorded: %s: %s", type(exc).__name__, exc)
        return 0


def call_floors(store: Any, problem: Any, fingerprint: Mapping[str, Any], key: str) -> dict[str, float]:
    """Per backend, the fastest call recorded on this hardware for the same op and dtype on
    another problem no larger than ``problem`` (in FLOPs and bytes): a valid candidate's fastest
    sample, or on a CPU the one call timed of a candidate stopped as too slow (on a GPU that one
    call is a wall-clock launch and synchronization, 47-56 us for Triton GEMMs of 64 cubed on the
    H100 where a 2048-cubed one runs 28 us in steady state: not a floor). A call of that backend on
    ``problem`` is not expected to be faster (more work, the same launch and runtime costs), so the
    tuner skips a candidate whose backend cannot get under its cutoff (3x the fastest so far) rather
    than compile it: IREE and OpenCL candidates of a 4x4x4 matmul spent 4.3 s compiling, each
    to be stopped as too slow, after an 8x8x8 one had shown the same. {} when nothing is recorded or
    the table cannot be read (never raises)."""
    try:
        args = (hw_hash(fingerprint), problem.op, problem.dtype, key, float(problem.flops() or 0), float(problem.bytes() or 0))
        return telemetry_db(store).floors(args, FLOOR_STATUSES["cpu" if problem.device == "cpu" else "gpu"])
    except Exception as exc:
        log.debug("call floors not read: %s: %s", type(exc).__name__, exc)
        return {}


# ---- storage ------------------------------------------------------------------------------------
class SQLiteTelemetry(SQLiteDB):
    """The telemetry table inside the kernel store's SQLite file (the store's connection and
    transaction discipline: :class:`uhop.store.SQLiteDB`)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._conn().executescript(SQLITE_DDL)

    def insert(self, rows: Sequence[Mapping[str, Any]]) -> int:
        q = f"INSERT INTO telemetry({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        with self._tx() as db:
            db.executemany(q, [tuple(r[c] for c in COLUMNS) for r in rows])
        return len(rows)

    def rows(self, op: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        q, args = f"SELECT id, {', '.join(COLUMNS)} FROM telemetry WHERE 1=1", []
        if op:
            q, args = q + " AND op=?", [*args, op]
        if status:
            q, args = q + " AND status=?", [*args, status]
        cur = self._conn().execute(q + " ORDER BY id", args)
        cols = [c[0] for c in cur.description]
        return [_decode(dict(zip(cols, r, strict=True))) for r in cur]

    def floors(self, args: Sequence[Any], statuses: str) -> dict[str, float]:
        rows = self._conn().execute(FLOORS_SQL.format("?", statuses), tuple(args))
        return {b: float(t) for b, t in rows if t is not None}

    def count(self, op: str | None = None) -> int:
        if op:
            return self._conn().execute("SELECT COUNT(*) FROM telemetry WHERE op=?", (op,)).fetchone()[0]
        return self._conn().execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]

    def delete(self, op: str | None = None) -> int:
        with self._tx() as db:
            if op:
                return db.execute("DELETE FROM telemetry WHERE op=?", (op,)).rowcount
            return db.execute("DELETE FROM telemetry").rowcount


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for c in JSON_COLUMNS:
        if isinstance(row.get(c), str):
            row[c] = json.loads(row[c])
    return row


_sqlite_tel: dict[str, SQLiteTelemetry] = {}


def close_all() -> None:
    """Close and forget the telemetry tables opened so far (:func:`uhop.store.close_stores`)."""
    for t in list(_sqlite_tel.values()):
        t.close()
    _sqlite_tel.clear()


def telemetry_db(store: Any) -> Any:
    """The telemetry table of ``store``: the PostgreSQL store is its own telemetry table; a SQLite
    store gets a :class:`SQLiteTelemetry` on the same file."""
    if hasattr(store, "insert_telemetry"):
        return _PgAdapter(store)
    path = getattr(store, "path", None)
    if path is None:
        raise TypeError(f"store {store!r} has neither a SQLite path nor telemetry methods")
    k = str(Path(path).resolve())
    if k not in _sqlite_tel:
        _sqlite_tel[k] = SQLiteTelemetry(path)
    return _sqlite_tel[k]


class _PgAdapter:
    def __init__(self, store: Any) -> None:
        self.store = store

    def insert(self, rows: Sequence[Mapping[str, Any]]) -> int:
        return self.store.insert_telemetry(rows)

    def rows(self, op: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        return [_decode(r) for r in self.store.telemetry_rows(op, status)]

    def count(self, op: str | None = None) -> int:
        return self.store.telemetry_count(op)

    def floors(self, args: Sequence[Any], statuses: str) -> dict[str, float]:
        return self.store.telemetry_floors(args, statuses)

    def delete(self, op: str | None = None) -> int:
        return self.store.delete_telemetry(op)


def export(store: Any, path: str | Path, fmt: str = "parquet", op: str | None = None) -> int:
    """Write the telemetry rows (JSON columns as JSON text) to ``path`` as ``parquet``, ``csv``
    or ``jsonl`` (atomically: temp file + rename). Returns the row count."""
    if fmt not in ("parquet", "csv", "jsonl"):
        raise ValueError(f"format must be parquet, csv or jsonl, got {fmt!r}")
    rows = telemetry_db(store).rows(op)
    for r in rows:
        for c in JSON_COLUMNS:
            r[c] = _dumps(r[c])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    cols = ["id", *COLUMNS]
    if fmt == "jsonl":
        tmp.write_text("".join(json.dumps({c: r[c] for c in cols}) + "\n" for r in rows))
    else:
        import pyarrow as pa

        types = {"created": pa.float64(), "id": pa.int64(), "n": pa.int64(), "calls": pa.int64()}
        for c in ("flops", "bytes", "max_err", "median_s", "min_s", "max_s", "spread", "energy_j"):
            types[c] = pa.float64()
        schema = pa.schema([(c, types.get(c, pa.string())) for c in cols])
        table = pa.Table.from_pylist([{c: r[c] for c in cols} for r in rows], schema=schema)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        else:
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, tmp)
    tmp.replace(path)
    return len(rows)
