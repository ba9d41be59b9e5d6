"""``uhop ai``: generate kernels with a language model through the sandbox, report, quarantine.

Exit codes: 0 done (``generate``: the run finished, promoted or not); 1 ``quarantine`` found no
active promotion; 2 bad usage (unknown op, bad shape, missing endpoint or model, bad option).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

app = typer.Typer(
    help="Generate kernels with a language model (sandboxed), report, quarantine.", no_args_is_help=True
)


def _usage(msg: str) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(2)


def _us(s: float | None) -> str:
    return "-" if s is None or not math.isfinite(s) else f"{s * 1e6:.1f} us"


@app.command("generate")
def generate_cmd(
    op: str = typer.Argument(..., help="The op (see `uhop ops`)."),
    shape: str = typer.Option(
        ..., "--shape", help="Problem shape in the op's --shape syntax, e.g. 256x256x256."
    ),
    dtype: str = typer.Option("float32", "--dtype"),
    device: str = typer.Option("cpu", "--device", help="cpu (CUDA kernel files need the GPU sandbox)."),
    param: list[str] | None = typer.Option(None, "-p", "--param", help="Op param NAME=VALUE; repeatable."),
    rounds: int = typer.Option(2, "--rounds", help="Refinement rounds (generate -> check -> feedback)."),
    variants: int = typer.Option(2, "--variants", help="Requests per round."),
    base_url: str | None = typer.Option(
        None, "--base-url", help="OpenAI-compatible endpoint (default UHOP_AI_BASE_URL)."
    ),
    model: str | None = typer.Option(None, "--model", help="Model name (default UHOP_AI_MODEL)."),
    timeout: float = typer.Option(
        120.0, "--timeout", help="Seconds per request before it counts as a timeout."
    ),
    retries: int = typer.Option(4, "--retries", help="Retries on 429/5xx/timeouts (Retry-After honoured)."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Completion tokens per request."),
    temperature: float = typer.Option(0.7, "--temperature"),
    token_budget: int | None = typer.Option(
        None, "--token-budget", help="Tokens (in+out) the whole run may use."
    ),
    cost_budget: float | None = typer.Option(
        None, "--cost-budget", help="USD the whole run may spend (needs prices)."
    ),
    price_in: float = typer.Option(0.0, "--price-in", help="USD per million prompt tokens."),
    price_out: float = typer.Option(0.0, "--price-out", help="USD per million completion tokens."),
    template: str = typer.Option("kernel_v1", "--template", help="Prompt template under uhop/ai/templates/."),
    no_transfer: bool = typer.Option(
        False, "--no-transfer", help="Leave related problems' kernels out of the prompt."
    ),
    baseline: str = typer.Option(
        "tune", "--baseline", help="tune: tune first if the store has no entry; store: as is."
    ),
    min_gain: float = typer.Option(0.03, "--min-gain", help="Smallest relative gain that may promote."),
    no_promote: bool = typer.Option(False, "--no-promote", help="Record attempts only."),
    check_timeout: float = typer.Option(
        30.0, "--check-timeout", help="Sandbox wall-clock limit per request, seconds."
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write the run (every attempt) as JSON to this file."
    ),
) -> None:
    """Ask a model for faster OP kernels at SHAPE; check each in the sandbox; promote the faster ones."""
    from uhop.ai import Budget, FactoryOptions, ProviderConfig, generate
    from uhop.ops import REGISTRY

    if op not in REGISTRY:
        raise _usage(f"OP must be one of {', '.join(sorted(REGISTRY))}, got {op!r}")
    params = {}
    for p in param or []:
        if "=" not in p:
            raise _usage(f"--param must be NAME=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        params[k] = v
    from uhop.errors import InputError
    from uhop.problem import require_device

    try:
        require_device(device, "--device")
    except InputError as exc:
        raise _usage(str(exc)) from None
    if cost_budget is not None and not (price_in or price_out):
        raise _usage("--cost-budget needs --price-in/--price-out (USD per million tokens)")
    try:
        cfg = ProviderConfig.resolve(base_url, model, timeout_s=timeout, max_retries=retries, max_tokens=max_tokens,
                                     temperature=temperature)  # fmt: skip
        opts = FactoryOptions(template=template, transfer=not no_transfer, min_gain=min_gain, baseline=baseline,
                              check_wall_s=check_timeout, promote=not no_promote)  # fmt: skip
    except ValueError as exc:
        raise _usage(str(exc)) from None
    budget = Budget(token_budget, cost_budget, price_in, price_out)

    def show(a) -> None:  # noqa: ANN001
        t = _us(a.median_s)
        sp = f"  {a.speedup_previous:.2f}x" if a.speedup_previous else ""
        why = f"  {a.reason[:100]}" if a.reason else ""
        typer.echo(f"round {a.round} variant {a.variant}: {a.category}{'  PROMOTED' if a.promoted else ''}  {t}{sp}"
                   f"  ({a.tokens_in}+{a.tokens_out} tokens, {a.gen_s:.1f}+{a.check_s:.1f} s){why}")  # fmt: skip

    try:
        res = generate(op, shape, dtype=dtype, params=params, device=device, rounds=rounds, variants=variants,
                       provider=cfg, budget=budget, options=opts, progress=show)  # fmt: skip
    except ImportError as exc:
        raise _usage(str(exc)) from None
    except ValueError as exc:
        raise _usage(str(exc)) from None
    typer.echo(f"{res.key}: baseline {_us(res.baseline_s)}, best now {_us(res.best_s)}; {len(res.promotions)} promoted "
               f"of {len(res.attempts)}; {res.tokens_in}+{res.tokens_out} tokens (${res.cost_usd:.4f}), {res.wall_s:.1f} s")  # fmt: skip
    if res.stopped:
        typer.echo(f"stopped early: {res.stopped}")
    if json_out is not None:
        json_out.write_text(json.dumps(res.to_json(), indent=1, default=str))


@app.command("report")
def report_cmd(
    since: str | None = typer.Option(None, "--since", help="Only attempts of the last 7d, 12h, 30m ..."),
    op: str | None = typer.Option(None, "--op", help="Only this op."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures (and cost-model rows) as JSON."),
) -> None:
    """Variants generated, validated %, rejections by category, promotions, speedups, cost per promotion."""
    from uhop.ai.report import parse_since, render, report

    try:
        since_s = parse_since(since)
    except ValueError as exc:
        raise _usage(f"--{exc}") from None
    doc = report(since_s=since_s, op=op)
    typer.echo(json.dumps(doc, indent=1, default=str) if as_json else render(doc))


@app.command("quarantine")
def quarantine_cmd(
    key: str = typer.Argument(..., help="Problem key of a promoted kernel (`uhop ai report` lists them)."),
    reason: str = typer.Option("quarantined by hand", "--reason"),
) -> None:
    """Take the newest AI-promoted kernel for KEY out of service and restore the previous best."""
    from uhop.ai import quarantine

    try:
        out = quarantine(key, reason)
    except LookupError as exc:
        typer.echo(str(exc).strip("'\""))
        raise typer.Exit(1) from None
    restored = out["restored"]
    typer.echo(f"quarantined {out['quarantined'][:16]} -> {out['file']}")
    typer.echo(
        f"restored: {restored}" if restored else "restored: nothing (no entry before it; the next call tunes)"
    )
