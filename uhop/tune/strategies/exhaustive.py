"""Exhaustive search: every valid config once, in the space's deterministic order.

A space too large to enumerate (more than ``space.MAX_ENUMERATE`` raw combinations) is refused
when the strategy is made, naming its size and the strategies that sample it instead: measuring
the first N configs of a product order is a biased search, not a small exhaustive one."""

from __future__ import annotations

import itertools
from typing import Any

from uhop.space import MAX_ENUMERATE, Config, SearchSpace
from uhop.tune.strategies.base import Strategy


class SpaceTooLargeError(ValueError):
    """The space has more configs than exhaustive search can enumerate."""


class Exhaustive(Strategy):
    name = "exhaustive"
    multi_objective = True  # it measures everything, so the Pareto front is exact

    def __init__(self, space: SearchSpace, **kw: Any) -> None:
        super().__init__(space, **kw)
        upper = space.upper_size()
        if upper > MAX_ENUMERATE:
            raise SpaceTooLargeError(
                f"exhaustive search cannot enumerate a space of up to {upper:,} configs (limit {MAX_ENUMERATE:,}); "
                "use --strategy random, evolution or surrogate, which sample the whole space within --budget"
            )
        self._it = space.configs()

    def ask(self, n: int) -> list[Config]:
        return list(itertools.islice(self._it, n))
