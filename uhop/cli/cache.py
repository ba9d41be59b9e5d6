"""``uhop cache ls | show KEY | clear | export FILE | import FILE | verify``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Inspect and manage the kernel store.", no_args_is_help=True)
console = Console()


def _store():
    from uhop.store import open_store

    return open_store()


@app.command("ls")
def ls(op: str | None = typer.Option(None, help="Only this op.")) -> None:
    """List stored kernels."""
    from uhop.cli.core import _fmt_time

    entries = _store().entries(op)
    t = Table(title=f"{len(entries)} kernel(s) in {_store().url}")
    for col in ("key", "candidate", "time", "GFLOP/s", "GB/s", "policy"):
        t.add_column(col)
    for e in entries:
        c = e.candidate
        cfg = ",".join(f"{k}={v}" for k, v in sorted(c.get("config", {}).items()))
        t.add_row(e.key, f"{c['backend']}/{c['template']}" + (f"{{{cfg}}}" if cfg else ""), _fmt_time(e.median_s),
                  f"{e.gflops:.1f}" if e.gflops else "-", f"{e.gbps:.2f}" if e.gbps else "-", e.policy)  # fmt: skip
    console.print(t)


@app.command()
def show(key: str = typer.Argument(..., help="A key from `uhop cache ls` (a unique prefix is enough).")) -> None:
    """One entry with all its measurements, as JSON."""
    from uhop.cli.core import fail

    store = _store()
    matches = [e for e in store.entries() if e.key.startswith(key)]
    if not matches:
        raise fail(f"no entry with key {key!r} (see `uhop cache ls`)", 1)
    if len(matches) > 1:
        raise fail(f"key prefix {key!r} is ambiguous: {', '.join(e.key for e in matches[:5])}", 1)
    e = matches[0]
    console.print_json(json.dumps({**e.to_json(), "measurements": store.measurements(e.key)}, default=str))


@app.command()
def clear(
    op: str | None = typer.Option(None, help="Only this op."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete stored kernels (and their measurements)."""
    from uhop.dispatch import clear_process_cache

    if not yes and not typer.confirm(f"Delete {'all' if op is None else op} entries from {_store().url}?"):
        raise typer.Exit(1)
    n = _store().delete(op=op)
    clear_process_cache()
    console.print(f"deleted {n} entr{'y' if n == 1 else 'ies'}")


@app.command("export")
def export(file: Path = typer.Argument(..., help="JSON file to write.")) -> None:
    """Export every entry and its measurements to JSON."""
    n = _store().export(file)
    console.print(f"exported {n} entr{'y' if n == 1 else 'ies'} to {file}")


@app.command("import")
def import_(file: Path = typer.Argument(..., help="A file written by `uhop cache export`.")) -> None:
    """Import entries (a faster measured entry wins over an existing one)."""
    from uhop.cli.core import fail

    if not file.exists():
        raise fail(f"FILE {file} does not exist", 1)
    try:
        n = _store().import_(file)
    except ValueError as exc:
        raise fail(str(exc), 1) from None
    console.print(f"imported {n} entr{'y' if n == 1 else 'ies'}")


@app.command()
def verify(
    drop: bool = typer.Option(False, "--drop", help="Delete entries that fail (they are re-tuned on next use)."),
) -> None:
    """Re-check every entry: content hash still matches the current code and versions, and the
    kernel still builds and validates against the float64 reference."""
    from uhop import backends as bk
    from uhop.backends.base import Candidate
    from uhop.measure.validate import ValidationSet, check_kernel
    from uhop.problem import Problem
    from uhop.tune.tuner import content_hash

    store = _store()
    bad = 0
    t = Table(title="cache verify")
    for col in ("key", "candidate", "result"):
        t.add_column(col)
    for e in store.entries():
        cand = Candidate.from_json(e.candidate)
        try:
            problem = Problem.from_json(e.problem)
            backend = bk.get(cand.backend)
            if not backend.available:
                raise RuntimeError(f"backend unavailable: {backend.availability[1]}")
            if e.content_hash and e.content_hash != content_hash(cand, e.key, backend):
                raise RuntimeError("stale: content hash differs (code, versions or device changed)")
            kernel = backend.compile(cand, problem)
            v = check_kernel(kernel, ValidationSet(problem, trials=2), backend.array, problem.device)
            if not v.ok:
                raise RuntimeError(f"{v.status}: {v.reason}")
            t.add_row(e.key, cand.id, "[green]ok[/green]")
        except Exception as exc:
            bad += 1
            t.add_row(e.key, cand.id, f"[red]{exc}[/red]")
            if drop:
                store.delete(key=e.key)
    console.print(t)
    if bad:
        console.print(f"[red]{bad} entr{'y' if bad == 1 else 'ies'} failed[/red]" + (" and were dropped" if drop else ""))
        raise typer.Exit(1)
