"""Tuning jobs and their persistent queue: SQLite by default, PostgreSQL for ``postgresql://`` URLs.

A :class:`TuningJob` is one candidate to measure on one problem (op, problem, backend, params,
priority) plus its life: status, attempts, retry count, start/end timestamps, measured latency and
the full result. Jobs belong to a *run* (one ``uhop tune`` invocation: its spec is stored too, so
``uhop tune --resume`` can pick it up after a crash).

Guarantees, in the field's words:

- **Deterministic order**: workers claim the highest priority first, ties by submission order (id).
- **At most one result per job**: a claim hands out an attempt number (a fencing token);
  :meth:`JobQueue.complete` only succeeds for the attempt currently running, so a worker that was
  declared dead but comes back cannot overwrite or duplicate a result. ``(run_id, key)`` is unique,
  so a config is never queued twice in one run.
- **Nothing lost**: a worker that dies mid-job leaves a ``running`` row; the executor that notices
  (or the lease running out) puts it back to ``pending`` with ``retries + 1``, up to ``max_retries``.
- **Write-through**: a result is committed with the status change, in one transaction.

SQLite: the tables live in the kernel store's file (``open_store().path``), created here with
their own ``CREATE TABLE IF NOT EXISTS``; every write is a ``BEGIN IMMEDIATE`` transaction (WAL is
on). PostgreSQL: the same SQL with ``FOR UPDATE SKIP LOCKED`` claims (psycopg 3).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uhop.store import PostgresDB, SQLiteDB

STATUSES = ("pending", "running", "done", "failed", "cancelled")
TERMINAL = ("done", "failed", "cancelled")
RUN_STATUSES = ("running", "done", "failed")

_COLUMNS = (
    "id", "run_id", "key", "op", "problem", "backend", "params", "priority", "status", "attempts", "retries",
    "max_retries", "worker", "created", "started", "ended", "lease_until", "latency_s", "result", "error",
)  # fmt: skip


def _schema(serial: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS tune_runs (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    summary TEXT NOT NULL DEFAULT '{{}}'
);
CREATE TABLE IF NOT EXISTS tune_jobs (
    id {serial},
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    problem TEXT NOT NULL,
    backend TEXT NOT NULL,
    params TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL DEFAULT 3,
    worker TEXT NOT NULL DEFAULT '',
    created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION,
    ended DOUBLE PRECISION,
    lease_until DOUBLE PRECISION,
    latency_s DOUBLE PRECISION,
    result TEXT,
    error TEXT NOT NULL DEFAULT '',
    UNIQUE (run_id, key)
);
CREATE INDEX IF NOT EXISTS tune_jobs_claim ON tune_jobs (status, priority, id);
CREATE INDEX IF NOT EXISTS tune_jobs_run ON tune_jobs (run_id, status);
"""


