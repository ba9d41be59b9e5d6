"""Evolutionary search through Optuna's samplers (ask/tell), single objective (weighted sum).

``sampler="ga"`` (default): Optuna's genetic sampler (NSGA-II selection, uniform crossover,
mutation) -- with one objective it is a plain elitist GA. ``sampler="cmaes"``: CMA-ES with margin
(for integer and power-of-two parameters; categoricals are sampled independently).
"""

from __future__ import annotations

from typing import Any

import optuna

from uhop.tune.strategies._optuna import OptunaStrategy


class Evolution(OptunaStrategy):
    name = "evolution"
    sampler_options = ("sampler", "population_size")

    def sampler(self, sampler: str = "ga", population_size: int = 16, **_: Any) -> optuna.samplers.BaseSampler:
        if sampler == "ga":
            return optuna.samplers.NSGAIISampler(population_size=population_size, seed=self.seed)
        if sampler == "cmaes":
            try:
                import cmaes  # noqa: F401 - Optuna's CMA-ES sampler imports it lazily, too late for a clear error
            except ImportError:
                raise ImportError("evolution with sampler='cmaes' needs the cmaes package (pip install cmaes)") from None
            return optuna.samplers.CmaEsSampler(
                seed=self.seed, with_margin=True, popsize=population_size, warn_independent_sampling=False,
                n_startup_trials=population_size,
            )  # fmt: skip
        raise ValueError(f"sampler must be 'ga' or 'cmaes', got {sampler!r}")
