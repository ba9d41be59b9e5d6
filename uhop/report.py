"""``uhop report`` and ``--plot``: the dashboard's views as one self-contained HTML file, and a
plot of one tuning run's candidates.

The report holds every view of :mod:`uhop.serve.pages` with its plots inline (SVG), no script
and no external asset, plus the latency and history views of the most-measured problems. It reads
the store read-only.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from uhop.serve import svg
from uhop.serve.data import StoreReader
from uhop.serve.pages import CSS, PAGES, Ctx, _e, _redact, _when, history_for, latency_for

_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """``--since``: a duration back from now (``90m``, ``24h``, ``7d``, ``2w``), an ISO date or
    time (``2026-12-01``, ``2026-12-01T08:00``, UTC unless it names a zone) or Unix seconds.
    Returns Unix seconds, or None for no filter."""
    if not text:
        return None
    now = time.time() if now is None else now
    m = _REL.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since must be a duration (24h, 7d), an ISO date (2026-12-01) or Unix seconds, got {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def render_report(store_url: str, since: float | None = None, problems: int = 10) -> str:
    """The report's HTML: every dashboard view, then latency and history for the ``problems``
    problems with the most measurements."""
    r = StoreReader(store_url)
    ctx = Ctx(static=True, since=since)
    toc, parts = [], []
    for path, (title, view) in PAGES.items():
        if path in ("/latency", "/history"):
            continue
        anchor = title.lower()
        toc.append(f'<a href="#{anchor}">{_e(title)}</a>')
        parts.append(f'<section id="{anchor}"><h2>{_e(title)}</h2>{view(r, {}, ctx)}</section>')
    keys = [k for k, _, _ in r.measured_keys(limit=problems)]
    if since:
        recent = {e["key"] for e in r.entries(since=since)}
        keys = [k for k in keys if k in recent]
    if keys:
        toc.append('<a href="#problems">Problems</a>')
        parts.append('<section id="problems"><h2>Most-measured problems</h2>'
                     + "".join(latency_for(r, k, ctx) + history_for(r, k, ctx) for k in keys) + "</section>")  # fmt: skip
    span = f" since {_when(since)} UTC" if since else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>UHOP report</title>'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">'
            f"<style>{CSS} section{{padding:0 1em;border-top:2px solid #ddd}}</style></head><body>"
            f"<main><h1>UHOP report</h1><p>Store {_e(_redact(store_url))}{_e(span)}; written {_e(_when(time.time()))} UTC.</p>"
            f'<p class="toc">{" · ".join(toc)}</p>{"".join(parts)}</main></body></html>')  # fmt: skip


def write_report(store_url: str, out: str | Path, since: float | None = None) -> Path:
    """Write the report atomically (temp file + rename); returns its path."""
    out = Path(out)
    html = render_report(store_url, since)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


# ---- --plot for `uhop tune` and `uhop bench` ------------------------------------------------------
def roofline_s(problem: Any) -> float | None:
    """Lower bound on one call in seconds, ``max(FLOP / peak FLOP/s, bytes / bandwidth)``, from this
    device's manifest (:func:`uhop.perf.features.roofline_s`), or None where no peak is known."""
    try:
        from uhop.perf.features import hardware_features
        from uhop.perf.features import roofline_s as roof

        hw = hardware_features(problem.device)
        t = roof(problem, hw)
        return t if t > 2.0**-39 else None
    except Exception:  # no manifest for this device: plot without the line
        return None


def tune_plot(result: Any) -> str:
    """SVG of a :class:`~uhop.tune.tuner.TuneResult`: each valid candidate's median with its
    p10..p90 spread, the chosen one highlighted, and the roofline."""
    chosen = result.best.candidate.id if result.best is not None else None
    rows = []
    for m in sorted((m for m in result.measurements if m.ok and math.isfinite(m.median_s)), key=lambda m: m.median_s):
        sp = m.timing.spread if math.isfinite(m.timing.spread) else 0.0
        rows.append((m.candidate.id, m.median_s, max(m.median_s * (1 - sp / 2), m.median_s * 0.01),
                     m.median_s * (1 + sp / 2), m.candidate.id == chosen))  # fmt: skip
    return svg.range_plot(rows, f"uhop tune {result.problem.describe()}", roofline_s(result.problem))


def bench_plot(rows: Sequence[dict[str, Any]]) -> str:
    """SVG of ``uhop bench`` results: per case, UHOP's pick (highlighted), the naive and the library
    baseline; the fastest baseline's speedup is in each label."""
    pts = []
    for r in rows:
        if "uhop_s" not in r or "naive_s" not in r:
            continue  # the dispatch-overhead row
        pts.append((f"{r['name']}: UHOP {r.get('chosen') or ''}", r["uhop_s"], r["uhop_s"] * (1 - (r.get("uhop_spread") or 0) / 2),
                    r["uhop_s"] * (1 + (r.get("uhop_spread") or 0) / 2), True))  # fmt: skip
        pts.append((f"{r['name']}: naive", r["naive_s"], r["naive_s"], r["naive_s"], False))
        if r.get("library_s"):
            pts.append((f"{r['name']}: {r.get('library')}", r["library_s"], r["library_s"], r["library_s"], False))
    return svg.range_plot(pts, "uhop bench: time per call")


def write_plot(svg_text: str, path: str | Path) -> Path:
    """Write a plot: ``.svg`` as is; ``.png`` rasterized with cairosvg (``pip install 'uhop[observe]'``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        path.write_text(svg_text, encoding="utf-8")
    elif suffix == ".png":
        try:
            import cairosvg
        except ImportError:
            raise ImportError("--plot FILE.png needs cairosvg (pip install 'uhop[observe]'); FILE.svg needs nothing") from None
        cairosvg.svg2png(bytestring=svg_text.encode(), write_to=str(path))
    else:
        raise ValueError(f"--plot must end in .svg or .png, got {path.name!r}")
    return path
