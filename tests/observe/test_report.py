"""``uhop report`` (one self-contained HTML file) and ``--plot`` for ``uhop tune``."""

from __future__ import annotations

import re
import time
from collections import Counter
from html.parser import HTMLParser

import pytest
from storegen import assert_escaped
from typer.testing import CliRunner

from uhop.cli import build_app
from uhop.report import parse_since


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action")]


def test_report_is_self_contained_escaped_and_matches_the_store(small_store, tmp_path):
    url, store = small_store
    out = tmp_path / "r" / "report.html"
    r = CliRunner().invoke(build_app(), ["report", "--out", str(out), "--store", url])
    assert r.exit_code == 0, r.output
    body = out.read_text()
    assert_escaped(body)
    p = _Refs()
    p.feed(body)
    assert all(ref.startswith(("#", "data:")) or ref == "" for ref in p.refs), p.refs  # nothing fetched
    assert "<svg" in body and "Content-Security-Policy" in body
    for section in ("kernels", "backends", "failures", "sandbox", "pareto", "hardware", "problems"):
        assert f'id="{section}"' in body
    bars = dict(re.findall(r'<rect class="pt bar"[^>]*data-label="([^"]+)" data-value="([^"]+)"', body.split('id="backends"')[0]))
    want = Counter(f"{e.op} @ cpu" for e in store.entries())
    assert {k: float(v) for k, v in bars.items()} == {k: float(n) for k, n in want.items()}


def test_report_since_filters(small_store, tmp_path):
    url, _ = small_store
    out = tmp_path / "old.html"
    r = CliRunner().invoke(build_app(), ["report", "--out", str(out), "--store", url, "--since", "2999-01-01"])
    assert r.exit_code == 0, r.output
    body = out.read_text()
    assert "0 chosen kernels" in body and "Chosen kernels per op and device: no data" in body
    r = CliRunner().invoke(build_app(), ["report", "--out", str(out), "--store", url, "--since", "yesterday"])
    assert r.exit_code == 2 and "--since must be" in r.output


def test_report_takes_the_file_as_an_argument_too(small_store, tmp_path):
    """``uhop report out.html`` (was "No such command 'out.html'": report and serve were groups
    with a callback, their usage "COMMAND [ARGS]...")."""
    url, _ = small_store
    app = build_app()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "a.html"), "--store", url])
    assert r.exit_code == 0 and (tmp_path / "a.html").stat().st_size > 0, r.output
    r = CliRunner().invoke(app, ["report", str(tmp_path / "b.html"), "-o", str(tmp_path / "c.html"), "--store", url])
    assert r.exit_code == 2 and "give the file once" in r.output
    for cmd in ("report", "serve"):
        usage = CliRunner().invoke(app, [cmd, "--help"]).output
        assert "COMMAND" not in usage, usage


def test_parse_since():
    now = 1_000_000.0
    assert parse_since("24h", now) == now - 86400
    assert parse_since("90m", now) == now - 5400
    assert parse_since("2w", now) == now - 14 * 86400
    assert parse_since("12345", now) == 12345.0
    assert parse_since("1970-01-02", now) == 86400.0
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="--since"):
        parse_since("soon")


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_tune_plot(tmp_path, suffix):
    if suffix == ".png":
        pytest.importorskip("cairosvg", reason="PNG plots need cairosvg (pip install 'uhop[observe]')")
    plot = tmp_path / f"plot{suffix}"
    t0 = time.monotonic()
    r = CliRunner().invoke(build_app(), ["tune", "softmax", "--shape", "64x128", "--backend", "numpy",
                                         "--time-budget", "3", "--plot", str(plot)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert time.monotonic() - t0 < 120
    data = plot.read_bytes()
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000  # a drawn plot, not a blank canvas
        return
    text = data.decode()
    from uhop.store import open_store

    entry = open_store().entries("softmax")[0]
    ms = open_store().measurements(entry.key)
    pts = re.findall(r'<circle class="pt( chosen)?"[^>]*data-label="([^"]+)" data-value="([^"]+)"', text)
    assert len(pts) == sum(1 for m in ms if m["status"] == "ok")
    chosen = [(lab, float(v)) for c, lab, v in pts if c]
    assert len(chosen) == 1 and chosen[0][1] == pytest.approx(entry.median_s)
    assert 'class="roof"' in text  # the manifest gives this CPU a peak: the roofline is drawn


def test_plot_rejects_unknown_format(tmp_path):
    r = CliRunner().invoke(build_app(), ["tune", "softmax", "--shape", "8x16", "--backend", "numpy", "--time-budget",
                                         "2", "--plot", str(tmp_path / "p.jpg")])  # fmt: skip
    assert r.exit_code == 2 and "--plot must end in .svg or .png" in r.output


def test_bench_plot_from_rows(tmp_path):
    from uhop.report import bench_plot, write_plot

    rows = [{"name": "softmax", "chosen": "numpy/eager", "uhop_s": 1e-4, "uhop_spread": 0.1, "naive_s": 3e-4,
             "library": "torch", "library_s": 2e-4}, {"name": "dispatch_overhead", "kernel_s": 1e-6}]  # fmt: skip
    text = write_plot(bench_plot(rows), tmp_path / "b.svg").read_text()
    vals = re.findall(r'data-label="([^"]+)" data-value="([^"]+)"', text)
    assert [(lab, float(v)) for lab, v in vals] == [("softmax: UHOP numpy/eager", 1e-4), ("softmax: naive", 3e-4),
                                                    ("softmax: torch", 2e-4)]  # fmt: skip
