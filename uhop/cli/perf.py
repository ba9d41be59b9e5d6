"""``uhop perf``: telemetry export, seeded collection, cost-model training and prediction."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Performance data store and learned cost model.", no_args_is_help=True)


def _problem(op: str, shape: str, dtype: str, param: list[str]):
    from uhop.cli.core import fail, parse_params
    from uhop.errors import InputError, UnknownOpError
    from uhop.ops import get as get_op
    from uhop.problem import Problem

    try:
        spec = get_op(op)
        if dtype not in spec.dtypes:
            raise InputError(f"--dtype must be one of {', '.join(spec.dtypes)} for {op}, got {dtype!r}")
        return Problem.make(op, spec.parse_shape(shape), dtype, parse_params(param))
    except (InputError, UnknownOpError) as exc:
        raise fail(str(exc)) from None


@app.command()
def collect(
    op: str = typer.Option(..., "--op", help="Op to collect for (e.g. matmul)."),
    samples: int = typer.Option(200, "--samples", "-n", help="Labelled (valid, timed) samples to record, at least."),
    seed: int = typer.Option(0, "--seed", help="Seed of the problem suite and candidate sampling."),
    dtype: str = typer.Option("float32", "--dtype"),
    family: int = typer.Option(16, "--family", help="Tiled-family configs sampled per problem (matmul; 0: none)."),
    timer: str = typer.Option("wall", "--timer", help="wall, process-cpu or thread-cpu (CPU time: shared machines, 1 core, 1 thread)."),
) -> None:
    """Run a seeded suite of problems, measure every candidate, record telemetry in the store."""
    from uhop.cli.core import fail
    from uhop.errors import InputError, UnknownOpError
    from uhop.perf.collect import TIMERS
    from uhop.perf.collect import collect as run
    from uhop.store import open_store

    if samples < 1:
        raise fail(f"--samples must be >= 1, got {samples}")
    if timer not in TIMERS:
        raise fail(f"--timer must be one of {', '.join(TIMERS)}, got {timer!r}")
    from uhop.cli.progress import Reporter

    console = Console()
    try:
        with Reporter(console, "samples") as rep:  # a live bar on a terminal, a line every few s when piped
            res = run(op, samples, seed, dtype=dtype, family_n=family, timer=timer,
                      progress=lambda n, total, p: rep.update(min(n, total), total, p.describe()))  # fmt: skip
    except (InputError, UnknownOpError) as exc:
        raise fail(str(exc)) from None
    console.print(
        f"recorded {res.rows} measurements ({res.samples} labelled, {res.failed} failed) of {len(res.problems)} "
        f"problems in {res.seconds:.1f}s into {open_store().url}"
    )
    if res.samples < samples:
        raise fail(f"only {res.samples} labelled samples (asked for {samples}): the suite ran out of problems", 1)


@app.command()
def train(
    op: str = typer.Option("matmul", "--op", help="Op whose telemetry to train on."),
    seed: int = typer.Option(0, "--seed", help="Model seed (same data + seed = byte-identical model file)."),
    data: list[Path] = typer.Option([], "--data", help="Train on exported telemetry files (.parquet/.jsonl) instead of the store."),
    out: Path | None = typer.Option(None, "--out", help="Model file (default UHOP_HOME/models/costmodel-OP.json)."),
) -> None:
    """Train the ranking + quantile model; print the file and its SHA-256."""
    from uhop.cli.core import fail
    from uhop.perf.model import train as run

    for f in data:
        if not f.exists():
            raise fail(f"--data {f}: no such file")
    try:
        model, path = run(op, data=data, seed=seed, out=out)
    except ValueError as exc:
        raise fail(str(exc), 1) from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    m = model.meta
    typer.echo(f"trained on {m['samples']} samples of {m['problems']} problems ({m['measurements']} measurements)")
    typer.echo(f"model {path}\nsha256 {digest}\ndata_sha256 {m['data_sha256']}")


@app.command()
def predict(
    op: str = typer.Option(..., "--op"),
    shape: str = typer.Option(..., "--shape", "-s", help="Dims in the op's order, e.g. 256x256x256 for matmul MxNxK."),
    dtype: str = typer.Option("float32", "--dtype"),
    param: list[str] = typer.Option([], "--param", "-p", help="Op parameter NAME=VALUE (repeatable)."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Predict this backend's candidate(s) only."),
    template: str | None = typer.Option(None, "--template", help="Template name (default: the backend's first)."),
    config: str | None = typer.Option(None, "--config", help="Candidate config as JSON, e.g. '{\"bm\": 16}'."),
    model_file: Path | None = typer.Option(None, "--model", help="Model file (default UHOP_HOME/models/costmodel-OP.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the ranking as JSON on stdout (seconds, exact candidate ids)."),
) -> None:
    """Predicted latency (median and 80% interval) per candidate, best first; runs no kernel."""
    from rich.markup import escape

    from uhop.backends.base import Candidate
    from uhop.cli.core import _fmt_time, fail, fold_id
    from uhop.perf.collect import candidates_for
    from uhop.perf.model import CostModel, model_path

    problem = _problem(op, shape, dtype, param)
    path = model_file or model_path(op)
    if not path.exists():
        raise fail(f"no cost model for {op} at {path}; run `uhop perf collect --op {op}` and `uhop perf train --op {op}`", 1)
    try:
        model = CostModel.load(path)
    except ValueError as exc:
        raise fail(str(exc), 1) from None
    cfg = None
    if config is not None:
        try:
            cfg = json.loads(config)
        except json.JSONDecodeError as exc:
            raise fail(f"--config must be a JSON object, got {config!r} ({exc})") from None
        if not isinstance(cfg, dict):
            raise fail(f"--config must be a JSON object, got {config!r}")
    import random

    cands = [c for c, _ in candidates_for(problem, random.Random(0), family_n=10**6)]
    cands.sort(key=lambda c: c.id)
    if backend is not None:
        cands = [c for c in cands if c.backend == backend and (template is None or c.template == template)]
        if cfg is not None:
            match = [c for c in cands if c.cfg == cfg]
            if not match:
                tmpl = template or (cands[0].template if cands else None)
                if tmpl is None:
                    raise fail(f"--backend {backend}: no candidates for {problem.describe()}; give --template too")
                match = [Candidate.of(backend, tmpl, **cfg)]
            cands = match
        elif not cands:
            raise fail(f"--backend {backend}: no candidates for {problem.describe()} (known: see `uhop info`)")
    elif cfg is not None:
        raise fail("--config needs --backend")
    q = model.predict(problem, cands)
    s = model.scores(problem, cands)
    order = sorted(range(len(cands)), key=lambda i: -s[i])
    if as_json:
        typer.echo(json.dumps({"problem": problem.describe(), "model": str(path), "candidates": [
            {"rank": r, "candidate": cands[i].id, "p10_s": q[i][0], "median_s": q[i][1], "p90_s": q[i][2]}
            for r, i in enumerate(order, 1)]}, indent=1))  # fmt: skip
        return
    t = Table(title=f"predicted latency of {problem.describe()} (model: {path.name}, no kernel run)")
    for col in ("rank", "candidate", "predicted", "80% interval", "GFLOP/s"):  # 80 columns: the id folds, never cut
        t.add_column(col, justify="left" if col == "candidate" else "right", overflow="fold", no_wrap=col == "rank")
    for r, i in enumerate(order, 1):
        lo, med, hi = q[i]
        gf = problem.flops() / med / 1e9 if med > 0 and math.isfinite(med) else None
        t.add_row(str(r), escape(fold_id(cands[i].id)), _fmt_time(med), f"{_fmt_time(lo)} .. {_fmt_time(hi)}", f"{gf:.2f}" if gf else "-")
    Console().print(t)
    lo, med, hi = q[order[0]]
    typer.echo(f"{'best' if len(cands) > 1 else 'candidate'}: {cands[order[0]].id}  predicted {_fmt_time(med)} "
               f"(80% interval {_fmt_time(lo)} .. {_fmt_time(hi)})")  # fmt: skip


@app.command()
def export(
    out: Path = typer.Option(..., "--out", "-o", help="Output file."),
    fmt: str = typer.Option("parquet", "--format", "-f", help="parquet, csv or jsonl."),
    op: str | None = typer.Option(None, "--op", help="Only this op's rows."),
) -> None:
    """Export the telemetry table (every measurement with its features)."""
    from uhop.cli.core import fail
    from uhop.perf.telemetry import export as run
    from uhop.store import open_store

    if fmt not in ("parquet", "csv", "jsonl"):
        raise fail(f"--format must be parquet, csv or jsonl, got {fmt!r}")
    n = run(open_store(), out, fmt, op)
    typer.echo(f"wrote {n} telemetry rows to {out} ({fmt})")


@app.command()
def stats(as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON on stdout.")) -> None:
    """Telemetry rows per op, backend and status."""
    from collections import Counter

    from rich.markup import escape

    from uhop.perf.telemetry import telemetry_db
    from uhop.store import open_store

    store = open_store()
    rows = telemetry_db(store).rows()
    c = Counter((r["op"], r["backend"], r["status"]) for r in rows)
    if as_json:
        typer.echo(json.dumps({"store": store.url, "rows": len(rows), "counts": [
            {"op": op, "backend": b, "status": st, "rows": n} for (op, b, st), n in sorted(c.items())]}, indent=1))  # fmt: skip
        return
    if not rows:  # not an empty table under a title folded to its width
        typer.echo(f"no telemetry rows in {store.url} yet: every tuning run records its measurements, "
                   "`uhop perf collect` measures a seeded suite")  # fmt: skip
        return
    t = Table(title=escape(f"{len(rows)} telemetry rows in {store.url}"))
    for col in ("op", "backend", "status", "rows"):  # 80 columns: names fold, never cut
        t.add_column(col, overflow="fold", no_wrap=col == "rows", justify="right" if col == "rows" else "left")
    for (op, b, st), n in sorted(c.items()):
        t.add_row(escape(op), escape(b), escape(st), str(n))
    Console().print(t)
