"""``uhop report``: one self-contained HTML file with the dashboard's views (see :mod:`uhop.report`)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Write the dashboard's views as one self-contained HTML file.")


@app.callback(invoke_without_command=True)
def report(
    path: Path | None = typer.Argument(None, help="HTML file to write (as --out)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write (default report.html)."),
    since: str | None = typer.Option(None, "--since", help="Only what changed since: 24h, 7d, 2026-12-01 or Unix seconds."),
    store: str | None = typer.Option(None, "--store", help="Store URL (default UHOP_STORE or SQLite under UHOP_HOME)."),
) -> None:
    """Write the report (plots inline as SVG, no script, nothing fetched when opened)."""
    from uhop.cli.core import fail
    from uhop.config import settings
    from uhop.report import parse_since, write_report

    if path is not None and out is not None:
        raise fail(f"give the file once: {path} or --out {out}")
    out = path or out or Path("report.html")
    try:
        t = parse_since(since)
        path = write_report(store or settings().resolved_store_url, out, t)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
