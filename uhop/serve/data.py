"""Read-only queries over a kernel store for the dashboard, the report and ``/metrics``.

:class:`StoreReader` opens the database read-only (SQLite ``mode=ro``; PostgreSQL with
``default_transaction_read_only``), so nothing it does can write to the store, whatever a
request asks. It reads the tables of :mod:`uhop.store` (``kernels``, ``measurements``) and of
:mod:`uhop.tune.jobs` (``tune_runs``, ``tune_jobs``) when they exist. Times are seconds; ``since``
filters are Unix seconds.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

#: seconds an aggregate (counts by status, by backend) is reused before it is counted again
CACHE_S = 5.0
#: statuses that mean a candidate ran and produced wrong output (the rest are build/run faults)
VALIDATION = ("wrong-result", "bad-output", "input-mutated", "stale-output")


def _j(x: Any) -> Any:
    """A JSON column: text in SQLite, already decoded (JSONB) in PostgreSQL."""
    return json.loads(x) if isinstance(x, str | bytes) else x


def candidate_id(c: dict[str, Any]) -> str:
    """``backend/template{k=v,...}``, as :attr:`uhop.backends.base.Candidate.id` prints it."""
    cfg = c.get("config") or {}
    inner = ",".join(f"{k}={cfg[k]}" for k in sorted(cfg))
    return f"{c.get('backend', '?')}/{c.get('template', '?')}" + (f"{{{inner}}}" if inner else "")


def describe(problem: dict[str, Any]) -> str:
    """``op[d1xd2...] dtype`` with dims in the op's order (stored JSON sorts them by name)."""
    dims = problem.get("dims") or {}
    try:
        from uhop.ops import get as get_op

        order = [d for d in get_op(problem.get("op", "")).dims if d in dims]
        dims = {d: dims[d] for d in order + [d for d in dims if d not in order]}
    except Exception:  # an op this UHOP does not know: keep the stored order
        pass
    return f"{problem.get('op', '?')}[{'x'.join(str(v) for v in dims.values())}] {problem.get('dtype', '')}".strip()


