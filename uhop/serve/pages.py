"""The dashboard's views, as HTML fragments built from a :class:`~uhop.serve.data.StoreReader`.

Shared by ``uhop serve`` (one page per view, links between them) and ``uhop report`` (every view
in one file). Every string from the store goes through :func:`html.escape`; every URL parameter
through :func:`urllib.parse.quote`. Pages hold no script.
"""

from __future__ import annotations

import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from html import escape
from typing import Any
from urllib.parse import urlencode

from uhop.serve import svg
from uhop.serve.data import VALIDATION, StoreReader, by_status, describe, pareto_front

PAGE_ROWS = 200
#: entries listed in a report (a shareable file stays a few MB; the dashboard pages through all)
REPORT_ROWS = 1000
#: path -> (nav title, view)
View = Callable[[StoreReader, Mapping[str, str], "Ctx"], str]


class Ctx:
    """How a view links: to server pages (``static=False``) or to anchors in one report file."""

    def __init__(self, static: bool = False, since: float | None = None) -> None:
        self.static, self.since = static, since

    def link(self, path: str, text: str, **q: Any) -> str:
        if self.static:
            return _e(text)
        qs = urlencode({k: v for k, v in q.items() if v not in (None, "")})
        return f'<a href="{_e(path + ("?" + qs if qs else ""))}">{_e(text)}</a>'


def _e(x: object) -> str:
    return escape(str(x), quote=True)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def _num(v: float | None, fmt: str = "{:.3g}") -> str:
    return fmt.format(v) if v is not None and math.isfinite(v) else "-"


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (escape before); headers are escaped here."""
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _page_of(q: Mapping[str, str]) -> int:
    p = q.get("page", "0")
    return int(p) if p.isdigit() else 0


def _pager(ctx: Ctx, path: str, page: int, more: bool, **q: Any) -> str:
    if ctx.static:
        return ""
    out = []
    if page > 0:
        out.append(ctx.link(path, "« previous", page=page - 1, **q))
    if more:
        out.append(ctx.link(path, "next »", page=page + 1, **q))
    return f'<p class="pager">{" ".join(out)}</p>'


# ---- views ------------------------------------------------------------------------------------
def kernels(r: StoreReader, q: Mapping[str, str], ctx: Ctx) -> str:
    """Chosen kernels per op and device, with their rate against the roofline."""
    op, device = q.get("op") or None, q.get("device") or None
    per: dict[tuple[str, str], int] = defaultdict(int)
    for o, d, _, n in r.entry_counts(ctx.since):
        per[(o, d)] += n
    out = [svg.bar_chart([(f"{o} @ {d}", n) for (o, d), n in sorted(per.items())], "Chosen kernels per op and device",
                         "entries")]  # fmt: skip
    filt = ["op:"] + [ctx.link("/", o, op=o, device=device) for o in sorted({o for o, _ in per})]
    filt += ["device:"] + [ctx.link("/", d, op=op, device=d) for d in sorted({d for _, d in per})]
    if not ctx.static:
        out.append(f'<p class="filters">{" ".join(filt)} {ctx.link("/", "(all)")}</p>')
    page = _page_of(q)
    total = r.count(op, ctx.since, device)
    shown = r.entries(op, ctx.since, device, limit=REPORT_ROWS if ctx.static else PAGE_ROWS, offset=page * PAGE_ROWS)
    pts, rows = [], []
    for e in shown:
        pct = r.roofline_pct(e)
        name = describe(e["problem"])
        if pct is not None and e["median_s"]:
            pts.append((e["median_s"], pct, name, False))
        rows.append([ctx.link("/latency", name, key=e["key"]), _e(e["device"]), _e(_cand(e["candidate"])),
                     _e(svg.fmt_s(e["median_s"])), _num(e["gflops"], "{:.1f}"), _num(e["gbps"], "{:.2f}"),
                     _num(pct, "{:.1f}%"), _e(e["policy"]), ctx.link("/history", "history", key=e["key"]),
                     _e(_when(e["updated"]))])  # fmt: skip
    out.append(svg.scatter(pts, "Rate vs the roofline (this page's entries)", "median time per call (s)",
                           "% of roofline", logy=False))  # fmt: skip
    title = f"{total} chosen kernels" + (f" for {op}" if op else "") + (f" on {device}" if device else "")
    if ctx.static and total > len(shown):
        title += f" (the first {len(shown)} by op and key listed; uhop serve pages through all)"
    out.append(f"<h3>{_e(title)}</h3>")
    out.append(table(["problem", "device", "chosen kernel", "time", "GFLOP/s", "GB/s", "% roofline", "policy",
                      "", "updated (UTC)"], rows, "entries"))  # fmt: skip
    out.append(_pager(ctx, "/", page, total > (page + 1) * PAGE_ROWS, op=op, device=device))
    return "\n".join(out)


def _cand(c: Mapping[str, Any]) -> str:
    from uhop.serve.data import candidate_id

    return candidate_id(dict(c))


def _problem_picker(r: StoreReader, q: Mapping[str, str], ctx: Ctx, path: str, what: str) -> str:
    op = q.get("op") or None
    page = _page_of(q)
    keys = r.measured_keys(op, limit=PAGE_ROWS + 1, offset=page * PAGE_ROWS)
    rows = [[ctx.link(path, k, key=k), _e(o), str(n)] for k, o, n in keys[:PAGE_ROWS]]
    ops = " ".join(ctx.link(path, o, op=o) for o in r.ops())
    return (f"<p>Pick a problem to see its {_e(what)}. op: {ops}</p>" + table(["problem key", "op", "measurements"], rows)
            + _pager(ctx, path, page, len(keys) > PAGE_ROWS, op=op))  # fmt: skip


def latency(r: StoreReader, q: Mapping[str, str], ctx: Ctx) -> str:
    """Latency distribution per candidate of one problem: median and p10..p90 spread of each
    candidate's latest valid measurement, the chosen kernel, and the roofline."""
    key = q.get("key")
    if not key:
        return _problem_picker(r, q, ctx, "/latency", "latency distribution per candidate")
    return latency_for(r, key, ctx)


