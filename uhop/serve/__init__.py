"""``uhop serve``: a read-only dashboard over a kernel store, and ``/metrics`` for Prometheus.

Standard library only (``http.server``): one thread per request, each with its own read-only
database connection. Security contract:

- binds to 127.0.0.1 by default; any other address needs ``UHOP_SERVE_TOKEN`` set, and then every
  request must carry it (``Authorization: Bearer TOKEN``, the ``uhop_token`` cookie, or once
  ``?token=TOKEN``, which sets the cookie); a token set for a loopback bind is enforced too;
- the store is opened read-only and the server answers GET/HEAD only, so it never writes;
- every string from the store is HTML-escaped, and pages carry a Content-Security-Policy that
  allows no script at all.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from uhop.serve.data import StoreReader
from uhop.serve.pages import PAGES, Ctx, layout

log = logging.getLogger("uhop.serve")

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _label(v: Any) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def store_metrics(r: StoreReader) -> str:
    """Store-derived gauges in the Prometheus text format (0.0.4)."""
    out: list[str] = []

    def gauge(name: str, help_: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        out.append(f"# HELP {name} {help_}\n# TYPE {name} gauge")
        for labels, v in samples:
            lab = ",".join(f'{k}="{_label(x)}"' for k, x in labels.items())
            out.append(f"{name}{{{lab}}} {float(v)!r}" if lab else f"{name} {float(v)!r}")

    gauge("uhop_store_entries", "Chosen kernels in the store, by op, backend and device.",
          [({"op": o, "backend": b, "device": d}, n) for o, d, b, n in r.entry_counts()])  # fmt: skip
    gauge("uhop_store_measurements", "Measurements in the store, by op and status.",
          [({"op": o, "status": s}, n) for (o, s), n in sorted(_sum2(r.status_counts()).items())])  # fmt: skip
    gauge("uhop_store_recent_tuning_runs", "Tuning runs recorded in the last window (distinct problem and time).",
          [({"window": k}, n) for k, n in zip(("1h", "24h"), r.recent_runs((3600.0, 86400.0)).values(), strict=True)])
    gauge("uhop_store_tuning_jobs", "Jobs in the persistent tuning queue, by status (pending = queue depth).",
          [({"status": s}, n) for s, n in sorted(r.job_counts().items())])  # fmt: skip
    last = r.last_update()
    if last is not None:
        gauge("uhop_store_last_update_timestamp_seconds", "Unix time of the newest store entry.", [({}, last)])
    return "\n".join(out) + "\n"


def _sum2(counts: list[tuple[str, str, str, int]]) -> dict[tuple[str, str], int]:
    acc: dict[tuple[str, str], int] = {}
    for o, _, s, n in counts:
        acc[(o, s)] = acc.get((o, s), 0) + n
    return acc


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "uhop-serve"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: str, ctype: str = "text/html; charset=utf-8", extra: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorized(self, query: dict[str, str]) -> bool | str:
        token = self.server.token
        if not token:
            return True
        given = []
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given.append(auth[7:].strip())
        for part in self.headers.get("Cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == "uhop_token":
                given.append(v)
        if "token" in query:
            if hmac.compare_digest(query["token"].encode(), token.encode()):
                return "set-cookie"
        return any(hmac.compare_digest(g.encode(), token.encode()) for g in given)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        auth = self._authorized(query)
        if auth is False:
            self._send(HTTPStatus.UNAUTHORIZED, "unauthorized: this dashboard needs its token (UHOP_SERVE_TOKEN)\n",
                       "text/plain; charset=utf-8", {"WWW-Authenticate": 'Bearer realm="uhop"'})  # fmt: skip
            return
        if auth == "set-cookie":  # a token in the URL: keep it in a cookie and drop it from the address bar
            rest = "&".join(f"{k}={v}" for k, v in parse_qs(url.query, keep_blank_values=True).items() if k != "token")
            self._send(HTTPStatus.SEE_OTHER, "", extra={
                "Location": url.path + ("?" + rest if rest else ""),
                "Set-Cookie": f"uhop_token={self.server.token}; HttpOnly; SameSite=Strict; Path=/"})  # fmt: skip
            return
        try:
            if url.path == "/metrics":
                self._send(HTTPStatus.OK, store_metrics(self.server.reader), "text/plain; version=0.0.4; charset=utf-8")
            elif url.path == "/healthz":
                self._send(HTTPStatus.OK, "ok\n", "text/plain; charset=utf-8")
            elif url.path in PAGES:
                title, view = PAGES[url.path]
                t0 = time.perf_counter()
                body = view(self.server.reader, query, Ctx())
                log.debug("%s rendered in %.3f s", url.path, time.perf_counter() - t0)
                self._send(HTTPStatus.OK, layout(f"UHOP · {title}", body, url.path, self.server.reader.url))
            else:
                self._send(HTTPStatus.NOT_FOUND, layout("Not found", "<p>No such page.</p>", None, self.server.reader.url))
        except Exception as exc:  # a bad store row must not take the server down; say what broke
            log.exception("rendering %s failed", url.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"error rendering {url.path}: {type(exc).__name__}\n",
                       "text/plain; charset=utf-8")  # fmt: skip

    def _read_only(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "read-only dashboard: GET only\n", "text/plain; charset=utf-8",
                   {"Allow": "GET, HEAD"})  # fmt: skip

    do_POST = do_PUT = do_DELETE = do_PATCH = _read_only  # noqa: N815


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, reader: StoreReader, host: str, port: int, token: str | None) -> None:
        self.reader, self.token = reader, token
        super().__init__((host, port), Handler)


def make_server(store_url: str, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> DashboardServer:
    """A dashboard server (not yet serving: call ``serve_forever``). ``token`` defaults to
    ``UHOP_SERVE_TOKEN``; a non-loopback ``host`` without one raises ValueError."""
    if token is None:
        from uhop.config import settings

        token = settings().serve_token
    token = token or None
    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} is not a loopback address: set UHOP_SERVE_TOKEN to a secret token "
                         "(clients then send it as 'Authorization: Bearer TOKEN'), or bind to 127.0.0.1")  # fmt: skip
    if token is not None and len(token) < 16:
        raise ValueError(f"UHOP_SERVE_TOKEN must be at least 16 characters, got {len(token)}")
    return DashboardServer(StoreReader(store_url), host, port, token)
