"""Ray executor: each job a Ray task, GPU-pinned for GPU problems, on any number of nodes and GPUs.

The driver (this process) owns the queue: it claims a job, submits it as a task with
``num_gpus=gpus_per_task`` (Ray then pins the task to its GPU(s) through
``CUDA_VISIBLE_DEVICES``; the task sees them as ``cuda:0...``) and commits the result when the
task returns. Ray's own retries are off (``max_retries=0``): when a worker process or a whole
node dies mid-task, the driver sees ``WorkerCrashedError`` / ``NodeDiedError``, puts the job
back in the queue (one retry more) and submits it again, so Ray places it on any worker still
alive. A job is completed only by the attempt that holds it (fencing), so a job is never
recorded twice, and the queue is the record, so nothing is lost if the driver dies too
(``uhop tune --resume``).

Parallelism (``slots``): GPU problems, the cluster's GPUs / ``gpus_per_task``; CPU problems,
``workers`` if given, else one task per alive node (timing candidates side by side on one CPU
skews them). The cluster can grow while a run is going: slots are re-read every batch.

Workers need UHOP (and the backends' libraries) installed on every node, as for any Ray job;
``runtime_env`` is passed through to ``ray.init``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import ray

from uhop import backends
from uhop.tune.executors import Executor
from uhop.tune.jobs import TERMINAL, JobQueue, TuningJob, worker_name


def uhop_tune_job(spec: dict[str, Any], settings: dict[str, Any], registry: dict[str, str] | None = None) -> dict[str, Any]:
    from uhop import backends, config
    from uhop.tune.executors.local import _pin_device
    from uhop.tune.search import run_job

    for name, target in (registry or {}).items():  # backends registered on the driver exist here too
        if backends.REGISTRY.get(name) != target:
            backends.register(name, target)
    with config.override(**settings):
        return run_job(_pin_device(spec))


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, queue: JobQueue, run_id: str, *, address: str | None = None, workers: int | None = None,
                 gpus_per_task: float = 1.0, cpus_per_task: float = 1.0, lease_s: float = 300.0,
                 runtime_env: dict[str, Any] | None = None, **kw: Any) -> None:  # fmt: skip
        super().__init__(queue, run_id, **kw)
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._owns = False
        if not ray.is_initialized():
            init: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
            if runtime_env:
                init["runtime_env"] = runtime_env
            # address given: connect (close() only disconnects); none: a private local cluster
            ray.init(address=address, **init)
            self._owns = True
        self.gpu = self.device.startswith("cuda")
        self.workers = workers
        self.gpus_per_task, self.cpus_per_task, self.lease_s = gpus_per_task, cpus_per_task, lease_s
        opts: dict[str, Any] = {"max_retries": 0, "num_cpus": cpus_per_task}
        if self.gpu:
            opts["num_gpus"] = gpus_per_task
        self._remote = ray.remote(uhop_tune_job).options(**opts)
        self._me = "ray-driver:" + worker_name()
        self.retried = 0

    @property
    def slots(self) -> int:
        if self.workers is not None:
            return self.workers
        res = ray.cluster_resources()
        if self.gpu:
            return max(1, int(res.get("GPU", 0) / self.gpus_per_task))
        return max(1, sum(1 for n in ray.nodes() if n.get("Alive")))

    def run(self, job_ids: Sequence[int]) -> Iterator[TuningJob]:
        wanted = set(job_ids)
        remaining = set(job_ids)
        inflight: dict[Any, TuningJob] = {}
        last_beat = time.monotonic()
        slots = self.slots
        while remaining:
            while len(inflight) < slots:
                job = self._claim(wanted)
                if job is None:
                    break
                inflight[self._remote.remote(job.to_spec(), self.settings, dict(backends.REGISTRY))] = job
            if inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    job = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.RayError, OSError) as exc:  # worker or node lost: retry elsewhere
                        self.retried += 1
                        self.queue.fail(job.id, job.attempts, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")  # type: ignore[arg-type]
                        continue
                    self.queue.complete(job.id, job.attempts, result, result["measurement"].get("median_s"))  # type: ignore[arg-type]
            else:
                time.sleep(0.05)
            if time.monotonic() - last_beat > self.lease_s / 3:
                for job in inflight.values():
                    self.queue.heartbeat(job.id, job.attempts, self.lease_s)  # type: ignore[arg-type]
                last_beat = time.monotonic()
            for job in self.queue.jobs(ids=sorted(remaining), status=TERMINAL):
                remaining.discard(job.id)  # type: ignore[arg-type]
                yield job

    def _claim(self, wanted: set[int]) -> TuningJob | None:
        # Claim in queue order (priority, id) among this run's jobs of this batch.
        for job in self.queue.jobs(run_id=self.run_id, status="pending"):
            if job.id in wanted:
                got = self.queue.claim(self._me, run_id=self.run_id, lease_s=self.lease_s, job_id=job.id)
                if got is not None:
                    return got
        return None

    def close(self) -> None:
        if self._owns and ray.is_initialized():
            ray.shutdown()  # a connected driver only disconnects; a private cluster is stopped
            self._owns = False
