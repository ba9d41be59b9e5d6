"""The strategy contract and the search loop every strategy shares.

A strategy proposes configs (``ask``) and learns from their objective values (``tell``); it never
measures anything itself. :func:`run_search` drives it: it asks for a batch (one per free
worker), skips configs already measured (their values are told again at no cost), hands new ones
to an ``evaluate`` callable (inline, a process pool or Ray: it yields results as they complete),
and enforces the budget (evaluations and/or seconds) and early stopping. Strategies see configs
and flat vectors (``space.encode``), never kernels.

Objective values are tuples, lower is better, ``inf`` for a failed candidate.
"""

from __future__ import annotations

import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from uhop.space import Config, SearchSpace

Values = tuple[float, ...]
#: evaluate(configs) -> iterable of (config, objective values, extra data), in completion order
Evaluate = Callable[[list[Config]], Iterable[tuple[Config, Values, Any]]]

OBJECTIVES = ("latency", "energy", "memory")


class Strategy(ABC):
    """Propose configs of ``space``; learn from their values. One module per strategy.

    ``objectives`` names what each value tuple holds; single-objective strategies minimise the
    weighted sum of the values, each divided by the first finite value seen (so units cancel).
    Strategies that optimise several objectives natively set ``multi_objective = True``."""

    name: ClassVar[str]
    multi_objective: ClassVar[bool] = False

    def __init__(
        self,
        space: SearchSpace,
        *,
        objectives: Sequence[str] = ("latency",),
        weights: Sequence[float] | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        if options:
            raise TypeError(f"strategy {self.name!r} got unknown options: {', '.join(sorted(options))}")
        self.space = space
        self.objectives = tuple(objectives)
        if weights is None:
            weights = [1.0 / len(self.objectives)] * len(self.objectives)
        if len(weights) != len(self.objectives):
            raise ValueError(f"weights: {len(weights)} given for {len(self.objectives)} objectives {self.objectives}")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.seed = seed
        self.rng = random.Random(seed)
        self.known: dict[str, Values] = {}
        self._ref: list[float | None] = [None] * len(self.objectives)

    @abstractmethod
    def ask(self, n: int) -> list[Config]:
        """Up to ``n`` valid configs not yet told; ``[]`` when the strategy has nothing left."""

    def tell(self, cfg: Config, values: Values) -> None:
        """Record the values of ``cfg`` (``inf`` entries: the candidate failed)."""
        for i, v in enumerate(values):
            if self._ref[i] is None and math.isfinite(v) and v > 0:
                self._ref[i] = v
        self.known[self.space.config_hash(cfg)] = tuple(values)

    def scalar(self, values: Values) -> float:
        if len(values) == 1:
            return values[0]
        if not all(math.isfinite(v) for v in values):
            return math.inf
        return sum(w * v / (r or 1.0) for w, v, r in zip(self.weights, values, self._ref, strict=True))

    def is_known(self, cfg: Config) -> bool:
        return self.space.config_hash(cfg) in self.known

    def unseen_sample(self, avoid: set[str] = frozenset(), tries: int = 200) -> Config | None:  # type: ignore[assignment]
        """A random valid config not told and not in ``avoid`` (hashes), or None if none is found."""
        for _ in range(tries):
            cfg = self.space.sample(self.rng)
            h = self.space.config_hash(cfg)
            if h not in self.known and h not in avoid:
                return cfg
        size = self.space.size()
        if size is not None and size <= 200_000:
            rest = [c for c in self.space.configs() if (h := self.space.config_hash(c)) not in self.known and h not in avoid]
            return self.rng.choice(rest) if rest else None
        return None


@dataclass(frozen=True)
class SearchBudget:
    """When to stop: ``max_evals`` new measurements, ``max_seconds`` of wall time, or ``patience``
    evaluations in a row without improving the best by more than ``min_improvement`` (relative)."""

    max_evals: int | None = None
    max_seconds: float | None = None
    patience: int | None = None
    min_improvement: float = 0.0

    def __post_init__(self) -> None:
        if self.max_evals is not None and self.max_evals < 1:
            raise ValueError(f"max_evals must be >= 1, got {self.max_evals}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")


@dataclass
class Trial:
    config: Config
    values: Values
    extra: Any = None


@dataclass
class SearchResult:
    trials: list[Trial] = field(default_factory=list)
    best_config: Config | None = None
    best_values: Values | None = None
    evaluations: int = 0
    stopped: str = ""
    pareto: list[Trial] = field(default_factory=list)


def pareto_front(points: Sequence[Values]) -> list[int]:
    """Indices of the non-dominated points (all objectives minimised; non-finite points excluded)."""
    ok = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    front = []
    for i in ok:
        p = points[i]
        dominated = any(
            all(a <= b for a, b in zip(points[j], p, strict=True)) and any(a < b for a, b in zip(points[j], p, strict=True))
            for j in ok
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def choose(trials: Sequence[Trial], weights: Sequence[float] | None = None) -> Trial | None:
    """The trial with the lowest weighted sum of objectives, each normalised by its best value."""
    ok = [t for t in trials if t.values and all(math.isfinite(v) for v in t.values)]
    if not ok:
        return None
    n = len(ok[0].values)
    w = list(weights) if weights is not None else [1.0 / n] * n
    best = [min(t.values[i] for t in ok) or 1.0 for i in range(n)]
    return min(ok, key=lambda t: sum(wi * v / b for wi, v, b in zip(w, t.values, best, strict=True)))


def run_search(
    space: SearchSpace,
    strategy: Strategy,
    evaluate: Evaluate,
    budget: SearchBudget,
    *,
    batch: int = 1,
    prior: Mapping[str, tuple[Config, Values, Any]] | None = None,
    on_result: Callable[[Trial, SearchResult], None] | None = None,
    max_stall: int = 50,
) -> SearchResult:
    """Drive ``strategy`` until the budget is spent, it runs out of configs, or patience runs out.

    ``prior`` (config hash -> (config, values, extra)) holds results of an interrupted run: they
    count towards the budget and are told to the strategy when it proposes them (a seeded strategy
    retraces its steps, so a resumed run continues where it stopped)."""
    res = SearchResult()
    cache: dict[str, tuple[Config, Values, Any]] = dict(prior or {})
    start = time.monotonic()
    best_scalar, since_best, stall = math.inf, 0, 0
    used = len(cache)

    def record(cfg: Config, values: Values, extra: Any) -> None:
        nonlocal best_scalar, since_best
        strategy.tell(cfg, values)
        t = Trial(cfg, values, extra)
        res.trials.append(t)
        s = strategy.scalar(values)
        if s < best_scalar * (1 - budget.min_improvement):
            since_best = 0
        else:
            since_best += 1
        if s < best_scalar:
            best_scalar, res.best_config, res.best_values = s, cfg, values
        if on_result:
            on_result(t, res)

    while True:
        if budget.max_evals is not None and used >= budget.max_evals:
            res.stopped = "evaluation budget spent"
            break
        if budget.max_seconds is not None and time.monotonic() - start > budget.max_seconds:
            res.stopped = "time budget spent"
            break
        if budget.patience is not None and since_best >= budget.patience:
            res.stopped = f"no improvement in {budget.patience} evaluations"
            break
        room = batch if budget.max_evals is None else min(batch, budget.max_evals - used)
        cfgs = strategy.ask(room)
        if not cfgs:
            res.stopped = "search space exhausted"
            break
        fresh, hashes = [], set()
        for cfg in cfgs:
            cfg = space.canonical(cfg)
            h = space.config_hash(cfg)
            if h in cache:
                if h in strategy.known:
                    strategy.tell(cfg, cache[h][1])
                else:  # a resumed result: re-told once, counted in the result as before
                    record(*cache[h])
            elif h not in hashes:
                hashes.add(h)
                fresh.append(cfg)
        if not fresh:
            stall += 1
            if stall >= max_stall:
                res.stopped = "strategy keeps proposing measured configs"
                break
            continue
        stall = 0
        for cfg, values, extra in evaluate(fresh):
            values = tuple(float(v) for v in values)
            cache[space.config_hash(cfg)] = (cfg, values, extra)
            used += 1
            record(cfg, values, extra)
    res.evaluations = used
    # Results of an interrupted run that the resumed strategy never re-proposed still count.
    told = {space.config_hash(t.config) for t in res.trials}
    for h, (cfg, values, extra) in cache.items():
        if h not in told:
            res.trials.append(Trial(cfg, values, extra))
    best = choose(res.trials, strategy.weights)
    if best is not None:
        res.best_config, res.best_values = best.config, best.values
    if len(strategy.objectives) > 1:
        front = pareto_front([t.values for t in res.trials])
        res.pareto = [res.trials[i] for i in front]
    return res
