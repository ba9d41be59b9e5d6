"""``uhop fusion report [--json] [--file PATH]``: the last fusion report of ``backend="uhop"``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Graph capture and fusion (torch.compile(backend='uhop')).", no_args_is_help=True)


@app.command()
def report(
    file: Path | None = typer.Option(None, help="A report file (default: $UHOP_HOME/fusion_report.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """Regions found, ops in each, kernel chosen, bytes saved, fallbacks with the reason, graph
    breaks and recompiles, as written by the last process that compiled with backend='uhop'."""
    from uhop.compile.report import format_report, report_path

    path = file or report_path()
    if not path.exists():
        typer.echo(f"error: no fusion report at {path}; compile a model with torch.compile(model, backend='uhop') "
                   "first", err=True)
        raise typer.Exit(code=1)
    data = json.loads(path.read_text())
    typer.echo(json.dumps(data, indent=1) if as_json else format_report(data))