def latency_for(r: StoreReader, key: str, ctx: Ctx) -> str:
    e = r.entry(key)
    ms = r.measurements(key)
    latest: dict[str, dict[str, Any]] = {}
    failed = []
    for m in ms:
        if m["status"] == "ok" and m["median_s"] is not None:
            latest[m["id"]] = m
        elif m["status"] != "skipped":
            failed.append(m)
    chosen = _cand(e["candidate"]) if e else None
    roof = None
    if e is not None and e["median_s"]:
        pct = r.roofline_pct(e)
        roof = e["median_s"] * pct / 100 if pct else None
    rows = sorted(latest.values(), key=lambda m: m["median_s"])
    plot_rows = [(m["id"], m["median_s"], *_spread(m), m["id"] == chosen) for m in rows]
    name = describe(e["problem"]) if e else key
    out = [f"<h3>{_e(name)}</h3><p>key <code>{_e(key)}</code>; chosen <b>{_e(chosen or 'none')}</b></p>",
           svg.range_plot(plot_rows, f"Latency per candidate: {name}", roof)]  # fmt: skip
    out.append(table(["candidate", "median", "spread (p90-p10)/median", "samples", "max error", "measured (UTC)"],
                     [[_e(m["id"]) + (" <b>(chosen)</b>" if m["id"] == chosen else ""), _e(svg.fmt_s(m["median_s"])),
                       _num(m["spread"]), _e(m["n"]), _num(m["max_err"]), _e(_when(m["created"]))] for m in rows]))  # fmt: skip
    if failed:
        out.append("<h4>Rejected candidates</h4>" + table(
            ["candidate", "status", "reason"], [[_e(m["id"]), _e(m["status"]), _e(m["reason"])] for m in failed[-50:]]))
    out.append(f"<p>{ctx.link('/history', 'tuning history of this problem', key=key)}</p>")
    return "\n".join(out)


def _spread(m: Mapping[str, Any]) -> tuple[float, float]:
    med, sp = m["median_s"], m.get("spread")
    if sp is None or not math.isfinite(sp):
        return med, med
    return max(med * (1 - sp / 2), med * 0.01), med * (1 + sp / 2)


def history(r: StoreReader, q: Mapping[str, str], ctx: Ctx) -> str:
    """Tuning history per problem: each run's best valid time, candidates measured and failures."""
    key = q.get("key")
    if not key:
        return _problem_picker(r, q, ctx, "/history", "tuning history")
    return history_for(r, key, ctx)


