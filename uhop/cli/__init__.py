"""The ``uhop`` command. Core commands live in ``core.py``; each capability adds one module with
a ``typer.Typer`` named ``app``, registered in :data:`SUBCOMMANDS` (imported lazily: a module
whose optional dependencies are missing is listed with the reason instead of breaking the CLI)."""

from __future__ import annotations

import importlib

import typer

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, help)
    "ai": ("uhop.cli.ai", "Generate kernels with a language model (sandboxed), report, quarantine."),
    "cache": ("uhop.cli.cache", "Inspect and manage the kernel store."),
    "fusion": ("uhop.cli.fusion", "Graph capture and fusion report (torch.compile(backend='uhop'))."),
    "hw": ("uhop.cli.hw", "Hardware capability manifests and device detection."),
    "kernel": ("uhop.cli.kernel", "Check and register candidate kernel files (sandboxed)."),
    "mlir": ("uhop.cli.mlir", "Compile ops through MLIR/IREE."),
    "perf": ("uhop.cli.perf", "Performance data store and learned cost model."),
    "serve": ("uhop.cli.serve", "Read-only dashboard over the kernel store, with /metrics for Prometheus."),
    "report": ("uhop.cli.report", "Write the dashboard's views as one self-contained HTML file."),
}


def build_app() -> typer.Typer:
    from uhop.cli.core import app

    for name, (mod, help_) in SUBCOMMANDS.items():
        try:
            sub = importlib.import_module(mod).app
        except ImportError as exc:
            reason = str(exc)
            sub = typer.Typer(help=f"{help_} (unavailable: {reason})")

            @sub.callback(invoke_without_command=True)
            def _missing(reason: str = typer.Option(reason, hidden=True)) -> None:
                raise typer.Exit(code=_fail(reason))

        app.add_typer(sub, name=name, help=help_)
    return app


def _fail(reason: str) -> int:
    typer.echo(f"error: this command is unavailable: {reason}", err=True)
    return 2


def main() -> None:
    build_app()()
