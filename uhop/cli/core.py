"""Core commands: info, ops, tune, bench, demo (cache and the rest are sub-apps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="uhop",
    help="UHOP: find, validate, cache and dispatch the fastest correct kernel for each op, shape and device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def fail(msg: str, code: int = 2) -> typer.Exit:
    """Print ``error: msg`` as one line on stderr (``msg`` is text, not markup: an install hint's
    ``'uhop[perf]'`` must survive) and return the ``typer.Exit`` to raise."""
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/red] {escape(' '.join(str(msg).split()))}")
    return typer.Exit(code)


@app.callback()
def _root(
    home: Path | None = typer.Option(None, "--home", help="UHOP_HOME for this command (store and artifacts)."),
) -> None:
    if home is not None:
        import os

        from uhop import config

        os.environ["UHOP_HOME"] = str(home)
        config.reload()


@app.command()
def info() -> None:
    """Hardware, versions, backends and why any backend is unavailable."""
    import platform

    from uhop import __version__
    from uhop import backends as bk
    from uhop.config import settings
    from uhop.problem import cpu_model

    s = settings()
    console.print(f"[bold]UHOP {__version__}[/bold]  Python {platform.python_version()}  {platform.machine()}")
    console.print(f"CPU: {cpu_model()}")
    try:
        from uhop.hardware import get_capabilities

        for dev in ("cpu", "cuda"):
            try:
                caps = get_capabilities(device=dev)
            except Exception:
                continue
            console.print(f"Manifest ({dev}): {caps.name}  (`uhop hw show --device {dev}`)")
    except Exception as exc:  # hardware manifests are optional here
        console.print(f"Device manifest: unavailable ({exc.__class__.__name__}: {exc})")
    console.print(f"Store: {s.resolved_store_url}   policy: {s.policy}   shape buckets: {s.shape_buckets}")
    t = Table(title="Backends")
    t.add_column("backend")
    t.add_column("available")
    t.add_column("ops")
    t.add_column("details")
    for b in bk.all_backends():
        ok, why = b.availability
        t.add_row(b.name, "[green]yes[/green]" if ok else "[red]no[/red]", ", ".join(b.ops), why)
    console.print(t)


@app.command("ops")
def list_ops() -> None:
    """The op registry: dims, params, dtypes."""
    from uhop.ops import REGISTRY

    t = Table(title="Ops")
    t.add_column("op", no_wrap=True, style="bold")
    for col in ("inputs", "dims (--shape)", "params", "dtypes"):
        t.add_column(col)
    for name, spec in REGISTRY.items():
        inputs = "x0, x1, ..." if spec.variadic else ", ".join(
            f"{n}?" if i >= len(spec.inputs) - spec.optional else n for i, n in enumerate(spec.inputs)
        )
        params = ", ".join(f"{p.name}={p.default!r}" + (f" {list(p.choices)}" if p.choices else "") for p in spec.params)
        dims = "x".join(spec.dims)
        short = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
        t.add_row(name, inputs, dims, params, " ".join(short.get(d, d) for d in spec.dtypes))
    console.print(t)


def parse_params(items: list[str]) -> dict[str, object]:
    """``--param activation=gelu --param causal=true`` -> dict with JSON-ish values."""
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise fail(f"--param must be NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# tune lives in its own module: the tuning engine grows there (strategies, executors).
from uhop.cli.tune import tune_command  # noqa: E402

app.command("tune")(tune_command)


@app.command()
def bench(
    suite: str = typer.Option("cpu", help="Suite: 'cpu' (default), or 'quick' (small shapes, for CI)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write results as JSON here."),
    budget: float = typer.Option(30.0, help="Tuning budget per problem, seconds."),
) -> None:
    """UHOP vs the naive eager baseline vs the library baseline, side by side in one run."""
    from uhop.benchsuite import print_table, run_suite

    try:
        rows, meta = run_suite(suite, budget_s=budget, console=console)
    except ValueError as exc:
        raise fail(str(exc)) from None
    print_table(rows, console)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"machine": meta, "results": rows}, indent=1))
        console.print(f"wrote {json_out}")


@app.command()
def demo(
    tokens: int = typer.Option(2048, help="Tokens (rows) in the batch."),
    d_model: int = typer.Option(512, help="Model width."),
    budget: float = typer.Option(15.0, help="Tuning budget per op, seconds."),
) -> None:
    """The main job: a transformer block (norms, attention, MLP) run through UHOP on this machine,
    with the embedded default store; prints what was chosen per op and the speedup over numpy."""
    from uhop.demo import run_demo

    if tokens < 1 or d_model < 8 or d_model % 8:
        raise fail(f"--tokens must be >= 1 and --d-model a positive multiple of 8, got {tokens}, {d_model}")
    ok = run_demo(tokens=tokens, d_model=d_model, budget_s=budget, console=console)
    if not ok:
        raise typer.Exit(1)


def fold_id(text: str) -> str:
    """A candidate id or key for a table cell: a space after each ',' so a narrow terminal wraps
    it between config entries instead of cutting it (``--json`` keeps the exact id)."""
    return text.replace(",", ", ")


def _fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.3f} ms"
    return f"{s:.3f} s"
