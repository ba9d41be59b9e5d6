"""``uhop tune OP --shape ...``: tune one problem and show every candidate.

Without ``--strategy`` the backends' default candidate lists are timed (the grid). With
``--strategy`` the union of the backends' search spaces is searched, every candidate a job in the
persistent queue, run by ``--executor`` (local worker processes or a Ray cluster); multi-objective
runs write their Pareto front to JSON; ``--resume`` continues an interrupted run.

``--objectives`` and ``--weights`` take several values (``--objectives latency energy --weights
0.7 0.3``), as well as comma lists or repeated flags.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

STRATEGIES = ("exhaustive", "random", "evolution", "nsga2", "surrogate")
EXECUTORS = ("local", "ray", "inline")


def _split(items: list[str]) -> list[str]:
    return [x.strip() for item in items for x in item.split(",") if x.strip()]


def _sort_extras(extras: list[str], objectives: list[str], weights: list[str]) -> tuple[list[str], list[str]]:
    """Values that followed ``--objectives`` / ``--weights`` land among the positional arguments
    (click options take one value each): objective names go back to --objectives, numbers to
    --weights. Anything else is an error naming the argument."""
    from uhop.tune.strategies import OBJECTIVES

    for x in extras:
        if x in OBJECTIVES and objectives:
            objectives.append(x)
            continue
        try:
            float(x)
        except ValueError:
            raise ValueError(f"unexpected argument {x!r} (OP is one word; --objectives takes {', '.join(OBJECTIVES)})") from None
        if not weights:
            raise ValueError(f"unexpected argument {x!r} (numbers follow --weights)")
        weights.append(x)
    return objectives, weights


def tune_command(
    op: list[str] = typer.Argument(None, help="Op name (see `uhop ops`); omit with --resume."),
    shape: str | None = typer.Option(None, "--shape", "-s", help="Dims in the op's order (`uhop ops`), e.g. 256x256x256 for matmul MxNxK (or BxMxNxK)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float64, float16, bfloat16."),
    param: list[str] = typer.Option([], "--param", "-p", help="Op parameter NAME=VALUE (repeatable)."),
    arity: int | None = typer.Option(None, help="Number of inputs (e.g. 3 for matmul with bias)."),
    device: str = typer.Option("cpu", help="cpu or cuda:N."),
    budget: int | None = typer.Option(None, "--budget", "-n", help="Evaluation budget: at most N candidates measured."),
    time_budget: float | None = typer.Option(None, "--time-budget", "-t", help="Time budget in seconds (default UHOP_TUNE_BUDGET_S unless --budget)."),
    policy: str = typer.Option("tune", help="tune (measure) or fast (choose without timing)."),
    backend: list[str] = typer.Option([], "--backend", "-b", help="Restrict to these backends (repeatable)."),
    strategy: str | None = typer.Option(None, "--strategy", help=f"Search the backends' spaces: {', '.join(STRATEGIES)}."),
    objectives: list[str] = typer.Option([], "--objectives", help="latency, energy, memory (several values; default latency)."),
    weights: list[str] = typer.Option([], "--weights", help="One weight per objective for the final choice, e.g. 0.7 0.3."),
    executor: str | None = typer.Option(None, "--executor", help=f"Who measures: {', '.join(EXECUTORS)} (default local)."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster HOST:PORT (with --executor ray)."),
    workers: int | None = typer.Option(None, "--workers", help="Parallel workers (default: 1 on CPU, one per GPU)."),
    seed: int = typer.Option(0, "--seed", help="Strategy seed (a run is reproducible for a seed)."),
    patience: int | None = typer.Option(None, "--patience", help="Stop after N evaluations without improvement."),
    resume: bool = typer.Option(False, "--resume", help="Continue the latest interrupted run (or --run ID)."),
    run: str | None = typer.Option(None, "--run", help="Run id for --resume."),
    pareto: Path | None = typer.Option(None, "--pareto", help="Where to write the Pareto front (multi-objective runs)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the measurements as JSON here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a plot (.svg, or .png): candidates' times with spread, the choice, the roofline."),
    force: bool = typer.Option(False, "--force", help="Store this run's pick even if the stored entry is faster."),
    explain: bool = typer.Option(False, "--explain", help="Show where the tuning time went (per phase and candidate)."),
) -> None:
    """Tune one problem: table of candidates with time, GFLOP/s or GB/s, validity and the choice."""
    from uhop import backends as bk
    from uhop.cli.core import _fmt_time, fail, fold_id, parse_params
    from uhop.cli.progress import Reporter
    from uhop.errors import InputError, NoCandidateError, ProblemTooLargeError, UnknownOpError
    from uhop.limits import check_fits
    from uhop.ops import get as get_op
    from uhop.problem import Problem, require_device
    from uhop.tune.tuner import tune

    console = Console()
    words = list(op or [])
    try:
        objs, wts = _sort_extras(words[1:], _split(objectives), _split(weights))
        weight_values = [float(w) for w in wts] or None
    except ValueError as exc:
        raise fail(str(exc)) from None
    objs = objs or ["latency"]
    if strategy is not None and strategy not in STRATEGIES:
        raise fail(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if executor is not None and executor not in EXECUTORS:
        raise fail(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if budget is not None and budget < 1:
        raise fail(f"--budget must be >= 1 evaluations, got {budget}")
    if policy not in ("tune", "fast"):
        raise fail(f"--policy must be tune or fast, got {policy!r}")
    try:
        require_device(device, "--device")
    except InputError as exc:
        raise fail(str(exc)) from None
    unknown = [b for b in backend if b not in bk.REGISTRY]
    if unknown:
        raise fail(f"--backend: unknown {', '.join(map(repr, unknown))}; known: {', '.join(bk.REGISTRY)}")
    if weight_values is not None and len(weight_values) != len(objs):
        raise fail(f"--weights: {len(weight_values)} given for {len(objs)} objectives ({', '.join(objs)})")
    if len(objs) > 1 and strategy is None:
        strategy = "nsga2"
    search = strategy is not None or executor is not None or resume

    problem = None
    run_id = None
    if resume:
        from uhop.tune.jobs import open_queue

        runs = open_queue().runs("running")
        if run is not None:
            runs = [r for r in runs if r["id"] == run]
            if not runs:
                raise fail(f"--run: no interrupted tuning run {run!r} (see the job queue)")
        if not runs:
            raise fail("--resume: no interrupted tuning run to resume")
        run_id = runs[-1]["id"]
        problem = Problem.from_json(runs[-1]["spec"]["problem"])
        objs = runs[-1]["spec"]["objectives"]
    else:
        if not words:
            raise fail("missing OP (or use --resume)")
        if shape is None:
            raise fail("missing --shape (dims in the op's order, e.g. 256x256x256)")
        try:
            spec = get_op(words[0])
            if dtype not in spec.dtypes:
                raise InputError(f"--dtype must be one of {', '.join(spec.dtypes)} for {words[0]}, got {dtype!r}")
            dims = spec.parse_shape(shape)
            problem = Problem.make(words[0], dims, dtype, parse_params(param), arity, device=device,
                                   array="torch" if device != "cpu" else "numpy")  # fmt: skip
            check_fits(problem)  # before anything is allocated
        except (InputError, UnknownOpError, ProblemTooLargeError) as exc:
            raise fail(str(exc)) from None

    head = f"Tuning [bold]{problem.describe()}[/bold]"
    if search:
        head += f"  strategy={strategy or 'exhaustive'} objectives={','.join(objs)} executor={executor or 'local'}"
    console.print(head + (f"  (resuming run {run_id})" if run_id else ""))
    with Reporter(console, "candidates") as prog:  # a live bar on a terminal, a line every few s when piped
        best = [math.inf]

        def on_result(i: int, total: int, m) -> None:
            if m.ok and m.median_s < best[0]:
                best[0] = m.median_s
            prog.update(i, total, f"best {_fmt_time(best[0])}" if math.isfinite(best[0]) else "")

        try:
            if search:
                res = tune(problem=problem, budget_s=time_budget, backends=tuple(backend), progress=on_result,
                           strategy=strategy, max_evals=budget, objectives=tuple(objs), weights=weight_values,
                           executor=executor, workers=workers, address=address, seed=seed, patience=patience,
                           resume=run_id)  # fmt: skip
            else:
                res = tune(problem=problem, policy=policy, budget_s=time_budget, backends=tuple(backend),
                           progress=on_result, max_evals=budget, force=force)  # fmt: skip
        except NoCandidateError as exc:
            raise fail(str(exc), 1) from None
        except (ValueError, ImportError) as exc:
            raise fail(str(exc)) from None

    flops, nbytes = problem.flops(), problem.bytes()
    multi = len(res.objectives) > 1
    t = Table(title=f"{problem.describe()}  ({flops / 1e9:.3g} GFLOP, {nbytes / 1e6:.3g} MB)")
    cols = ["candidate", "time", "GFLOP/s", "GB/s"] + (["energy J", "memory B", "pareto"] if multi else []) + ["result"]
    for col in cols:  # 80 columns: numbers never wrap, the candidate and reasons fold, nothing is cut
        num = col in ("time", "GFLOP/s", "GB/s", "energy J", "memory B")
        t.add_column(col, justify="right" if num else "left", no_wrap=num, overflow="fold",
                     max_width=18 if col == "result" else None)  # rich shrinks the widest column first
    ranked = sorted(res.measurements, key=lambda m: (not m.ok, m.median_s))
    front = {id(m) for m in res.pareto}
    for m in ranked:
        gf, gb = res.rate(m)
        valid = "[green]ok[/green]" if m.ok else f"[red]{m.status}[/red] {escape(m.reason[:160])}"
        if m.status == "skipped":
            valid = f"[dim]skipped ({escape(m.reason)})[/dim]"
        if res.best is not None and m.candidate == res.best.candidate:
            valid = "[bold green]ok, chosen[/bold green]"
        row = [escape(fold_id(m.candidate.id)), _fmt_time(m.median_s if m.ok else None), f"{gf:.1f}" if gf else "-", f"{gb:.2f}" if gb else "-"]
        if multi:
            row += [f"{m.energy_j:.3g}" if m.ok and math.isfinite(m.energy_j) else "-",
                    f"{m.mem_bytes:.3g}" if m.ok and math.isfinite(m.mem_bytes) else "-", "*" if id(m) in front else ""]  # fmt: skip
        t.add_row(*row, valid)
    console.print(t)
    tail = f" (run {res.run_id}: {res.stopped})" if res.run_id else ""
    if res.ties:
        console.print(f"statistically tied with the choice: {', '.join(c.id for c in res.ties)} (the preferred one kept)")
    if res.served is not None and res.best is not None and res.served != res.best.candidate:
        console.print(f"the store keeps {res.served.id}: faster than this run's pick beyond the measured spread "
                      "(--force stores this run's pick)")  # fmt: skip
    console.print(f"key {res.key} stored in the kernel store{tail}")
    if explain:
        _print_explain(console, res)
    if multi:
        path = pareto or Path(f"uhop-pareto-{problem.op}-{'x'.join(str(v) for _, v in problem.dims)}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "problem": problem.to_json(), "key": res.key, "run_id": res.run_id, "objectives": list(res.objectives),
            "weights": weight_values, "chosen": res.best.candidate.to_json() if res.best else None,
            "front": [m.to_json() for m in res.pareto],
        }, indent=1, default=str))  # fmt: skip
        console.print(f"Pareto front ({len(res.pareto)} configs) written to {path}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({
            "problem": problem.to_json(), "key": res.key, "policy": res.policy, "run_id": res.run_id,
            "chosen": res.best.candidate.to_json() if res.best else None,
            "served": res.served.to_json() if res.served else None, "ties": [c.to_json() for c in res.ties],
            "overhead_s": res.overhead,
            "measurements": [m.to_json() for m in res.measurements],
            "pareto": [m.to_json() for m in res.pareto],
        }, indent=1, default=str))  # fmt: skip
    if plot is not None:
        from uhop.report import tune_plot, write_plot

        try:
            console.print(f"plot written to {write_plot(tune_plot(res), plot)}")
        except (ValueError, ImportError) as exc:
            raise fail(str(exc)) from None


def _print_explain(console: Console, res) -> None:
    """Where the tuning time went: the run's own phases, then each evaluated candidate's."""
    ov = res.overhead
    if not ov:
        console.print("(no time breakdown for search runs)")
        return
    t = Table(title=f"where the time went ({ov.get('total', 0.0):.2f} s in all)")
    t.add_column("phase")
    t.add_column("seconds", justify="right")
    for name, label in (("probe", "backend imports"), ("enumerate", "candidates"), ("worker_start", "worker start"),
                        ("reference", "reference inputs (float64)"), ("retime", "interleaved re-timing"), ("store", "store")):  # fmt: skip
        t.add_row(label, f"{ov.get(name, 0.0):.3f}")
    console.print(t)
    c = Table(title="per candidate (seconds)")
    # "ahead": compiled in parallel by the precompile pool (not on this path); "wait": for that build
    cols = ("compile", "validate", "time")
    if any(dict(m.phases).get("ahead") is not None for m in res.measurements):
        cols += ("ahead", "wait")
    for col in ("candidate", "status", *cols):
        c.add_column(col, justify="right" if col in cols else "left")
    for m in res.measurements:
        if m.status == "skipped":
            continue
        ph = dict(m.phases)
        c.add_row(m.candidate.id, m.status, *(f"{ph[k]:.3f}" if k in ph else "-" for k in cols))
    console.print(c)

