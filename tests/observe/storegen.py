"""Synthetic kernel stores for the observability tests: real store files written through
:class:`uhop.store.SQLiteStore` (small ones) or its schema in bulk (10,000 entries), with hostile
strings in candidate configs and failure reasons."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

from uhop.store import SQLiteStore

HOSTILE = [
    "<script>alert('x')</script>",
    '"><img src=x onerror=alert(1)>',
    "</svg><script>document.title='pwned'</script>",
    "' onmouseover='alert(1)",
    "{{7*7}} &amp; &lt;b&gt;",
]
OPS = ("matmul", "softmax", "layernorm", "elementwise")
BACKENDS = ("numpy", "torch", "numba")
STATUSES = ("ok", "ok", "ok", "wrong-result", "compile-error", "crash", "timeout", "input-mutated")


def problem(op: str, i: int, device: str = "cpu") -> dict:
    dims = {"M": 64 + i, "N": 64, "K": 32} if op == "matmul" else {"R": 8 + i, "N": 128}
    return {"op": op, "dims": dims, "dtype": "float32", "params": {}, "arity": 2, "layout": "contiguous",
            "device": device, "array": "numpy"}


def candidate(backend: str, j: int, hostile: bool) -> dict:
    cfg = {"rows": 2**j}
    if hostile:
        cfg["note"] = HOSTILE[j % len(HOSTILE)]
    return {"backend": backend, "template": f"t{j}", "config": cfg}


def measurements(rng: random.Random, op: str, hostile: bool, k: int = 6) -> list[dict]:
    out = []
    for j in range(k):
        status = STATUSES[rng.randrange(len(STATUSES))] if j else "ok"
        reason = "" if status == "ok" else f"max error 3e-2 > 1e-3 {HOSTILE[j % len(HOSTILE)] if hostile else ''}"
        out.append({"candidate": candidate(BACKENDS[j % len(BACKENDS)], j, hostile), "status": status, "reason": reason,
                    "median_s": rng.uniform(1e-5, 1e-2) if status == "ok" else None, "spread": rng.uniform(0.01, 0.3),
                    "n": 7, "max_err": 1e-6})
    return out


def small_store(path: Path, n: int = 12, runs: int = 3, hostile: bool = True, seed: int = 0) -> SQLiteStore:
    """``n`` problems, each tuned ``runs`` times, through the store's own ``record``."""
    rng = random.Random(seed)
    store = SQLiteStore(path)
    for i in range(n):
        op = OPS[i % len(OPS)]
        p = problem(op, i)
        key = f"{op}:{i}:float32:{'<b>k</b>' if hostile and i == 0 else 'k'}"
        for _ in range(runs):
            ms = measurements(rng, op, hostile)
            best = min((m for m in ms if m["status"] == "ok"), key=lambda m: m["median_s"])
            med = best["median_s"]
            store.record(key, p, best["candidate"], ms, median_s=med, gflops=2e-3 / med, gbps=1e-3 / med,
                         policy="tune", fingerprint={"device": "cpu", "cpu": "test <cpu>"})
            time.sleep(0.002)  # distinct timestamps: one tuning run each
    return store


def bulk_store(path: Path, n: int = 10_000, seed: int = 0) -> SQLiteStore:
    """``n`` entries with 6 measurements each, inserted in one transaction (the schema is the store's)."""
    rng = random.Random(seed)
    store = SQLiteStore(path)
    now = time.time()
    kernels, meas = [], []
    for i in range(n):
        op = OPS[i % len(OPS)]
        key = f"{op}:{i}:float32:bulk"
        ms = measurements(rng, op, hostile=i % 97 == 0)
        best = min((m for m in ms if m["status"] == "ok"), key=lambda m: m["median_s"])
        med = best["median_s"]
        kernels.append((key, op, json.dumps(problem(op, i)), json.dumps(best["candidate"]), med, 2e-3 / med,
                        1e-3 / med, "tune", json.dumps({"device": "cpu"}), "", now, now - i))
        meas += [(key, op, json.dumps(m["candidate"]), m["status"], m["reason"], m["median_s"], m["spread"], 7, 1e-6,
                  now - i) for m in ms]
    db = sqlite3.connect(path)
    with db:
        db.executemany("INSERT INTO kernels(key, op, problem, candidate, median_s, gflops, gbps, policy, fingerprint, "
                       "content_hash, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", kernels)
        db.executemany("INSERT INTO measurements(key, op, candidate, status, reason, median_s, spread, n, max_err, "
                       "created) VALUES (?,?,?,?,?,?,?,?,?,?)", meas)
    db.close()
    return store


def start(url: str, token: str | None = None):
    """A dashboard serving ``url`` on a free loopback port, in a daemon thread: (server, base URL)."""
    from uhop.serve import make_server

    srv = make_server(url, "127.0.0.1", 0, token=token)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.update(k for k, _ in attrs)


def assert_escaped(body: str) -> None:
    """No markup from the store survives: parsed as a browser would, the page has no script,
    img or iframe element and no event-handler attribute."""
    p = _Tags()
    p.feed(body)
    assert not p.tags & {"script", "img", "iframe", "object", "embed"}, p.tags
    assert not [a for a in p.attrs if a.startswith("on")], p.attrs
