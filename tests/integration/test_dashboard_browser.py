"""The dashboard in a real browser: Playwright driving Debian's Chromium (``chromium``, installed
by scripts/install_system_deps.sh; Playwright's own browser download is not used). Pages load
with no console error, plots hold the store's numbers, navigation works, nothing from the
store's hostile strings runs, and a 10,000-entry store renders each page within 2 s."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "observe"))
import storegen  # noqa: E402

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (pinned in requirements/ci.txt)")
CHROMIUM = os.environ.get("UHOP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed: run scripts/install_system_deps.sh", allow_module_level=True)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
NAV = ["Kernels", "Latency", "History", "Backends", "Failures", "Sandbox", "Pareto", "Hardware"]


def _serve(url: str):
    from uhop.serve import make_server

    srv = make_server(url, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


class Watched:
    """A page whose console errors, uncaught exceptions and dialogs are collected."""

    def __init__(self, browser) -> None:
        self.page = browser.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))

    def points(self, selector: str) -> list[tuple[str, float]]:
        return self.page.eval_on_selector_all(
            selector, "els => els.map(e => [e.getAttribute('data-label'), parseFloat(e.getAttribute('data-value'))])")


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "uhop.db"
    store = storegen.small_store(path)
    srv, base = _serve(f"sqlite:///{path}")
    yield base, store
    srv.shutdown()
    srv.server_close()


def test_pages_load_clean_and_plots_match_the_store(browser, small):
    base, store = small
    w = Watched(browser)
    external = []
    w.page.on("request", lambda r: external.append(r.url) if not r.url.startswith((base, "data:")) else None)
    for name in NAV:
        w.page.goto(base + "/")
        w.page.click(f"nav >> text={name}")
        w.page.wait_for_load_state("load")
        assert w.page.inner_text("h2") == f"UHOP · {name}"
        assert w.page.title() == f"UHOP · {name}"  # a hostile document.title='pwned' never ran
    w.page.goto(base + "/metrics")
    assert "uhop_store_entries{" in w.page.inner_text("body")
    assert not w.errors, w.errors
    assert not external, external

    # the bar chart on the kernels page: entries per op and device, as in the store
    w.page.goto(base + "/")
    bars = dict(w.points("rect.pt.bar"))
    assert bars == {k: float(n) for k, n in Counter(f"{e.op} @ cpu" for e in store.entries()).items()}
    widths = w.page.eval_on_selector_all("rect.pt.bar", "els => els.map(e => e.getBoundingClientRect().width)")
    assert all(x > 0 for x in widths)

    # follow a problem to its latency plot, then to its history
    from uhop.serve.data import candidate_id

    w.page.click("table.entries tbody tr >> nth=0 >> a >> nth=0")
    w.page.wait_for_load_state("load")
    assert "/latency?key=" in w.page.url
    key = w.page.inner_text("main p code")
    ok = {candidate_id(m["candidate"]): m["median_s"] for m in store.measurements(key) if m["status"] == "ok"}
    got = dict(w.points("circle.pt"))
    assert got == pytest.approx(ok)
    chosen = w.points("circle.pt.chosen")
    assert [lab for lab, _ in chosen] == [candidate_id(store.get(key).candidate)]
    w.page.click("text=tuning history of this problem")
    w.page.wait_for_load_state("load")
    assert "/history?key=" in w.page.url
    runs = w.page.eval_on_selector_all("circle.pt", "els => els.map(e => parseFloat(e.getAttribute('data-y')))")
    created: dict[float, float] = {}
    for m in store.measurements(key):
        if m["status"] == "ok":
            created[m["created"]] = min(created.get(m["created"], float("inf")), m["median_s"])
    assert runs == pytest.approx([created[t] for t in sorted(created)])
    assert not w.errors, w.errors


def test_ten_thousand_entries_render_each_page_within_2s(browser, tmp_path):
    path = tmp_path / "big.db"
    storegen.bulk_store(path, 10_000)
    srv, base = _serve(f"sqlite:///{path}")
    try:
        w = Watched(browser)
        key = "matmul:0:float32:bulk"
        times = {}
        for p in ["/", "/latency", "/history", "/backends", "/failures", "/sandbox", "/pareto", "/hardware", "/metrics",
                  f"/latency?key={key}", f"/history?key={key}", "/?page=3&op=softmax"]:
            w.page.goto(base + "/healthz")
            srv.reader._cache.clear()  # each page cold: no aggregate reused from the page before
            t0 = time.perf_counter()
            w.page.goto(base + p, wait_until="load")
            times[p] = time.perf_counter() - t0
        print("page load times (s):", {k: round(v, 3) for k, v in times.items()})
        slow = {k: v for k, v in times.items() if v > 2.0}
        assert not slow, slow
        w.page.goto(base + "/")
        assert "10000 chosen kernels" in w.page.inner_text("h3")
        assert dict(w.points("rect.pt.bar")) == {f"{op} @ cpu": 2500.0 for op in storegen.OPS}
        assert not w.errors, w.errors
    finally:
        srv.shutdown()
        srv.server_close()