def history_for(r: StoreReader, key: str, ctx: Ctx) -> str:
    runs = r.tuning_runs(key)
    pts = [(float(i + 1), run["best_s"], f"run {i + 1} {_when(run['created'])}: {run['best']}", False)
           for i, run in enumerate(runs) if run["best_s"]]  # fmt: skip
    out = [f"<h3>Tuning history of <code>{_e(key)}</code></h3>",
           svg.scatter(pts, "Best valid time per tuning run", "run", "best time per call (s)", logx=False, line=True)]
    out.append(table(["run", "recorded (UTC)", "best", "best time", "valid", "failed"],
                     [[str(i + 1), _e(_when(x["created"])), _e(x["best"]), _e(svg.fmt_s(x["best_s"])), str(x["ok"]),
                       str(x["failed"])] for i, x in enumerate(runs)]))  # fmt: skip
    out.append(f"<p>{ctx.link('/latency', 'latency per candidate', key=key)}</p>")
    return "\n".join(out)


def backends(r: StoreReader, q: Mapping[str, str], ctx: Ctx) -> str:
    """Backend usage: chosen kernels and measurements per backend."""
    chosen: dict[tuple[str], int] = defaultdict(int)
    for _, _, b, n in r.entry_counts(ctx.since):
        chosen[(b,)] += n
    counts = r.status_counts(ctx.since)
    measured: dict[str, int] = defaultdict(int)
    rejected: dict[str, int] = defaultdict(int)
    for _, b, s, n in counts:
        (measured if s == "ok" else rejected)[b] += n
    names = sorted(set(measured) | set(rejected) | {b for (b,) in chosen})
    out = [svg.bar_chart([(b, n) for (b,), n in sorted(chosen.items())], "Chosen kernels per backend", "entries"),
           svg.bar_chart([(b, measured[b]) for b in names], "Valid measurements per backend", "measurements")]
    out.append(table(["backend", "chosen", "measured ok", "rejected"],
                     [[_e(b), str(chosen.get((b,), 0)), str(measured[b]), str(rejected[b])] for b in names]))  # fmt: skip
    return "\n".join(out)


def failures(r: StoreReader, q: Mapping[str, str], ctx: Ctx) -> str:
    """Failures by category (the candidate statuses other than ok), by backend, and the latest reasons."""
    counts = r.status_counts(ctx.since)
    cats = {s: n for s, n in by_status(counts).items() if s != "ok"}
    out = [svg.bar_chart(list(cats.items()), "Rejected candidates by category", "candidates")]
    per: dict[tuple[str, str], int] = defaultdict(int)
    for _, b, s, n in counts:
        if s != "ok":
            per[(b, s)] += n
    out.append(table(["backend", "category", "kind", "candidates"],
                     [[_e(b), _e(s), "validation" if s in VALIDATION else "build/run", str(n)]
                      for (b, s), n in sorted(per.items(), key=lambda kv: -kv[1])]))  # fmt: skip
    recent = r.recent_failures(100, ctx.since)
    out.append("<h3>Latest rejections</h3>" + table(
        ["recorded (UTC)", "problem", "candidate", "category", "reason"],
        [[_e(_when(f["created"])), ctx.link("/latency", f["key"], key=f["key"]), _e(f["id"]), _e(f["status"]),
          _e(f["reason"])] for f in recent]))  # fmt: skip
    return "\n".join(out)


def sandbox(r: StoreReader, q: Mapping[str, str], ctx: Ctx) -> str:
    """Sandbox state: the isolation layers available here, registered kernel files, and how the
    untrusted (``user``) backend's candidates fared."""
    layers = [("bubblewrap (namespaces)", shutil.which("bwrap") is not None)]
    try:
        from uhop.sandbox.syscall_filter import available

        layers.append(("seccomp syscall filter", available()))
    except Exception:  # the sandbox package failing to import is itself the state to show
        layers.append(("seccomp syscall filter", False))
    out = [table(["layer", "available"], [[_e(n), "yes" if ok else "no"] for n, ok in layers])]
    try:
        from uhop.backends.user import kernels_dir, list_kernels

        kfs = list_kernels()
        out.append(f"<h3>Registered kernel files ({len(kfs)}) in <code>{_e(kernels_dir())}</code></h3>")
        out.append(table(["op", "sha256", "dtypes", "file"],
                         [[_e(k.op), _e(k.sha256[:16]), _e(",".join(k.dtypes)), _e(k.path)] for k in kfs]))  # fmt: skip
    except Exception as exc:  # the user backend needs the sandbox extra
        out.append(f"<p>kernel files unavailable: {_e(exc)}</p>")
    user = {s: n for _, b, s, n in r.status_counts(ctx.since) if b == "user"}
    out.append(svg.bar_chart(sorted(user.items()), "Untrusted (user) kernel candidates by outcome", "candidates"))
    return "\n".join(out)


