"""Executors: who runs the queued jobs of a tuning run.

``inline`` (this process, one at a time), ``local`` (default: a pool of spawned worker processes on
this machine, one per GPU for GPU problems) and ``ray`` (tasks on a Ray cluster, GPU-pinned).
Every executor goes through the :mod:`~uhop.tune.jobs` queue: results are committed there as they
land, a dead worker's job is retried elsewhere, and a fencing attempt number keeps a job from
completing twice. Registered by name, imported lazily (Ray is optional).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from uhop.tune.jobs import JobQueue, TuningJob

REGISTRY: dict[str, str] = {
    "inline": "uhop.tune.executors.local:InlineExecutor",
    "local": "uhop.tune.executors.local:LocalExecutor",
    "ray": "uhop.tune.executors.ray:RayExecutor",
}


class Executor(ABC):
    """Runs jobs of one run. ``slots`` is how many jobs it runs at once (the strategy's batch)."""

    name: str

    def __init__(self, queue: JobQueue, run_id: str, *, settings: dict[str, Any] | None = None, device: str = "cpu",
                 **options: Any) -> None:  # fmt: skip
        self.queue, self.run_id, self.settings, self.device = queue, run_id, dict(settings or {}), device

    @property
    def slots(self) -> int:
        return 1

    @abstractmethod
    def run(self, job_ids: Sequence[int]) -> Iterator[TuningJob]:
        """Run the given queued jobs; yield each once it is done or failed for good, in completion order."""

    def close(self) -> None:  # noqa: B027 - optional
        """Stop workers (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(name: str, queue: JobQueue, run_id: str, **options: Any) -> Executor:
    target = REGISTRY.get(name)
    if target is None:
        raise ValueError(f"executor must be one of {', '.join(REGISTRY)}, got {name!r}")
    mod, cls = target.split(":")
    try:
        klass = getattr(importlib.import_module(mod), cls)
    except ImportError as exc:
        raise ImportError(f"executor {name!r} needs {exc.name or exc} (pip install 'uhop[distributed]')") from exc
    return klass(queue, run_id, **{k: v for k, v in options.items() if v is not None or k == "address"})


__all__ = ["REGISTRY", "Executor", "make_executor"]
