"""Random search: uniform draws without replacement (the baseline every strategy must beat)."""

from __future__ import annotations

from uhop.space import Config
from uhop.tune.strategies.base import Strategy


class RandomSearch(Strategy):
    name = "random"

    def ask(self, n: int) -> list[Config]:
        out: list[Config] = []
        taken: set[str] = set()
        for _ in range(n):
            cfg = self.unseen_sample(taken)
            if cfg is None:
                break
            taken.add(self.space.config_hash(cfg))
            out.append(cfg)
        return out