def pareto(r: StoreReader, q: Mapping[str, str], ctx: Ctx) -> str:
    """Pareto fronts of multi-objective search runs (first two objectives plotted)."""
    runs = [x for x in r.search_runs() if len((x["spec"] or {}).get("objectives", [])) > 1]
    if ctx.since:
        runs = [x for x in runs if x["updated"] >= ctx.since]
    if not runs:
        return "<p>No multi-objective search run in this store (<code>uhop tune OP --objectives latency energy</code>).</p>"
    pick = q.get("run")
    chosen = [x for x in runs if x["id"] == pick] if pick else runs[:1]
    out = ["<p>runs: " + " ".join(ctx.link("/pareto", x["id"], run=x["id"]) for x in runs[:50]) + "</p>"]
    for run in runs if ctx.static else chosen:
        objs = list(run["spec"]["objectives"])
        ms = r.run_measurements(run["id"])
        front = pareto_front(ms, objs)
        fid = {m["id"] for m in front}
        col = {"latency": "median_s", "energy": "energy_j", "memory": "mem_bytes"}
        a, b = col.get(objs[0], objs[0]), col.get(objs[1], objs[1])
        pts = [(m.get(a), m.get(b), m["id"], m["id"] in fid) for m in ms if m.get("status") == "ok"]
        prob = describe(run["spec"].get("problem", {}))
        out.append(f"<h3>Run {_e(run['id'])}: {_e(prob)} ({_e(run['status'])})</h3>")
        out.append(svg.scatter(pts, f"Pareto front ({len(front)} of {len(pts)} valid)", objs[0], objs[1]))
        out.append(table(["candidate"] + objs, [[_e(m["id"])] + [_num(m.get(col.get(o, o)), "{:.4g}") for o in objs]
                                                for m in front]))  # fmt: skip
    return "\n".join(out)


def hardware(r: StoreReader, q: Mapping[str, str], ctx: Ctx) -> str:
    """The shipped hardware manifests, and the hardware fingerprints the store's entries came from."""
    from uhop.hardware import manifests

    rows = []
    for m in manifests().values():
        rows.append([_e(m.name), _e(m.display_name), _e(m.kind), _e(m.vendor), _num(m.peak_flops("fp32"), "{:.3g}"),
                     _num(m.peak_bandwidth(), "{:.3g}")])  # fmt: skip
    fps: dict[str, int] = defaultdict(int)
    for fp, n in r.fingerprint_counts(ctx.since):
        fps[", ".join(f"{k}={fp[k]}" for k in sorted(fp) if k in ("device", "cpu", "gpu", "name", "arch"))
            or str(sorted(fp.items()))[:120]] += n
    return (table(["manifest", "name", "kind", "vendor", "peak fp32 FLOP/s", "bandwidth B/s"], rows)
            + "<h3>Hardware fingerprints in the store</h3>"
            + table(["fingerprint", "entries"], [[_e(k), str(n)] for k, n in sorted(fps.items(), key=lambda kv: -kv[1])]))


PAGES: dict[str, tuple[str, View]] = {
    "/": ("Kernels", kernels),
    "/latency": ("Latency", latency),
    "/history": ("History", history),
    "/backends": ("Backends", backends),
    "/failures": ("Failures", failures),
    "/sandbox": ("Sandbox", sandbox),
    "/pareto": ("Pareto", pareto),
    "/hardware": ("Hardware", hardware),
}

CSS = """
body{font:14px sans-serif;margin:0;color:#222} nav{background:#222;padding:.5em 1em} nav a{color:#eee;margin-right:1em}
nav a.here{color:#ffd700;font-weight:bold} main{padding:1em} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;font-size:12px} th{background:#f4f4f4}
code{background:#f4f4f4} .empty{color:#888} footer{color:#888;padding:1em;font-size:12px}
""" + svg.STYLE


def layout(title: str, body: str, here: str | None, store_url: str, static: bool = False) -> str:
    nav = "" if static else "<nav>" + "".join(
        f'<a href="{p}"{" class=here" if p == here else ""}>{_e(t)}</a>' for p, (t, _) in PAGES.items()
    ) + '<a href="/metrics">/metrics</a></nav>'  # fmt: skip
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body>{nav}<main><h2>{_e(title)}</h2>{body}</main>'
            f"<footer>UHOP dashboard, read-only view of {_e(_redact(store_url))}, rendered "
            f"{_e(_when(time.time()))} UTC</footer></body></html>")  # fmt: skip


def _redact(url: str) -> str:
    """A store URL without its password (``postgresql://user:secret@host`` -> ``user:***@host``)."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url
