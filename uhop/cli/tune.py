"""``uhop tune OP --shape ... --dtype ...``: tune one problem and show every candidate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def tune_command(
    op: str = typer.Argument(..., help="Op name (see `uhop ops`)."),
    shape: str = typer.Option(..., "--shape", "-s", help="Dims in the op's order, e.g. 256x256x256 for matmul MxNxK."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float64, float16, bfloat16."),
    param: list[str] = typer.Option([], "--param", "-p", help="Op parameter NAME=VALUE (repeatable)."),
    arity: int | None = typer.Option(None, help="Number of inputs (e.g. 3 for matmul with bias)."),
    device: str = typer.Option("cpu", help="cpu or cuda:N."),
    budget: float | None = typer.Option(None, help="Time budget in seconds (default UHOP_TUNE_BUDGET_S)."),
    policy: str = typer.Option("tune", help="tune (measure) or fast (choose without timing)."),
    backend: list[str] = typer.Option([], "--backend", "-b", help="Restrict to these backends (repeatable)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the measurements as JSON here."),
) -> None:
    """Tune one problem: table of candidates with time, GFLOP/s or GB/s, validity and the choice."""
    from uhop.cli.core import _fmt_time, fail, parse_params
    from uhop.errors import InputError, NoCandidateError, UnknownOpError
    from uhop.ops import get as get_op
    from uhop.problem import Problem
    from uhop.tune.tuner import tune

    console = Console()
    try:
        spec = get_op(op)
        if dtype not in spec.dtypes:
            raise InputError(f"--dtype must be one of {', '.join(spec.dtypes)} for {op}, got {dtype!r}")
        dims = spec.parse_shape(shape)
        problem = Problem.make(op, dims, dtype, parse_params(param), arity, device=device,
                               array="torch" if device != "cpu" else "numpy")  # fmt: skip
    except (InputError, UnknownOpError) as exc:
        raise fail(str(exc)) from None
    if policy not in ("tune", "fast"):
        raise fail(f"--policy must be tune or fast, got {policy!r}")

    console.print(f"Tuning [bold]{problem.describe()}[/bold]")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[best]}"), console=console, transient=True,
    ) as prog:  # fmt: skip
        task = prog.add_task("candidates", total=None, best="")
        best = [math.inf]

        def on_result(i: int, total: int, m) -> None:
            if m.ok and m.median_s < best[0]:
                best[0] = m.median_s
            prog.update(task, completed=i, total=total, best=f"best {_fmt_time(best[0])}" if math.isfinite(best[0]) else "")

        try:
            res = tune(problem=problem, policy=policy, budget_s=budget, backends=tuple(backend), progress=on_result)
        except NoCandidateError as exc:
            raise fail(str(exc), 1) from None

    flops, nbytes = problem.flops(), problem.bytes()
    t = Table(title=f"{problem.describe()}  ({flops / 1e9:.3g} GFLOP, {nbytes / 1e6:.3g} MB)")
    for col in ("candidate", "time", "GFLOP/s", "GB/s", "valid", "chosen"):
        t.add_column(col, justify="right" if col in ("time", "GFLOP/s", "GB/s") else "left")
    ranked = sorted(res.measurements, key=lambda m: (not m.ok, m.median_s))
    for m in ranked:
        gf, gb = res.rate(m)
        valid = "[green]ok[/green]" if m.ok else f"[red]{m.status}[/red] {m.reason[:60]}"
        if m.status == "skipped":
            valid = f"[dim]skipped ({m.reason})[/dim]"
        chosen = "[bold green]<- chosen[/bold green]" if res.best is not None and m.candidate == res.best.candidate else ""
        t.add_row(m.candidate.id, _fmt_time(m.median_s if m.ok else None), f"{gf:.1f}" if gf else "-",
                  f"{gb:.2f}" if gb else "-", valid, chosen)  # fmt: skip
    console.print(t)
    console.print(f"key {res.key} stored in the kernel store")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({
            "problem": problem.to_json(), "key": res.key, "policy": res.policy,
            "chosen": res.best.candidate.to_json() if res.best else None,
            "measurements": [m.to_json() for m in res.measurements],
        }, indent=1, default=str))  # fmt: skip