class StoreReader:
    """Read-only view of the store at ``url`` (``sqlite:///PATH`` or ``postgresql://...``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        if url.startswith("sqlite:///"):
            self.kind = "sqlite"
            self.path = Path(url[len("sqlite:///") :])
            if not self.path.is_file():
                raise FileNotFoundError(f"--store: no SQLite store at {self.path} (tune something first)")
            self._json = "json_extract({col}, '$.{field}')"
        elif url.startswith(("postgresql://", "postgres://")):
            self.kind = "postgresql"
            self._json = "({col}->>'{field}')"
        else:
            raise ValueError(f"--store must be sqlite:///PATH or postgresql://..., got {url!r}")
        self._peaks: dict[tuple[str, str], tuple[float | None, float | None]] = {}
        self._cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._conn()  # fail at start, not on the first request

    # ---- connections ---------------------------------------------------------------------------
    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.kind == "sqlite":
                conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30.0,
                                       check_same_thread=False)  # fmt: skip
            else:
                import psycopg

                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                       options="-c default_transaction_read_only=on")  # fmt: skip
            self._local.conn = conn
        return conn

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (``?`` placeholders in both dialects); a missing table reads as empty."""
        if self.kind == "postgresql":
            sql = sql.replace("?", "%s")
        try:
            cur = self._conn().execute(sql, args)
            return list(cur.fetchall())
        except Exception as exc:  # a store without the job tables (never ran a search), say
            if "no such table" in str(exc) or "does not exist" in str(exc):
                if self.kind == "postgresql":
                    self._conn().rollback()
                return []
            raise

    def field(self, col: str, name: str) -> str:
        return self._json.format(col=col, field=name)

    # ---- kernels -------------------------------------------------------------------------------
    def _where(self, op: str | None, since: float | None, device: str | None = None) -> tuple[str, tuple[Any, ...]]:
        where, args = [], []
        if op:
            where.append("op=?")
            args.append(op)
        if device:
            where.append(f"{self.field('problem', 'device')}=?")
            args.append(device)
        if since:
            where.append("updated>=?")
            args.append(since)
        return (" WHERE " + " AND ".join(where)) if where else "", tuple(args)

    def entry_counts(self, since: float | None = None) -> list[tuple[str, str, str, int]]:
        """(op, device, backend, entries), counted in the database (no row is decoded here)."""
        return self._cached(("entry_counts", since), lambda: self._entry_counts(since))

    def _entry_counts(self, since: float | None) -> list[tuple[str, str, str, int]]:
        dev, be = self.field("problem", "device"), self.field("candidate", "backend")
        w, args = self._where(None, since)
        q = f"SELECT op, {dev}, {be}, COUNT(*) FROM kernels{w} GROUP BY op, {dev}, {be} ORDER BY op, {dev}, {be}"
        return [(o, d or "cpu", b or "?", int(n)) for o, d, b, n in self.rows(q, args)]

    def fingerprint_counts(self, since: float | None = None) -> list[tuple[dict[str, Any], int]]:
        w, args = self._where(None, since)
        return [(_j(fp) or {}, int(n)) for fp, n in self.rows(f"SELECT fingerprint, COUNT(*) FROM kernels{w} GROUP BY fingerprint", args)]

    def last_update(self) -> float | None:
        rows = self.rows("SELECT MAX(updated) FROM kernels")
        return rows[0][0] if rows else None

    def entries(self, op: str | None = None, since: float | None = None, device: str | None = None,
                limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:  # fmt: skip
        """Chosen kernels: key, op, problem, candidate, median_s, gflops, gbps, policy, device,
        fingerprint, updated; ordered by op and key; ``limit``/``offset`` page through them."""
        w, args = self._where(op, since, device)
        q = "SELECT key, op, problem, candidate, median_s, gflops, gbps, policy, fingerprint, updated FROM kernels" + w
        q += " ORDER BY op, key" + (f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else "")
        out = []
        for key, op_, prob, cand, med, gf, gb, policy, fp, upd in self.rows(q, args):
            p = _j(prob)
            out.append({"key": key, "op": op_, "problem": p, "candidate": _j(cand), "median_s": med, "gflops": gf,
                        "gbps": gb, "policy": policy, "device": p.get("device", "cpu"), "fingerprint": _j(fp),
                        "updated": upd})  # fmt: skip
        return out

    def count(self, op: str | None = None, since: float | None = None, device: str | None = None) -> int:
        w, args = self._where(op, since, device)
        return int(self.rows("SELECT COUNT(*) FROM kernels" + w, args)[0][0])

    def ops(self) -> list[str]:
        return [r[0] for r in self.rows("SELECT DISTINCT op FROM kernels ORDER BY op")]

    def entry(self, key: str) -> dict[str, Any] | None:
        got = [e for e in self.entries_for_keys([key])]
        return got[0] if got else None

    def entries_for_keys(self, keys: list[str]) -> list[dict[str, Any]]:
        if not keys:
            return []
        q = ("SELECT key, op, problem, candidate, median_s, gflops, gbps, policy, fingerprint, updated FROM kernels "
             f"WHERE key IN ({','.join('?' * len(keys))})")  # fmt: skip
        return [{"key": k, "op": o, "problem": _j(p), "candidate": _j(c), "median_s": m, "gflops": gf, "gbps": gb,
                 "policy": po, "device": _j(p).get("device", "cpu"), "fingerprint": _j(fp), "updated": u}
                for k, o, p, c, m, gf, gb, po, fp, u in self.rows(q, tuple(keys))]  # fmt: skip

    def roofline_pct(self, e: dict[str, Any]) -> float | None:
        """Achieved rate as a percentage of the binding roof (peak FLOP/s or bandwidth of this
        device kind's manifest, measured figures where ``uhop hw probe`` stored them), or None."""
        dev = str(e.get("device", "cpu")).split(":")[0]
        dt = (e.get("problem") or {}).get("dtype", "float32")
        if (dev, dt) not in self._peaks:
            try:
                from uhop.hardware import get_capabilities

                caps = get_capabilities(device=dev)
                self._peaks[(dev, dt)] = (caps.peak_flops({"float32": "fp32", "float64": "fp64"}.get(dt, dt)),
                                          caps.peak_bandwidth())  # fmt: skip
            except Exception:
                self._peaks[(dev, dt)] = (None, None)
        pf, bw = self._peaks[(dev, dt)]
        shares = [100 * v * 1e9 / peak for v, peak in ((e.get("gflops"), pf), (e.get("gbps"), bw)) if v and peak]
        return max(shares) if shares else None

    # ---- measurements --------------------------------------------------------------------------
    def measurements(self, key: str) -> list[dict[str, Any]]:
        rows = self.rows("SELECT candidate, status, reason, median_s, spread, n, max_err, created FROM measurements "
                         "WHERE key=? ORDER BY id", (key,))  # fmt: skip
        return [{"candidate": _j(c), "id": candidate_id(_j(c)), "status": s, "reason": r, "median_s": m,
                 "spread": sp, "n": n, "max_err": e, "created": t} for c, s, r, m, sp, n, e, t in rows]  # fmt: skip

    def _cached(self, key: tuple[Any, ...], fn: Any) -> Any:
        """``fn()``, reused for :data:`CACHE_S` seconds: the aggregate scans behind several views
        (one report renders them three times; a dashboard user clicks through them)."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        val = fn()
        self._cache[key] = (now, val)
        return val

    def status_counts(self, since: float | None = None) -> list[tuple[str, str, str, int]]:
        """(op, backend, status, count) over every measurement (skipped ones excluded)."""
        return self._cached(("status_counts", since), lambda: self._status_counts(since))

    def _status_counts(self, since: float | None) -> list[tuple[str, str, str, int]]:
        backend = self.field("candidate", "backend")
        q = f"SELECT op, {backend}, status, COUNT(*) FROM measurements WHERE status != 'skipped'"
        args: tuple[Any, ...] = ()
        if since:
            q, args = q + " AND created>=?", (since,)
        return [(o, b or "?", s, int(n)) for o, b, s, n in self.rows(q + f" GROUP BY op, {backend}, status", args)]

    def recent_failures(self, limit: int = 100, since: float | None = None) -> list[dict[str, Any]]:
        q = ("SELECT key, op, candidate, status, reason, created FROM measurements "
             "WHERE status NOT IN ('ok', 'skipped')")  # fmt: skip
        args: tuple[Any, ...] = ()
        if since:
            q, args = q + " AND created>=?", (since,)
        rows = self.rows(q + f" ORDER BY id DESC LIMIT {int(limit)}", args)
        return [{"key": k, "op": o, "id": candidate_id(_j(c)), "backend": _j(c).get("backend", "?"), "status": s,
                 "reason": r, "created": t} for k, o, c, s, r, t in rows]  # fmt: skip

    def tuning_runs(self, key: str) -> list[dict[str, Any]]:
        """A problem's tuning history: one run per store write (its measurements share a timestamp),
        with the best valid time, candidates measured and failures."""
        runs: dict[float, dict[str, Any]] = {}
        for m in self.measurements(key):
            r = runs.setdefault(m["created"], {"created": m["created"], "best_s": None, "best": "", "ok": 0, "failed": 0})
            if m["status"] == "ok" and m["median_s"] is not None:
                r["ok"] += 1
                if r["best_s"] is None or m["median_s"] < r["best_s"]:
                    r["best_s"], r["best"] = m["median_s"], m["id"]
            elif m["status"] != "skipped":
                r["failed"] += 1
        return sorted(runs.values(), key=lambda r: r["created"])

    def recent_runs(self, windows_s: tuple[float, ...] = (3600.0, 86400.0)) -> dict[float, int]:
        """Tuning runs recorded in each of the last ``windows_s`` seconds (a run: a distinct key and
        timestamp), counted in one scan."""
        now = time.time()
        cols = ", ".join(f"SUM(CASE WHEN created >= {now - w!r} THEN 1 ELSE 0 END)" for w in windows_s)
        q = f"SELECT {cols} FROM (SELECT DISTINCT key, created FROM measurements WHERE created>=?) AS r"
        rows = self.rows(q, (now - max(windows_s),))
        return {w: int(v or 0) for w, v in zip(windows_s, rows[0] if rows else (), strict=False)}

    def measured_keys(self, op: str | None = None, limit: int = 200, offset: int = 0) -> list[tuple[str, str, int]]:
        """(key, op, measurements) of problems with measurements, most measured first."""
        q, args = "SELECT key, op, COUNT(*) FROM measurements", ()
        if op:
            q, args = q + " WHERE op=?", (op,)
        q += f" GROUP BY key, op ORDER BY COUNT(*) DESC, key LIMIT {int(limit)} OFFSET {int(offset)}"
        return [(k, o, int(n)) for k, o, n in self.rows(q, args)]

    # ---- search runs and the job queue ---------------------------------------------------------
    def search_runs(self) -> list[dict[str, Any]]:
        rows = self.rows("SELECT id, spec, status, created, updated, summary FROM tune_runs ORDER BY created DESC")
        return [{"id": i, "spec": _j(s), "status": st, "created": c, "updated": u, "summary": _j(sm)}
                for i, s, st, c, u, sm in rows]  # fmt: skip

    def run_measurements(self, run_id: str) -> list[dict[str, Any]]:
        """The measurements of a search run's finished jobs (``Measurement.to_json`` dicts)."""
        out = []
        for (res,) in self.rows("SELECT result FROM tune_jobs WHERE run_id=? AND status='done' ORDER BY id", (run_id,)):
            m = (_j(res) or {}).get("measurement") if res else None
            if m:
                m["id"] = candidate_id(m["candidate"])
                out.append(m)
        return out

    def job_counts(self) -> dict[str, int]:
        return {s: int(n) for s, n in self.rows("SELECT status, COUNT(*) FROM tune_jobs GROUP BY status")}


# ---- pure helpers over query results ------------------------------------------------------------
def pareto_front(ms: list[dict[str, Any]], objectives: list[str]) -> list[dict[str, Any]]:
    """Valid measurements not dominated in every objective (``latency`` = median_s,
    ``energy`` = energy_j, ``memory`` = mem_bytes; smaller is better)."""
    col = {"latency": "median_s", "energy": "energy_j", "memory": "mem_bytes"}

    def vec(m: dict[str, Any]) -> tuple[float, ...] | None:
        v = tuple(m.get(col.get(o, o)) for o in objectives)
        return v if all(x is not None and math.isfinite(float(x)) for x in v) else None  # type: ignore[arg-type]

    pts = [(m, vec(m)) for m in ms if m.get("status") == "ok"]
    pts = [(m, v) for m, v in pts if v is not None]
    front = []
    for m, v in pts:
        if not any(all(a <= b for a, b in zip(w, v, strict=True)) and w != v for _, w in pts):
            front.append(m)
    return front


def by_status(counts: list[tuple[str, str, str, int]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for _, _, s, n in counts:
        out[s] += n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
