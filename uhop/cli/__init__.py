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

        cb = getattr(sub, "registered_callback", None)
        if not sub.registered_commands and not sub.registered_groups and cb is not None and cb.callback:
            # one command (report, serve): registered as a command, so that its usage line is
            # not "COMMAND [ARGS]..." and a positional argument is not taken for a subcommand
            app.command(name, help=help_)(cb.callback)
            continue
        app.add_typer(sub, name=name, help=help_)
    _reflow_commands(app)
    return app


def reflow(doc: str) -> str:
    """A docstring as ``--help`` text: each paragraph's wrapped lines joined into one (Typer's rich
    help keeps every source line break of a paragraph after the first, so ``--help`` came out
    ragged); a paragraph of bullets (``-``, ``*``) keeps one line per bullet, and a paragraph that
    starts indented or with ``\b`` (an example, a table) stays as written."""
    import inspect
    import re

    out = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines = para.split("\n")
        if para.startswith("\b") or lines[0][:1].isspace():
            out.append(para)
            continue
        joined: list[str] = []
        for ln in lines:
            if joined and not re.match(r"[-*] ", ln):
                joined[-1] += " " + ln.strip()
            else:
                joined.append(ln.strip())
        out.append("\n".join(joined))
    return "\n\n".join(out)


def _reflow_commands(app: typer.Typer) -> None:
    """Every command's help (its docstring unless given) through :func:`reflow`, sub-apps included."""
    for info in app.registered_commands:
        doc = info.help if info.help is not None else (info.callback.__doc__ if info.callback else None)
        if doc:
            info.help = reflow(doc)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            _reflow_commands(group.typer_instance)


def _fail(reason: str) -> int:
    typer.echo(f"error: this command is unavailable: {reason}", err=True)
    return 2


def one_line(exc: BaseException) -> str:
    """What a user needs from an unexpected exception, on one line: for a missing optional
    package the exact ``pip install 'uhop[extra]'``; for a UHOP error its message; else the
    exception's type and first line."""
    from uhop.components import install_hint
    from uhop.errors import UhopError

    if isinstance(exc, ModuleNotFoundError):
        return f"{exc.name or exc} is not installed: {install_hint(exc.name)}"
    if isinstance(exc, ImportError) and exc.name:
        return f"{exc.name} failed to import ({str(exc).splitlines()[0] if str(exc) else 'ImportError'}): {install_hint(exc.name)}"
    if isinstance(exc, MemoryError):
        return f"out of memory ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); use smaller dims"
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    if isinstance(exc, (UhopError, ValueError, ImportError, OSError)) or "pip install" in text:
        return text
    return f"{exc.__class__.__name__}: {text}"


def _show_logs() -> None:
    """INFO records of the ``uhop`` logger on stderr, one line each (the library itself stays
    silent: no handler is installed on import; the CLI and the demo opt in here)."""
    import logging

    from uhop.config import read

    log = logging.getLogger("uhop")
    if not any(getattr(h, "_uhop_cli", False) for h in log.handlers):
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        h._uhop_cli = True  # type: ignore[attr-defined]
        log.addHandler(h)
    log.setLevel(read("log_level") or logging.INFO)


def _abort() -> type[BaseException]:
    try:
        from typer.exceptions import Abort
    except ImportError:  # pragma: no cover - older typer: click's own
        from click.exceptions import Abort
    return Abort


def main(argv: list[str] | None = None) -> None:
    """The ``uhop`` command. Every failure is one line on stderr (``error: ...``) and exit code 2
    (1 for "ran, but the answer is no", as a command documents); ``UHOP_DEBUG=1`` re-raises
    unexpected exceptions with their traceback."""
    import sys

    try:  # typer >= 0.2x vendors click; its exceptions are these, not the click package's
        from typer import _click as click
    except ImportError:  # pragma: no cover - older typer on the real click
        import click

    from uhop.config import read

    debug = read("debug")  # alone, not via settings(): a bad UHOP_* must still be one line
    try:
        _show_logs()
        rc = build_app()(args=argv, prog_name="uhop", standalone_mode=False)
        if rc == 130:  # typer turns Ctrl-C into a silent exit status 130
            sys.stderr.write("interrupted\n")
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        rc = 0
    except click.ClickException as exc:  # usage errors: bad option, missing argument, bad value
        hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())}{hint}\n")
        rc = 2
    except _abort():
        sys.stderr.write("aborted\n")
        rc = 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        rc = 130
    except Exception as exc:
        if debug:
            raise
        from uhop.errors import UhopError

        msg = one_line(exc)
        known = isinstance(exc, (UhopError, ImportError)) or "pip install" in msg
        sys.stderr.write(f"error: {msg}" + ("" if known else " (UHOP_DEBUG=1 shows the traceback)") + "\n")
        rc = 2
    sys.exit(rc if isinstance(rc, int) else 0)