@dataclass
class TuningJob:
    """One candidate on one problem. ``params`` holds the candidate's template and config (and
    what to measure: ``objectives``, ``cutoff_s``); ``key`` dedupes jobs within a run."""

    op: str
    problem: dict[str, Any]
    backend: str
    params: dict[str, Any]
    priority: int = 0
    run_id: str = ""
    key: str = ""
    max_retries: int = 3
    # --- state, set by the queue ---
    id: int | None = None
    status: str = "pending"
    attempts: int = 0
    retries: int = 0
    worker: str = ""
    created: float | None = None
    started: float | None = None
    ended: float | None = None
    lease_until: float | None = None
    latency_s: float | None = None
    result: dict[str, Any] | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.op:
            raise ValueError("op: a tuning job needs an op name")
        if not isinstance(self.priority, int):
            raise ValueError(f"priority must be an int, got {self.priority!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not self.key:
            from uhop.backends.base import Candidate
            from uhop.space import candidate_hash

            cand = Candidate.of(self.backend, self.params.get("template", ""), **self.params.get("config", {}))
            pkey = json.dumps(self.problem, sort_keys=True, default=str)
            self.key = candidate_hash(cand) + ":" + _short(pkey)

    def to_spec(self) -> dict[str, Any]:
        """The plain data a worker needs (crosses process and machine boundaries)."""
        return {"id": self.id, "attempt": self.attempts, "op": self.op, "problem": self.problem,
                "backend": self.backend, "params": self.params}  # fmt: skip


def _short(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobQueue:
    """The queue API; :class:`SQLiteJobQueue` and :class:`PostgresJobQueue` implement ``_tx``."""

    url: str
    _ph = "?"
    _skip_locked = ""

    # ---- plumbing -------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Any]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError
        yield

    def _q(self, sql: str) -> str:
        return sql.replace("?", self._ph)

    def _exec(self, db: Any, sql: str, args: Sequence[Any] = ()) -> Any:
        return db.execute(self._q(sql), tuple(args))

    def _job(self, row: Sequence[Any]) -> TuningJob:
        d = dict(zip(_COLUMNS, row, strict=True))
        return TuningJob(
            op=d["op"], problem=json.loads(d["problem"]), backend=d["backend"], params=json.loads(d["params"]),
            priority=d["priority"], run_id=d["run_id"], key=d["key"], max_retries=d["max_retries"], id=d["id"],
            status=d["status"], attempts=d["attempts"], retries=d["retries"], worker=d["worker"],
            created=d["created"], started=d["started"], ended=d["ended"], lease_until=d["lease_until"],
            latency_s=d["latency_s"], result=json.loads(d["result"]) if d["result"] else None, error=d["error"],
        )  # fmt: skip

    # ---- runs -----------------------------------------------------------------------------
    def create_run(self, spec: dict[str, Any], run_id: str | None = None) -> str:
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        now = time.time()
        with self._tx() as db:
            self._exec(db, "INSERT INTO tune_runs(id, spec, status, created, updated) VALUES (?,?,?,?,?)",
                       (run_id, json.dumps(spec, sort_keys=True, default=str), "running", now, now))  # fmt: skip
        return run_id

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self._tx() as db:
            row = self._exec(db, "SELECT id, spec, status, created, updated, summary FROM tune_runs WHERE id=?",
                             (run_id,)).fetchone()  # fmt: skip
        return _run_row(row) if row else None

    def runs(self, status: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT id, spec, status, created, updated, summary FROM tune_runs", ()
        if status:
            q, args = q + " WHERE status=?", (status,)
        with self._tx() as db:
            rows = self._exec(db, q + " ORDER BY created, id", args).fetchall()
        return [_run_row(r) for r in rows]

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        with self._tx() as db:
            self._exec(db, "UPDATE tune_runs SET status=?, updated=?, summary=? WHERE id=?",
                       (status, time.time(), json.dumps(summary or {}, default=str), run_id))  # fmt: skip

    # ---- jobs: submit and read ---------------------------------------------------------------
    def submit(self, jobs: Sequence[TuningJob]) -> list[int]:
        """Queue jobs (a job whose ``(run_id, key)`` is already queued is not queued again); returns
        the id of each job, existing or new, in order."""
        now = time.time()
        ids = []
        with self._tx() as db:
            for j in jobs:
                self._exec(db,
                    "INSERT INTO tune_jobs(run_id, key, op, problem, backend, params, priority, max_retries, created) "
                    "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (run_id, key) DO NOTHING",
                    (j.run_id, j.key, j.op, json.dumps(j.problem, sort_keys=True, default=str), j.backend,
                     json.dumps(j.params, sort_keys=True, default=str), j.priority, j.max_retries, now),
                )  # fmt: skip
                row = self._exec(db, "SELECT id FROM tune_jobs WHERE run_id=? AND key=?", (j.run_id, j.key)).fetchone()
                j.id = int(row[0])
                ids.append(j.id)
        return ids

    def get(self, job_id: int) -> TuningJob | None:
        with self._tx() as db:
            row = self._exec(db, f"SELECT {', '.join(_COLUMNS)} FROM tune_jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def jobs(self, run_id: str | None = None, status: str | Sequence[str] | None = None,
             ids: Sequence[int] | None = None) -> list[TuningJob]:  # fmt: skip
        q, args = f"SELECT {', '.join(_COLUMNS)} FROM tune_jobs WHERE 1=1", []
        if run_id is not None:
            q += " AND run_id=?"
            args.append(run_id)
        if status is not None:
            sts = [status] if isinstance(status, str) else list(status)
            q += f" AND status IN ({','.join('?' * len(sts))})"
            args += sts
        if ids is not None:
            if not ids:
                return []
            q += f" AND id IN ({','.join('?' * len(ids))})"
            args += list(ids)
        with self._tx() as db:
            rows = self._exec(db, q + " ORDER BY priority DESC, id", args).fetchall()
        return [self._job(r) for r in rows]

    def counts(self, run_id: str | None = None) -> dict[str, int]:
        q, args = "SELECT status, COUNT(*) FROM tune_jobs", ()
        if run_id is not None:
            q, args = q + " WHERE run_id=?", (run_id,)
        with self._tx() as db:
            rows = self._exec(db, q + " GROUP BY status", args).fetchall()
        out = dict.fromkeys(STATUSES, 0)
        out.update({s: int(n) for s, n in rows})
        return out

    # ---- jobs: the life cycle ----------------------------------------------------------------
    def claim(self, worker: str, *, run_id: str | None = None, lease_s: float = 900.0,
              job_id: int | None = None) -> TuningJob | None:  # fmt: skip
        """Take the next job (highest priority, then lowest id; a ``running`` job whose lease ran
        out counts as pending, as a retry). Returns it with ``attempts`` incremented: pass
        ``job.attempts`` back to :meth:`complete` / :meth:`fail`."""
        now = time.time()
        where, args = "(status='pending' OR (status='running' AND lease_until < ?))", [now]
        if run_id is not None:
            where += " AND run_id=?"
            args.append(run_id)
        if job_id is not None:
            where += " AND id=?"
            args.append(job_id)
        with self._tx() as db:
            # Jobs whose lease ran out once too often are failed, not retried forever.
            self._exec(db, "UPDATE tune_jobs SET status='failed', ended=?, error='lease expired after ' || attempts || "
                           "' attempts (worker lost)' WHERE status='running' AND lease_until < ? AND attempts > max_retries",
                       (now, now))  # fmt: skip
            row = self._exec(db, f"SELECT id, status FROM tune_jobs WHERE {where} ORDER BY priority DESC, id "
                                 f"LIMIT 1{self._skip_locked}", args).fetchone()  # fmt: skip
            if row is None:
                return None
            retry = 1 if row[1] == "running" else 0
            self._exec(db, "UPDATE tune_jobs SET status='running', worker=?, attempts=attempts+1, retries=retries+?, "
                           "started=?, lease_until=? WHERE id=?", (worker, retry, now, now + lease_s, row[0]))  # fmt: skip
            full = self._exec(db, f"SELECT {', '.join(_COLUMNS)} FROM tune_jobs WHERE id=?", (row[0],)).fetchone()
        return self._job(full)

    def heartbeat(self, job_id: int, attempt: int, lease_s: float = 900.0) -> bool:
        with self._tx() as db:
            cur = self._exec(db, "UPDATE tune_jobs SET lease_until=? WHERE id=? AND status='running' AND attempts=?",
                             (time.time() + lease_s, job_id, attempt))  # fmt: skip
            return cur.rowcount == 1

    def complete(self, job_id: int, attempt: int, result: dict[str, Any], latency_s: float | None = None) -> bool:
        """Store ``result`` and mark the job done -- only if ``attempt`` is still the one running
        (a stale worker's late result is refused: returns False)."""
        lat = latency_s if latency_s is not None and latency_s == latency_s and latency_s != float("inf") else None
        with self._tx() as db:
            cur = self._exec(db, "UPDATE tune_jobs SET status='done', ended=?, latency_s=?, result=?, lease_until=NULL "
                                 "WHERE id=? AND status='running' AND attempts=?",
                             (time.time(), lat, json.dumps(result, default=str), job_id, attempt))  # fmt: skip
            return cur.rowcount == 1

    def fail(self, job_id: int, attempt: int, error: str, *, retry: bool = True) -> str:
        """An attempt died (worker crash, lost node, timeout). Back to ``pending`` with one more
        retry if any are left and ``retry``; else ``failed``. Returns the new status ('' if stale)."""
        now = time.time()
        with self._tx() as db:
            row = self._exec(db, "SELECT retries, max_retries FROM tune_jobs WHERE id=? AND status='running' AND attempts=?",
                             (job_id, attempt)).fetchone()  # fmt: skip
            if row is None:
                return ""
            if retry and row[0] < row[1]:
                self._exec(db, "UPDATE tune_jobs SET status='pending', retries=retries+1, error=?, lease_until=NULL, "
                               "worker='' WHERE id=?", (error[:500], job_id))  # fmt: skip
                return "pending"
            self._exec(db, "UPDATE tune_jobs SET status='failed', ended=?, error=?, lease_until=NULL WHERE id=?",
                       (now, error[:500], job_id))  # fmt: skip
            return "failed"

    def release_worker(self, worker: str, error: str = "worker died", *, retry: bool = True) -> int:
        """Every job ``worker`` held goes back to pending (or fails when out of retries, or at
        once with ``retry=False``: the job itself killed the worker)."""
        with self._tx() as db:
            rows = self._exec(db, "SELECT id, attempts FROM tune_jobs WHERE status='running' AND worker=?",
                              (worker,)).fetchall()  # fmt: skip
        for job_id, attempt in rows:
            self.fail(job_id, attempt, f"{error} ({worker})", retry=retry)
        return len(rows)

    def requeue_running(self, run_id: str) -> int:
        """After a crash of the whole run: its ``running`` jobs go back to pending (as retries)."""
        with self._tx() as db:
            rows = self._exec(db, "SELECT id, attempts FROM tune_jobs WHERE status='running' AND run_id=?",
                              (run_id,)).fetchall()  # fmt: skip
        for job_id, attempt in rows:
            self.fail(job_id, attempt, "run interrupted")
        return len(rows)

    def cancel(self, run_id: str) -> int:
        with self._tx() as db:
            cur = self._exec(db, "UPDATE tune_jobs SET status='cancelled', ended=? WHERE run_id=? AND status='pending'",
                             (time.time(), run_id))  # fmt: skip
            return cur.rowcount

    def close(self) -> None:  # noqa: B027 - optional
        pass


def _run_row(row: Sequence[Any]) -> dict[str, Any]:
    rid, spec, status, created, updated, summary = row
    return {"id": rid, "spec": json.loads(spec), "status": status, "created": created, "updated": updated,
            "summary": json.loads(summary or "{}")}  # fmt: skip


class SQLiteJobQueue(SQLiteDB, JobQueue):
    """Jobs in a SQLite file (by default the kernel store's), WAL, ``BEGIN IMMEDIATE`` writes."""

    def __init__(self, path: str | Path) -> None:
        SQLiteDB.__init__(self, path)
        self.url = f"sqlite:///{self.path}"
        self._conn().executescript(_schema("INTEGER PRIMARY KEY AUTOINCREMENT"))


class PostgresJobQueue(PostgresDB, JobQueue):
    """The same queue in PostgreSQL (psycopg 3); claims use ``FOR UPDATE SKIP LOCKED`` so many
    workers on many machines take distinct jobs without waiting on each other."""

    _ph = "%s"
    _skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise RuntimeError(f"a postgresql:// job queue needs psycopg 3 (pip install 'uhop[perf]'): {exc}") from None
        self.url = self._pg_url = url
        self._psycopg = psycopg
        self._local = threading.local()
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(7234001)")  # concurrent first use: one creates the tables
            for stmt in _schema("BIGSERIAL PRIMARY KEY").split(";"):
                if stmt.strip():
                    db.execute(stmt)


_queues: dict[str, JobQueue] = {}


def open_queue(url: str | None = None) -> JobQueue:
    """The job queue for ``url``: ``postgresql://...`` or ``sqlite:///PATH``; default: the kernel
    store's database (``UHOP_STORE``, else SQLite under ``UHOP_HOME``). Cached per URL and process."""
    if url is None:
        from uhop.config import settings

        url = settings().resolved_store_url
    key = f"{url}@{os.getpid()}"
    if key not in _queues:
        if url.startswith(("postgresql://", "postgres://")):
            _queues[key] = PostgresJobQueue(url)
        elif url.startswith("sqlite:///"):
            _queues[key] = SQLiteJobQueue(url[len("sqlite:///") :])
        else:
            raise ValueError(f"queue URL must be sqlite:///PATH or postgresql://..., got {url!r}")
    return _queues[key]
