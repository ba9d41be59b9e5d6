"""The refinement loop: ``rounds`` of generate -> sandboxed check -> validation -> timing ->
feedback, ``variants`` requests per round, every attempt recorded, promotion only when faster.

Data flows one way: problem -> current best (store) -> prompt (template + op + manifest + best +
history + related problems) -> provider -> code block -> kernel file on disk -> sandbox verdict
-> attempt row -> (faster beyond the spread) promotion into the store.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from uhop import metrics
from uhop.ai.attempts import attempt_store
from uhop.ai.promote import Verdict, current_best, promote, sandbox_check, should_promote
from uhop.ai.prompt import DEFAULT_TEMPLATE, Best, build_messages, extract_code, template
from uhop.ai.provider import Budget, Provider, ProviderConfig, ProviderError
from uhop.problem import Problem


@dataclass(frozen=True)
class FactoryOptions:
    """How one run works. ``baseline``: ``tune`` (tune the problem first when the store has no
    measured entry) or ``store`` (compare with what the store holds, nothing when empty);
    ``min_gain``: the smallest relative gain that may promote, even with a tiny spread;
    ``check_wall_s``: the sandbox's wall-clock limit per request, seconds."""

    template: str = DEFAULT_TEMPLATE
    transfer: bool = True
    min_gain: float = 0.03
    baseline: str = "tune"
    check_wall_s: float = 30.0
    promote: bool = True

    def __post_init__(self) -> None:
        if self.baseline not in ("tune", "store"):
            raise ValueError(f"baseline must be 'tune' or 'store', got {self.baseline!r}")
        if not 0 <= self.min_gain < 1:
            raise ValueError(f"min_gain must be in [0, 1), got {self.min_gain}")
        if not self.check_wall_s > 0:
            raise ValueError(f"check_wall_s must be > 0 seconds, got {self.check_wall_s}")


@dataclass(frozen=True)
class Attempt:
    """One generated variant and its verdict. Seconds throughout; speedups are ratios of
    per-call times (``baseline_s / median_s``), ``None`` when not measured."""

    id: int
    round: int
    variant: int
    category: str
    reason: str
    median_s: float | None
    max_err: float | None
    speedup_baseline: float | None
    speedup_previous: float | None
    promoted: bool
    tokens_in: int
    tokens_out: int
    gen_s: float
    check_s: float
    sha256: str
    path: str
    transfer: bool


@dataclass(frozen=True)
class GenerateResult:
    run_id: str
    key: str
    problem: dict[str, Any]
    model: str
    template: str
    template_sha256: str
    attempts: list[Attempt]
    promotions: list[dict[str, Any]]
    baseline_s: float | None
    best_s: float | None
    stopped: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["attempts"] = [asdict(a) for a in self.attempts]
        return d


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _baseline(store: Any, problem: Problem, key: str, options: FactoryOptions) -> Best | None:
    _, best = current_best(store, key)
    if best is None and options.baseline == "tune":
        from uhop.errors import NoCandidateError
        from uhop.tune.tuner import tune

        try:
            tune(problem=problem, store=store)
        except NoCandidateError:
            return None
        _, best = current_best(store, key)
    return best


def _request_and_check(
    client: Provider,
    messages: list[dict[str, str]],
    budget: Budget,
    row: dict[str, Any],
    path: Path,
    problem: Problem,
    check_wall_s: float,
) -> tuple[Verdict | None, str, str]:
    """One request, its code block written to ``path`` and checked in the sandbox. Fills
    ``row`` (tokens, seconds, category, reason, time, max error, code) and returns the verdict
    (``None`` without code), the code and the file path ("" without code)."""
    cfg = client.config
    try:
        reply = client.complete(messages, max_tokens=budget.completion_cap(cfg.max_tokens),
                                seed=1000 * row["round"] + row["variant"])  # fmt: skip
    except ProviderError as exc:
        budget.charge(exc.tokens_in, exc.tokens_out)
        row.update(category=exc.category, reason=exc.reason, tokens_in=exc.tokens_in, tokens_out=exc.tokens_out,
                   gen_s=exc.wall_s, check_s=0.0)  # fmt: skip
        return None, "", ""
    budget.charge(reply.tokens_in, reply.tokens_out)
    row.update(tokens_in=reply.tokens_in, tokens_out=reply.tokens_out, gen_s=reply.wall_s)
    code, why_not = extract_code(reply.text)
    if code is None:
        row.update(category="no-code", reason=why_not, check_s=0.0)
        return None, "", ""
    path.write_text(code)
    v = sandbox_check(path, problem, wall_s=check_wall_s)
    row.update(category=v.category, reason=v.reason, check_s=v.check_s, sha256=v.sha256, max_err=v.max_err,
               median_s=v.median_s if v.ok else None, code=code)  # fmt: skip
    return v, code, str(path)


