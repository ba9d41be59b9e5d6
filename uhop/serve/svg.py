"""Plots rendered server-side as inline SVG: no script, nothing fetched, every string escaped.

Every data point carries its values as attributes (``class="pt"`` with ``data-label`` and
``data-value``, or ``data-x``/``data-y``), so a test can compare a plot with the store, and a
``<title>`` child that a browser shows as a tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

W, ROW, LEFT, PAD = 760, 18, 300, 40


def _e(x: object) -> str:
    return escape(str(x), quote=True)


def fmt_s(s: float | None) -> str:
    """Seconds in a readable unit."""
    if s is None or not math.isfinite(s):
        return "-"
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= f:
            return f"{s / f:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _scale(lo: float, hi: float, a: float, b: float, log: bool):  # noqa: ANN202 - a small closure
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    if hi <= lo:
        hi = lo + 1.0

    def f(v: float) -> float:
        v = math.log10(v) if log else v
        return a + (v - lo) / (hi - lo) * (b - a)

    return f


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Axis ticks: decades on a log axis (with 2x and 5x when it spans under two decades), else
    about five steps of 1, 2 or 5 times a power of ten."""
    if log:
        k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        mult = (1, 2, 5) if k1 - k0 <= 2 else (1,)
        return [m * 10.0**k for k in range(k0, k1 + 1) for m in mult]
    raw = (hi - lo) / 5 or 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _short(label: str, n: int = 44) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">'
            f'<rect width="100%" height="100%" fill="#fff"/><text x="{width // 2}" y="14" text-anchor="middle" class="ttl" font-family="sans-serif" font-size="13" font-weight="bold">{_e(title)}</text>'
            + "".join(body) + "</svg>")  # fmt: skip


def bar_chart(items: Sequence[tuple[str, float]], title: str, unit: str = "", log: bool = False) -> str:
    """Horizontal bars, one per (label, value); values must be >= 0 (> 0 on a log axis)."""
    items = [(lab, float(v)) for lab, v in items if v is not None and (v > 0 or not log)]
    if not items:
        return f'<p class="empty">{_e(title)}: no data</p>'
    h = 30 + ROW * len(items) + 24
    vmax = max(v for _, v in items) or 1.0
    vmin = min(v for _, v in items) if log else 0.0
    x = _scale(vmin / 2 if log else 0.0, vmax, LEFT, W - PAD, log)
    body = []
    for i, (lab, v) in enumerate(items):
        y = 24 + i * ROW
        w = max(x(v) - LEFT, 1.0)
        body.append(f'<text x="{LEFT - 6}" y="{y + 12}" text-anchor="end" class="lab" font-family="sans-serif" font-size="11" fill="#333">{_e(_short(lab))}</text>'
                    f'<rect class="pt bar" fill="#4e79a7" x="{LEFT}" y="{y + 2}" width="{w:.1f}" height="{ROW - 4}" '
                    f'data-label="{_e(lab)}" data-value="{v!r}"><title>{_e(lab)}: {_e(f"{v:g}")} {_e(unit)}</title></rect>'
                    f'<text x="{LEFT + w + 4:.1f}" y="{y + 12}" class="val" font-family="sans-serif" font-size="10" fill="#555">{_e(f"{v:g}")}</text>')  # fmt: skip
    body.append(f'<text x="{W - PAD}" y="{h - 6}" text-anchor="end" class="lab" font-family="sans-serif" font-size="11" fill="#333">{_e(unit)}</text>')
    return _svg(W, h, title, body)


def range_plot(
    rows: Sequence[tuple[str, float, float, float, bool]], title: str, roofline_s: float | None = None
) -> str:
    """Candidates' times on a log axis: (label, median_s, low_s, high_s, chosen) each, the spread
    as a whisker, the chosen one filled, and the roofline (the device's lower bound) as a line."""
    rows = [r for r in rows if r[1] is not None and math.isfinite(r[1]) and r[1] > 0]
    if not rows:
        return f'<p class="empty">{_e(title)}: no valid measurement</p>'
    h = 30 + ROW * len(rows) + 40
    vals = [v for r in rows for v in (r[1], r[2], r[3]) if v and math.isfinite(v) and v > 0]
    if roofline_s and roofline_s > 0:
        vals.append(roofline_s)
    lo, hi = min(vals) / 1.5, max(vals) * 1.5
    x = _scale(lo, hi, LEFT, W - PAD, True)
    body = []
    for t in _ticks(lo, hi, True):
        if lo <= t <= hi:
            body.append(f'<line class="grid" stroke="#eee" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="22" y2="{h - 30}"/>'
                        f'<text x="{x(t):.1f}" y="{h - 16}" text-anchor="middle" class="lab" font-family="sans-serif" font-size="11" fill="#333">{_e(fmt_s(t))}</text>')  # fmt: skip
    for i, (lab, med, a, b, chosen) in enumerate(rows):
        y = 24 + i * ROW + ROW / 2
        a = a if a and math.isfinite(a) and a > 0 else med
        b = b if b and math.isfinite(b) and b > 0 else med
        cls = "pt chosen" if chosen else "pt"
        bold = ' font-weight="bold"' if chosen else ""
        body.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="lab{" chosen-lab" if chosen else ""}" font-family="sans-serif" font-size="11" fill="#333"{bold}>'
                    f'{_e(_short(lab))}</text><line class="whisker" stroke="#4e79a7" stroke-width="2" x1="{x(a):.1f}" x2="{x(b):.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
                    f'<circle class="{cls}" fill="{"#e15759" if chosen else "#4e79a7"}" stroke="{"#000" if chosen else "#fff"}" cx="{x(med):.1f}" cy="{y:.1f}" r="4.5" data-label="{_e(lab)}" '
                    f'data-value="{med!r}"><title>{_e(lab)}: {_e(fmt_s(med))} ({_e(fmt_s(a))} .. {_e(fmt_s(b))})'
                    f'{" chosen" if chosen else ""}</title></circle>')  # fmt: skip
    if roofline_s and roofline_s > 0:
        rx = x(roofline_s)
        body.append(f'<line class="roof" stroke="#59a14f" stroke-width="2" stroke-dasharray="5 3" x1="{rx:.1f}" x2="{rx:.1f}" y1="22" y2="{h - 30}" data-value="{roofline_s!r}">'
                    f'<title>roofline {_e(fmt_s(roofline_s))}</title></line>'
                    f'<text x="{rx + 3:.1f}" y="30" class="lab roof-lab" font-family="sans-serif" font-size="11" fill="#59a14f">roofline {_e(fmt_s(roofline_s))}</text>')  # fmt: skip
    body.append(f'<text x="{W - PAD}" y="{h - 2}" text-anchor="end" class="lab" font-family="sans-serif" font-size="11" fill="#333">time per call (log scale)</text>')
    return _svg(W, h, title, body)


