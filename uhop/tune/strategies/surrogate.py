"""Surrogate-guided search: a cost model ranks unseen configs; the best-ranked are measured.

The cost model is a hook: anything with ``update(X, y)`` and ``predict(X) -> scores`` (``X`` rows
are ``space.encode(config)``, ``y`` the scalarised objective, lower is better), passed as
``cost_model=`` -- the learned model of ``uhop.perf`` plugs in here. Without one, a built-in
nearest-neighbour model on log-time is used. Until ``n_init`` configs are measured, or with
probability ``explore``, proposals are random (so a model with no data never starves the search).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from uhop.space import Config, SearchSpace
from uhop.tune.strategies.base import Strategy, Values

#: how many unseen configs the model ranks per proposal round (all of them when the space is smaller)
POOL = 2048


class CostModel(Protocol):
    def update(self, X: Sequence[Sequence[float]], y: Sequence[float]) -> None: ...

    def predict(self, X: Sequence[Sequence[float]]) -> Sequence[float]: ...


class NearestNeighbours:
    """Inverse-distance-weighted mean of log(y) over the ``k`` nearest measured configs (encoded
    vectors scaled to [0, 1] per dimension)."""

    def __init__(self, bounds: Sequence[tuple[float, float]], k: int = 3) -> None:
        self.lo = [b[0] for b in bounds]
        self.span = [(b[1] - b[0]) or 1.0 for b in bounds]
        self.k = k
        self.X: list[list[float]] = []
        self.y: list[float] = []

    def _scale(self, x: Sequence[float]) -> list[float]:
        return [(v - lo) / s for v, lo, s in zip(x, self.lo, self.span, strict=True)]

    def update(self, X: Sequence[Sequence[float]], y: Sequence[float]) -> None:
        self.X = [self._scale(x) for x in X]
        worst = max((v for v in y if math.isfinite(v) and v > 0), default=1.0)
        self.y = [math.log(v if math.isfinite(v) and v > 0 else 10 * worst) for v in y]

    def predict(self, X: Sequence[Sequence[float]]) -> list[float]:
        import numpy as np

        if not self.X:
            return [0.0] * len(X)
        A = np.asarray(self.X)
        y = np.asarray(self.y)
        Q = np.asarray([self._scale(x) for x in X])
        d = np.sqrt(((Q[:, None, :] - A[None, :, :]) ** 2).sum(-1))
        k = min(self.k, len(self.X))
        idx = np.argpartition(d, k - 1, axis=1)[:, :k]
        dk = np.take_along_axis(d, idx, 1)
        w = 1.0 / (dk + 1e-6)
        return list((w * y[idx]).sum(1) / w.sum(1))


class Surrogate(Strategy):
    name = "surrogate"

    def __init__(
        self, space: SearchSpace, *, cost_model: CostModel | None = None, n_init: int = 10, explore: float = 0.1, **kw: Any
    ) -> None:
        super().__init__(space, **kw)
        self.model: CostModel = cost_model if cost_model is not None else NearestNeighbours(space.bounds())
        self.n_init, self.explore = n_init, explore
        self._told: list[tuple[list[float], float]] = []
        self._dirty = False

    def tell(self, cfg: Config, values: Values) -> None:
        super().tell(cfg, values)
        self._told.append((self.space.encode(cfg), self.scalar(values)))
        self._dirty = True

    def _pool(self, avoid: set[str]) -> list[Config]:
        size = self.space.size()
        if size is not None and size <= POOL:
            skip = set(self.known) | avoid
            return [c for c in self.space.configs() if self.space.config_hash(c) not in skip]
        out, seen = [], set(avoid)
        for _ in range(POOL):
            c = self.unseen_sample(seen, tries=20)
            if c is None:
                break
            seen.add(self.space.config_hash(c))
            out.append(c)
        return out

    def ask(self, n: int) -> list[Config]:
        out: list[Config] = []
        taken: set[str] = set()
        if len(self._told) >= self.n_init:
            if self._dirty:
                self.model.update([x for x, _ in self._told], [y for _, y in self._told])
                self._dirty = False
            pool = self._pool(taken)
            if pool:
                scores = self.model.predict([self.space.encode(c) for c in pool])
                ranked = [c for _, c in sorted(zip(scores, pool, strict=True), key=lambda t: t[0])]
                for c in ranked:
                    if len(out) >= n:
                        break
                    if self.rng.random() < self.explore:
                        continue
                    out.append(c)
                    taken.add(self.space.config_hash(c))
        while len(out) < n:
            c = self.unseen_sample(taken)
            if c is None:
                break
            taken.add(self.space.config_hash(c))
            out.append(c)
        return out