def generate(
    op: str,
    shape: str | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    dtype: str = "float32",
    params: Mapping[str, Any] | None = None,
    device: str = "cpu",
    rounds: int = 2,
    variants: int = 2,
    provider: ProviderConfig | None = None,
    budget: Budget | None = None,
    options: FactoryOptions | None = None,
    store: Any = None,
    progress: Callable[[Attempt], None] | None = None,
    **provider_flags: Any,
) -> GenerateResult:
    """Generate, check, time and (when faster) promote kernels for one problem.

    ``shape`` is the op's ``--shape`` text (``uhop ops``) or ``dims`` a dict. The provider is
    ``provider`` or built from ``provider_flags`` (``base_url``, ``model``, ``api_key``,
    ``timeout_s``, ``max_retries``, ``max_tokens``, ``temperature``...) and ``UHOP_AI_*``.
    Returns every attempt (also recorded in the store's ``ai_attempts`` table) and the
    promotions made; provider failures and rejected kernels are attempts, not exceptions.
    """
    from uhop.ops import get as get_op
    from uhop.perf.telemetry import hw_hash
    from uhop.problem import hardware_fingerprint
    from uhop.store import open_store

    if rounds < 1 or variants < 1:
        raise ValueError(f"rounds and variants must be >= 1, got rounds={rounds}, variants={variants}")
    if (shape is None) == (dims is None):
        raise ValueError("give exactly one of shape (e.g. '256x256x256') or dims")
    from uhop.problem import require_device

    require_device(device)  # before any request: a run for a device this machine lacks costs tokens for nothing
    spec = get_op(op)
    problem = Problem.make(op, dict(dims) if dims is not None else spec.parse_shape(shape), dtype, dict(params or {}),
                           device=device, array="numpy" if device == "cpu" else "torch")  # fmt: skip
    options = options or FactoryOptions()
    cfg = provider or ProviderConfig.resolve(**provider_flags)
    client = Provider(cfg)
    budget = budget or Budget()
    tpl = template(options.template)
    store = store or open_store()
    attempts_db = attempt_store(store)
    from uhop.config import settings

    key = problem.key(settings().shape_buckets)
    fp = hardware_fingerprint(problem.device)
    hwh = hw_hash(fp)
    run_id = uuid.uuid4().hex[:12]
    t_start = time.monotonic()
    out_dir = settings().home / "ai" / "attempts" / run_id
    out_dir.mkdir(parents=True, exist_ok=True)

    best = _baseline(store, problem, key, options)
    baseline_s = best.median_s if best is not None else None
    history = [dict(r) for r in attempts_db.attempts(key=key, with_code=True)[-12:]]
    related, notes = attempts_db.related(op, key, hwh) if options.transfer else ([], [])
    transfer = bool(related or notes)
    shape_class = "x".join(str(v) for _, v in problem.shape_class())
    endpoint = urlsplit(cfg.base_url).hostname or cfg.base_url
    endpoint += f":{urlsplit(cfg.base_url).port}" if urlsplit(cfg.base_url).port else ""
    results: list[Attempt] = []
    promotions: list[dict[str, Any]] = []
    stopped = ""
    for rnd in range(rounds):
        messages = build_messages(tpl, problem, best, history, related, notes)
        for var in range(variants):
            why = budget.exhausted()
            if why:
                stopped = why
                break
            row: dict[str, Any] = {
                "run_id": run_id, "key": key, "op": op, "problem": problem.to_json(), "shape_class": shape_class,
                "dtype": dtype, "device": problem.device, "fingerprint": fp, "hw_hash": hwh, "model": cfg.model,
                "endpoint": endpoint, "template": tpl.name, "template_sha256": tpl.sha256, "round": rnd, "variant": var,
                "baseline_s": baseline_s, "previous_best_s": best.median_s if best else None, "transfer": transfer,
            }  # fmt: skip
            v, code, path = _request_and_check(client, messages, budget, row, out_dir / f"r{rnd}v{var}.py", problem,
                                               options.check_wall_s)  # fmt: skip
            ok = v is not None and v.ok
            if ok:
                row["speedup_baseline"] = baseline_s / v.median_s if baseline_s else None
                row["speedup_previous"] = best.median_s / v.median_s if best else None
            go, why_promote = (
                should_promote(v, best, options.min_gain) if ok and options.promote else (False, "")
            )
            if ok:
                row["reason"] = why_promote if options.promote else "promotion off (--no-promote)"
            aid = attempts_db.add_attempt(row)
            metrics.ai_attempt(op, row["category"])
            promoted = False
            if go:
                _, pid = promote(store, attempts_db, problem, key, Path(path), v)
                if pid is not None:  # None: a concurrent writer stored a faster kernel meanwhile
                    promoted = True
                    metrics.ai_promotion(op)
                    attempts_db.mark_promoted(aid)
                    promotions.append({"id": pid, "attempt": aid, "sha256": v.sha256, "median_s": v.median_s,
                                       "previous_s": best.median_s if best else None, "why": why_promote})  # fmt: skip
                    best = Best(f"user/{v.sha256[:16]} (generated, round {rnd})", v.median_s, v.spread, code)
            a = Attempt(aid, rnd, var, row["category"], row.get("reason", ""), _finite(row.get("median_s")),
                        _finite(row.get("max_err")), row.get("speedup_baseline"), row.get("speedup_previous"), promoted,
                        int(row.get("tokens_in") or 0), int(row.get("tokens_out") or 0), float(row.get("gen_s") or 0.0),
                        float(row.get("check_s") or 0.0), row.get("sha256", ""), path, transfer)  # fmt: skip
            results.append(a)
            history.append({**row, "code": code if ok else ""})
            if progress:
                progress(a)
            if row["category"] == "client-error":  # a bad key or model name: every request would fail alike
                stopped = f"provider refused the request: {row['reason']}"
                break
            if row["category"] == "connection":  # unreachable through every retry: so would the next request be
                stopped = f"provider unreachable at {endpoint}: {row['reason']}"
                break
        if stopped:
            break
    return GenerateResult(
        run_id, key, problem.to_json(), cfg.model, tpl.name, tpl.sha256, results, promotions, baseline_s,
        best.median_s if best else None, stopped, budget.tokens_in, budget.tokens_out, budget.cost_usd,
        time.monotonic() - t_start, {"transfer": transfer, "endpoint": endpoint},
    )  # fmt: skip


__all__ = ["Attempt", "FactoryOptions", "GenerateResult", "Verdict", "generate"]
