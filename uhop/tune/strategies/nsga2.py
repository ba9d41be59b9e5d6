"""Multi-objective search: Optuna's NSGA-II over the objective tuple (latency, energy, memory).

Every objective is minimised; the run's Pareto front is computed from all measured configs
(:func:`~uhop.tune.strategies.base.pareto_front`) and the chosen kernel is the front member with
the lowest weighted sum of normalised objectives.
"""

from __future__ import annotations

from typing import Any

import optuna

from uhop.tune.strategies._optuna import OptunaStrategy


class NSGA2(OptunaStrategy):
    name = "nsga2"
    multi_objective = True
    sampler_options = ("population_size",)

    def sampler(self, population_size: int = 16, **_: Any) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=self.seed)