def scatter(
    points: Sequence[tuple[float, float, str, bool]], title: str, xlabel: str, ylabel: str,
    logx: bool = True, logy: bool = True, line: bool = False,
) -> str:  # fmt: skip
    """Points (x, y, label, highlighted); ``line`` joins them in order (a history)."""
    pts = [p for p in points if all(v is not None and math.isfinite(v) and (v > 0 or not lg)
                                     for v, lg in ((p[0], logx), (p[1], logy)))]  # fmt: skip
    if not pts:
        return f'<p class="empty">{_e(title)}: no data</p>'
    h, left, bottom = 360, 80, 300
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]

    def rng(v: list[float], log: bool) -> tuple[float, float]:
        lo, hi = min(v), max(v)
        if log:
            return lo / 1.5, hi * 1.5
        pad = (hi - lo) * 0.05 + 1e-12
        return (0.0 if lo >= 0 else lo - pad), hi + pad

    (x0, x1), (y0, y1) = rng(xs, logx), rng(ys, logy)
    fx, fy = _scale(x0, x1, left, W - PAD, logx), _scale(y0, y1, bottom, 26, logy)
    body = [f'<line class="axis" stroke="#999" x1="{left}" x2="{W - PAD}" y1="{bottom}" y2="{bottom}"/>'
            f'<line class="axis" stroke="#999" x1="{left}" x2="{left}" y1="26" y2="{bottom}"/>'
            f'<text x="{(left + W - PAD) // 2}" y="{h - 24}" text-anchor="middle" class="lab" font-family="sans-serif" font-size="11" fill="#333">{_e(xlabel)}</text>'
            f'<text x="14" y="{(bottom + 26) // 2}" class="lab" font-family="sans-serif" font-size="11" fill="#333" transform="rotate(-90 14 {(bottom + 26) // 2})" '
            f'text-anchor="middle">{_e(ylabel)}</text>']  # fmt: skip
    for t in _ticks(x0, x1, logx):
        if x0 <= t <= x1:
            body.append(f'<text x="{fx(t):.1f}" y="{bottom + 14}" text-anchor="middle" class="lab" font-family="sans-serif" font-size="11" fill="#333">{_e(f"{t:.3g}")}</text>')
    for t in _ticks(y0, y1, logy):
        if y0 <= t <= y1:
            body.append(f'<text x="{left - 4}" y="{fy(t) + 4:.1f}" text-anchor="end" class="lab" font-family="sans-serif" font-size="11" fill="#333">{_e(f"{t:.3g}")}</text>')
    if line and len(pts) > 1:
        path = " ".join(f"{fx(p[0]):.1f},{fy(p[1]):.1f}" for p in pts)
        body.append(f'<polyline class="trend" fill="none" stroke="#aaa" points="{path}"/>')
    for xv, yv, lab, hl in pts:
        body.append(f'<circle class="pt{" chosen" if hl else ""}" fill="{"#e15759" if hl else "#4e79a7"}" stroke="{"#000" if hl else "#fff"}" cx="{fx(xv):.1f}" cy="{fy(yv):.1f}" r="4" '
                    f'data-label="{_e(lab)}" data-x="{xv!r}" data-y="{yv!r}"><title>{_e(lab)}: '
                    f'{_e(xlabel)}={_e(f"{xv:.4g}")}, {_e(ylabel)}={_e(f"{yv:.4g}")}</title></circle>')  # fmt: skip
    return _svg(W, h, title, body)


STYLE = """
svg.plot{background:#fff;border:1px solid #ddd;margin:.5em 0;max-width:100%;height:auto}
svg .ttl{font:bold 13px sans-serif} svg .lab{font:11px sans-serif;fill:#333} svg .val{font:10px sans-serif;fill:#555}
svg .bar{fill:#4e79a7} svg .pt{fill:#4e79a7;stroke:#fff} svg circle.chosen{fill:#e15759;stroke:#000}
svg .whisker{stroke:#4e79a7;stroke-width:2} svg .grid{stroke:#eee} svg .axis{stroke:#999}
svg .roof{stroke:#59a14f;stroke-width:2;stroke-dasharray:5 3} svg .roof-lab{fill:#59a14f}
svg .trend{fill:none;stroke:#aaa} svg .chosen-lab{font-weight:bold}
"""
