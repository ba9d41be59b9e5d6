"""Exhaustive search: every valid config once, in the space's deterministic order."""

from __future__ import annotations

import itertools
from typing import Any

from uhop.space import Config, SearchSpace
from uhop.tune.strategies.base import Strategy


class Exhaustive(Strategy):
    name = "exhaustive"
    multi_objective = True  # it measures everything, so the Pareto front is exact

    def __init__(self, space: SearchSpace, **kw: Any) -> None:
        super().__init__(space, **kw)
        self._it = space.configs()

    def ask(self, n: int) -> list[Config]:
        return list(itertools.islice(self._it, n))
