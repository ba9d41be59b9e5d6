"""``uhop serve``: the read-only dashboard over a kernel store (see :mod:`uhop.serve`)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Read-only dashboard over the kernel store, with /metrics for Prometheus.")


@app.callback(invoke_without_command=True)
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; a non-loopback one needs UHOP_SERVE_TOKEN."),
    port: int = typer.Option(8765, "--port", help="TCP port (0: any free port)."),
    store: str | None = typer.Option(None, "--store", help="Store URL (default UHOP_STORE or SQLite under UHOP_HOME)."),
) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    from uhop.cli.core import fail
    from uhop.config import settings
    from uhop.serve import make_server

    if not 0 <= port <= 65535:
        raise fail(f"--port must be 0..65535, got {port}")
    url = store or settings().resolved_store_url
    try:
        server = make_server(url, host, port)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise fail(str(exc)) from None
    bound = server.server_address[1]
    typer.echo(f"uhop serve: http://{host}:{bound}/ (read-only; /metrics for Prometheus); Ctrl-C stops", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
