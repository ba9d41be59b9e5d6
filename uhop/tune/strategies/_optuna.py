"""Shared ask/tell adapter onto Optuna samplers (Optuna is optional: ``pip install 'uhop[tune]'``).

Each parameter fragment maps to an Optuna distribution: ``Int`` -> IntDistribution(step),
``Pow2`` -> IntDistribution over log2 (so the sampler moves in x2 steps), ``Categorical`` ->
CategoricalDistribution (over indices when a choice is not a plain scalar). Optuna proposals that
violate a constraint are told as failed and re-asked; configs already measured are told their
stored values without a new measurement; when the sampler has converged and keeps re-proposing
known configs, a random unseen config is injected (added to the study as a completed trial).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from uhop.space import Categorical, Config, Int, Param, Pow2, SearchSpace
from uhop.tune.strategies.base import Strategy, Values

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def distribution(p: Param) -> BaseDistribution:
    if isinstance(p, Pow2):
        lo, hi = p.bounds()
        return IntDistribution(int(lo), int(hi))
    if isinstance(p, Int):
        return IntDistribution(p.low, p.values()[-1], step=p.step)
    if isinstance(p, Categorical) and all(_plain(c) for c in p.choices):
        return CategoricalDistribution(p.choices)
    return CategoricalDistribution(tuple(range(len(p.values()))))


def to_config(space: SearchSpace, params: dict[str, Any]) -> Config:
    cfg = {}
    for p in space.params:
        x = params[p.name]
        if isinstance(p, Pow2):
            cfg[p.name] = 1 << int(x)
        elif isinstance(p, Int) or (isinstance(p, Categorical) and all(_plain(c) for c in p.choices)):
            cfg[p.name] = x
        else:
            cfg[p.name] = p.values()[int(x)]
    return space.canonical(cfg)


def to_params(space: SearchSpace, cfg: Config) -> dict[str, Any]:
    out = {}
    for p in space.params:
        v = cfg[p.name]
        if isinstance(p, Pow2):
            out[p.name] = int(v).bit_length() - 1
        elif isinstance(p, Int) or (isinstance(p, Categorical) and all(_plain(c) for c in p.choices)):
            out[p.name] = v
        else:
            out[p.name] = p.index(v)
    return out


class OptunaStrategy(Strategy):
    """A :class:`Strategy` whose proposals come from an Optuna sampler through ask/tell."""

    def __init__(self, space: SearchSpace, **kw: Any) -> None:
        sampler_options = {k: kw.pop(k) for k in list(kw) if k in self.sampler_options}
        super().__init__(space, **kw)
        self.dists = {p.name: distribution(p) for p in space.params}
        n = len(self.objectives) if self.multi_objective else 1
        self.study = optuna.create_study(sampler=self.sampler(**sampler_options), directions=["minimize"] * n)
        self.pending: dict[str, list[optuna.trial.Trial]] = {}

    #: option names passed on to :meth:`sampler`
    sampler_options: tuple[str, ...] = ()

    def sampler(self, **options: Any) -> optuna.samplers.BaseSampler:  # pragma: no cover - abstract
        raise NotImplementedError

    def _objective(self, values: Values) -> list[float] | None:
        if not all(math.isfinite(v) for v in values):
            return None
        return list(values) if self.multi_objective else [self.scalar(values)]

    def ask(self, n: int) -> list[Config]:
        out: list[Config] = []
        taken: set[str] = set()
        misses = 0
        while len(out) < n and misses < 20 * max(n, 1):
            trial = self.study.ask(self.dists)
            cfg = to_config(self.space, trial.params)
            h = self.space.config_hash(cfg)
            if not self.space.is_valid(cfg):
                self.study.tell(trial, state=TrialState.FAIL)
                misses += 1
            elif h in self.known:
                vals = self._objective(self.known[h])
                self.study.tell(trial, vals, state=None if vals else TrialState.FAIL)
                misses += 1
            elif h in self.pending:  # already out for measurement: answer this trial when it lands
                self.pending[h].append(trial)
                misses += 1
            else:
                self.pending[h] = [trial]
                taken.add(h)
                out.append(cfg)
        while len(out) < n:  # the sampler has converged on known configs: explore
            cfg = self.unseen_sample(taken | set(self.pending))
            if cfg is None:
                break
            h = self.space.config_hash(cfg)
            self.pending[h] = []
            taken.add(h)
            out.append(cfg)
        return out

    def tell(self, cfg: Config, values: Values) -> None:
        super().tell(cfg, values)
        h = self.space.config_hash(cfg)
        trials = self.pending.pop(h, None)
        vals = self._objective(tuple(values))
        if trials:
            for t in trials:
                self.study.tell(t, vals, state=None if vals else TrialState.FAIL)
        elif vals is not None:  # injected or re-told config: let the sampler learn from it too
            self.study.add_trial(optuna.trial.create_trial(
                params=to_params(self.space, self.space.canonical(cfg)), distributions=self.dists, values=vals))  # fmt: skip
