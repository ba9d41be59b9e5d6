"""Search strategies, one module each, registered by name and imported lazily.

Adding a strategy is one new module with a :class:`~uhop.tune.strategies.base.Strategy` subclass
and one line in :data:`REGISTRY`; ``tests/unit/test_strategies.py`` loops over the registry, so
the new strategy is tested automatically. A strategy whose optional dependency (Optuna) is
missing raises :class:`StrategyUnavailable` naming the package to install.
"""

from __future__ import annotations

import importlib
from typing import Any

from uhop.space import SearchSpace
from uhop.tune.strategies.base import (
    OBJECTIVES,
    SearchBudget,
    SearchResult,
    Strategy,
    Trial,
    choose,
    pareto_front,
    run_search,
)

REGISTRY: dict[str, str] = {
    "exhaustive": "uhop.tune.strategies.exhaustive:Exhaustive",
    "random": "uhop.tune.strategies.random_search:RandomSearch",
    "evolution": "uhop.tune.strategies.evolution:Evolution",
    "nsga2": "uhop.tune.strategies.nsga2:NSGA2",
    "surrogate": "uhop.tune.strategies.surrogate:Surrogate",
}


class StrategyUnavailable(ImportError):
    """A strategy's optional dependency is not installed."""


def get(name: str) -> type[Strategy]:
    target = REGISTRY.get(name)
    if target is None:
        raise ValueError(f"strategy must be one of {', '.join(REGISTRY)}, got {name!r}")
    mod, cls = target.split(":")
    try:
        return getattr(importlib.import_module(mod), cls)
    except ImportError as exc:
        raise StrategyUnavailable(f"strategy {name!r} needs {exc.name or exc} (pip install 'uhop[tune]')") from exc


def make(name: str, space: SearchSpace, **options: Any) -> Strategy:
    """An instance of strategy ``name`` over ``space`` (options: objectives, weights, seed, ...)."""
    return get(name)(space, **options)


__all__ = [
    "OBJECTIVES", "REGISTRY", "SearchBudget", "SearchResult", "Strategy", "StrategyUnavailable", "Trial",
    "choose", "get", "make", "pareto_front", "run_search",
]  # fmt: skip
