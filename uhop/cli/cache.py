"""``uhop cache ls | show KEY | clear | export FILE | import FILE | verify``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="Inspect and manage the kernel store.", no_args_is_help=True)
console = Console()


def _store():
    from uhop.store import open_store

    return open_store()


def _iso(t: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC (``2026-12-05T04:12:24Z``)."""
    import datetime as dt

    if t is None:
        return None
    return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _candidate_id(c: dict) -> str:
    cfg = ",".join(f"{k}={v}" for k, v in sorted(c.get("config", {}).items()))
    return f"{c['backend']}/{c['template']}" + (f"{{{cfg}}}" if cfg else "")


def _resolve(store, key: str):
    """The one entry whose key starts with ``key`` (a trailing '…' or '...' from a cut table
    cell is ignored); exits 2 naming the matches when none or several do."""
    from uhop.cli.core import fail

    prefix = key.strip().rstrip("…").removesuffix("...")
    if not prefix:
        raise fail(f"KEY must be a key or a unique prefix of one (see `uhop cache ls`), got {key!r}")
    matches = [e for e in store.entries() if e.key.startswith(prefix)]
    if not matches:
        raise fail(f"no entry with key {key!r} (see `uhop cache ls`)")
    if len(matches) > 1:
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        raise fail(f"key prefix {key!r} matches {len(matches)} entries: {', '.join(e.key for e in matches[:5])}{more}; give more of it")
    return matches[0]


@app.command("ls")
def ls(
    op: str | None = typer.Option(None, help="Only this op."),
    as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON on stdout."),
) -> None:
    """List stored kernels (keys are printed whole; any unique prefix works in `uhop cache show`)."""
    from uhop.cli.core import _fmt_time, fold_id

    store = _store()
    entries = store.entries(op)
    if as_json:
        typer.echo(json.dumps([{**e.to_json(), "candidate_id": _candidate_id(e.candidate), "created": _iso(e.created),
                                "updated": _iso(e.updated)} for e in entries], indent=1, default=str))  # fmt: skip
        return
    t = Table(title=f"{len(entries)} kernel(s) in {store.url}")
    # Keys and candidates fold (wrap inside the cell), never get cut: both must stay copyable.
    t.add_column("key / candidate", overflow="fold")
    t.add_column("time", justify="right", no_wrap=True)
    t.add_column("GFLOP/s", justify="right", no_wrap=True)
    t.add_column("GB/s", justify="right", no_wrap=True)
    t.add_column("policy", no_wrap=True)
    for e in entries:
        t.add_row(f"[bold]{escape(e.key)}[/bold]\n  {escape(fold_id(_candidate_id(e.candidate)))}", _fmt_time(e.median_s),
                  f"{e.gflops:.1f}" if e.gflops else "-", f"{e.gbps:.2f}" if e.gbps else "-", e.policy)  # fmt: skip
    console.print(t)


@app.command()
def show(key: str = typer.Argument(..., help="A key from `uhop cache ls` (a unique prefix is enough).")) -> None:
    """One entry with all its measurements, as JSON (times in ISO 8601 UTC)."""
    store = _store()
    e = _resolve(store, key)
    ms = [{**m, "created": _iso(m.get("created"))} for m in store.measurements(e.key)]
    doc = {**e.to_json(), "created": _iso(e.created), "updated": _iso(e.updated), "measurements": ms}
    console.print_json(json.dumps(doc, default=str))


@app.command()
def clear(
    op: str | None = typer.Option(None, help="Only this op."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete stored kernels (and their measurements)."""
    from uhop import ops
    from uhop.cli.core import fail
    from uhop.dispatch import clear_process_cache

    if op is not None and op not in ops.REGISTRY:
        raise fail(f"--op {op!r} is not an op; known ops: {', '.join(sorted(ops.REGISTRY))}")
    if not yes and not typer.confirm(f"Delete {'all' if op is None else op} entries from {_store().url}?"):
        raise typer.Exit(1)
    n = _store().delete(op=op)
    clear_process_cache()
    console.print(f"deleted {n} entr{'y' if n == 1 else 'ies'}")


@app.command("export")
def export(file: Path = typer.Argument(..., help="JSON file to write.")) -> None:
    """Export every entry and its measurements to JSON."""
    from uhop.cli.core import fail

    if not file.parent.is_dir():
        raise fail(f"FILE {file}: folder {file.parent} does not exist")
    if file.is_dir():
        raise fail(f"FILE {file} is a folder; give a file name")
    n = _store().export(file)
    console.print(f"exported {n} entr{'y' if n == 1 else 'ies'} to {file}")


@app.command("import")
def import_(file: Path = typer.Argument(..., help="A file written by `uhop cache export`.")) -> None:
    """Import entries (a faster measured entry wins over an existing one)."""
    from uhop.cli.core import fail

    if not file.exists():
        raise fail(f"FILE {file} does not exist (give a file written by `uhop cache export`)")
    try:
        n = _store().import_(file)
    except ValueError as exc:
        raise fail(str(exc)) from None
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
