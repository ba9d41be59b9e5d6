"""Core commands: info, ops, tune, bench, demo (cache and the rest are sub-apps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
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
def info(as_json: bool = typer.Option(False, "--json", help="Print everything as JSON on stdout.")) -> None:
    """Hardware, versions, backends and optional components.

    Each backend with why it is unavailable, every optional component with its version or the
    exact install line, and what each enables."""
    import platform

    from uhop import __version__, components
    from uhop import backends as bk
    from uhop.config import settings
    from uhop.problem import cpu_model

    s = settings()
    manifests = {}
    try:
        from uhop.hardware import get_capabilities

        for dev in ("cpu", "cuda"):
            try:
                manifests[dev] = get_capabilities(device=dev).name
            except Exception:  # no such device here
                continue
    except Exception as exc:  # hardware manifests are optional here
        manifests["error"] = f"{exc.__class__.__name__}: {exc}"
    backends = []
    for b in bk.all_backends():
        ok, why = b.availability
        backends.append({"backend": b.name, "available": bool(ok), "ops": list(b.ops), "details": why})
    comps = components.status()
    if as_json:
        typer.echo(json.dumps({
            "uhop": __version__, "python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_model(),
            "manifests": manifests, "store": s.resolved_store_url, "policy": s.policy, "shape_buckets": s.shape_buckets,
            "threads": s.threads, "backends": backends, "components": comps,
        }, indent=1, default=str))  # fmt: skip
        return
    console.print(f"[bold]UHOP {__version__}[/bold]  Python {platform.python_version()}  {platform.machine()}", highlight=False)
    console.print(f"CPU: {escape(cpu_model())}", highlight=False)
    for dev, name in manifests.items():
        console.print(f"Manifest ({dev}): {escape(name)}  (`uhop hw show --device {dev}`)", highlight=False)
    # The store URL alone on its line, never folded by us (a terminal wraps it; a copy stays whole).
    console.print(f"Store: {escape(s.resolved_store_url)}", highlight=False, soft_wrap=True)
    console.print(f"Policy: {s.policy}   shape buckets: {s.shape_buckets}   threads: {s.threads}", highlight=False)
    t = Table(title="Backends")
    t.add_column("backend", no_wrap=True)
    t.add_column("here", no_wrap=True)
    t.add_column("ops", overflow="fold")
    t.add_column("details", overflow="fold")
    for b in backends:
        t.add_row(b["backend"], "[green]yes[/green]" if b["available"] else "[red]no[/red]", ", ".join(b["ops"]),
                  escape(b["details"] or ""))  # fmt: skip
    console.print(t)
    t = Table(title="Optional components")
    t.add_column("component", no_wrap=True)
    t.add_column("version / install", overflow="fold")
    t.add_column("enables", overflow="fold")
    for c in comps:
        have = f"[green]{escape(c['version'])}[/green]" if c["version"] else f"[red]missing[/red]: {escape(c['install'])}"
        t.add_row(c["component"], have, escape(c["enables"]))
    console.print(t)


@app.command("ops")
def list_ops(as_json: bool = typer.Option(False, "--json", help="Print the registry as JSON on stdout.")) -> None:
    """The op registry: inputs, dims (the --shape forms), params, dtypes."""
    from uhop.ops import REGISTRY

    rows = []
    for name, spec in REGISTRY.items():
        inputs = ["x0", "x1", "..."] if spec.variadic else [
            f"{n}?" if i >= len(spec.inputs) - spec.optional else n for i, n in enumerate(spec.inputs)
        ]  # fmt: skip
        required = [d for d in spec.dims if d not in spec.defaulted_dims()]
        shapes = ["x".join(required)] + (["x".join(spec.dims)] if len(required) != len(spec.dims) else [])
        params = [{"name": p.name, "default": p.default, "choices": list(p.choices) if p.choices else None} for p in spec.params]
        rows.append({"op": name, "inputs": inputs, "shape": shapes, "params": params, "dtypes": list(spec.dtypes)})
    if as_json:
        typer.echo(json.dumps(rows, indent=1, default=str))
        return
    t = Table(title="Ops")
    t.add_column("op", no_wrap=True, style="bold")
    for col in ("inputs", "--shape", "params", "dtypes"):
        t.add_column(col, overflow="fold")
    short = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
    for r in rows:
        params = "\n".join(f"{p['name']}={p['default']}" + (f" ({' | '.join(map(str, p['choices']))})" if p["choices"] else "")
                           for p in r["params"])  # fmt: skip
        t.add_row(r["op"], ", ".join(r["inputs"]), " or ".join(r["shape"]), escape(params),
                  " ".join(short.get(d, d) for d in r["dtypes"]))  # fmt: skip
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
    op: str | None = typer.Argument(None, help="One op of your own to bench (with --shape) instead of a suite."),
    shape: str | None = typer.Option(None, "--shape", "-s", help="With OP: dims in the op's order (`uhop ops`), e.g. 512x512x512."),
    param: list[str] = typer.Option([], "--param", "-p", help="With OP: op parameter NAME=VALUE (repeatable)."),
    arity: int | None = typer.Option(None, help="With OP: number of inputs (e.g. 3 for matmul with bias)."),
    dtype: str = typer.Option("float32", "--dtype", help="With OP: float32 or float64 (on a GPU: float32, float16 or bfloat16)."),
    suite: str | None = typer.Option(None, help="Suite: 'cpu' (the default on a CPU), 'gpu' (bf16, the default with --device cuda), or 'quick' (small shapes, for CI)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N: on a GPU the baselines are torch eager and torch.compile."),
    json_out: str | None = typer.Option(None, "--json", help="Write results as JSON to this file ('-': stdout, no table)."),
    budget: float = typer.Option(30.0, help="Tuning budget per problem, seconds."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a plot (.svg, or .png): UHOP vs the baselines per case."),
) -> None:
    """UHOP vs the naive eager baseline vs the library baseline, side by side in one run: a suite,
    or one op of your own (`uhop bench softmax --shape 4096x1000`)."""
    from uhop.benchsuite import SUITES, custom_case, print_table, run_cases, run_suite
    from uhop.errors import UhopError
    from uhop.problem import require_device

    try:
        require_device(device, "--device")
    except UhopError as exc:
        raise fail(str(exc)) from None
    suite = suite or ("cpu" if device == "cpu" else "gpu")
    if suite == "gpu" and device == "cpu":
        raise fail("--suite gpu runs on a CUDA device: add --device cuda")
    if suite not in SUITES:
        raise fail(f"--suite must be one of {', '.join(SUITES)}, got {suite!r}")
    if budget <= 0:
        raise fail(f"--budget must be > 0 seconds, got {budget}")
    if op is None and (shape is not None or param or arity is not None):
        raise fail("--shape, --param and --arity go with an OP: `uhop bench OP --shape DIMS` (ops: `uhop ops`)")
    case = None
    if op is not None:
        if shape is None:
            raise fail(f"give the problem's dims: `uhop bench {op} --shape DIMS` (`uhop ops` lists each op's dims)")
        try:
            case = custom_case(op, shape, parse_params(param), arity, dtype, device)
        except UhopError as exc:
            raise fail(str(exc)) from None
    to_stdout = json_out == "-"
    out = Console(stderr=True) if to_stdout else console  # progress goes to stderr when JSON takes stdout
    if case is not None:
        rows, meta = run_cases([case], budget_s=budget, console=out, overhead=False)
    else:
        rows, meta = run_suite(suite, budget_s=budget, console=out, device=device)
    if plot is not None:
        from uhop.report import bench_plot, write_plot

        try:
            out.print(f"plot written to {write_plot(bench_plot(rows), plot)}")
        except (ValueError, ImportError) as exc:
            raise fail(str(exc)) from None
    if to_stdout:
        typer.echo(json.dumps({"machine": meta, "results": rows}, indent=1))
        return
    print_table(rows, console)
    if json_out is not None:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"machine": meta, "results": rows}, indent=1))
        console.print(f"wrote {path}")


@app.command()
def demo(
    tokens: int = typer.Option(2048, help="Tokens (rows) in the batch."),
    d_model: int = typer.Option(512, help="Model width."),
    budget: float = typer.Option(15.0, help="Tuning budget per op, seconds."),
) -> None:
    """The main job: a transformer block run through UHOP on this machine.

    Norms, attention and the MLP, tuned into the embedded default store; prints what was chosen
    per op and the speedup over numpy."""
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
