"""Ray executor against a real local Ray head (127.0.0.1, its own temp dir, stopped by PID):
jobs run on 2 workers, one worker is killed mid-job, every job still completes exactly once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'uhop[distributed]'")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _procs_under(root: int) -> list[int]:
    """PIDs of every live descendant of ``root`` (from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def ray_head(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # the driver stays on loopback too
    tmp = tempfile.mkdtemp(prefix="uhray")  # short: Ray's socket paths must stay under 107 bytes
    port = _free_port()
    # Keep every Ray address on loopback: without this Ray swaps 127.0.0.1 for the interface address.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # fmt: skip
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    # The executor connects with ray.init(address=HOST:PORT) (the GCS, not ray://), so the Ray Client
    # server is not needed: ask for its port only where ray[client] (grpcio) is installed; without
    # it `ray start --ray-client-server-port` refuses to start (the head then starts no client server).
    try:
        from ray._private.utils import get_ray_client_dependency_error

        has_client = get_ray_client_dependency_error() is None
    except ImportError:  # a Ray that moved the helper: assume the plain install
        has_client = False
    client_port = [f"--ray-client-server-port={_free_port()}"] if has_client else []
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--num-gpus=0", f"--temp-dir={tmp}", "--include-dashboard=false", "--disable-usage-stats",
         *client_port, f"--dashboard-port={_free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if head.poll() is not None:
                pytest.fail(f"ray head exited: {head.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        yield f"127.0.0.1:{port}", head.pid
    finally:
        if ray.is_initialized():
            ray.shutdown()
        procs = _procs_under(head.pid)
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        for pid in procs:  # anything it left behind, by PID (never `ray stop`: it kills by name)
            if _cmdline(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


def test_killed_worker_job_is_retried_and_every_job_completes_once(ray_head, tmp_path):
    from uhop import config
    from uhop.problem import Problem
    from uhop.tune.executors import make_executor
    from uhop.tune.jobs import TuningJob, open_queue
    from uhop.tune.search import worker_settings

    address, head_pid = ray_head
    q = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    run = q.create_run({"test": "ray"})
    jobs = []
    for rows in (48, 64, 80):
        prob = Problem.make("softmax", {"R": rows, "N": 256}, "float32").to_json()
        for block in (1, 4, 16, 0):
            jobs.append(TuningJob("softmax", prob, "numpy", {"template": "blocked" if block else "eager",
                                                             "config": {"block": block}}, run_id=run))  # fmt: skip
    ids = q.submit(jobs)
    with config.override(bench_min_s=0.4, bench_repeat=3):  # jobs long enough to be killed mid-flight
        settings = worker_settings()
    ex = make_executor("ray", q, run, settings=settings, address=address, workers=2)
    seen, killed = [], None
    try:
        assert ex.slots == 2
        for job in ex.run(ids):
            seen.append(job.id)
            if killed is None:
                victims = [p for p in _procs_under(head_pid) if "ray::uhop_tune_job" in _cmdline(p)]
                if victims:
                    killed = victims[0]
                    os.kill(killed, signal.SIGKILL)
    finally:
        ex.close()
    assert killed is not None, "no worker was caught mid-job"
    assert sorted(seen) == sorted(ids), "every job reported exactly once"
    final = q.jobs(run_id=run)
    assert all(j.status == "done" and j.result["measurement"]["status"] == "ok" for j in final)
    assert ex.retried >= 1 and sum(j.retries for j in final) == ex.retried
    assert {j.attempts for j in final} <= {1, 2}
    workers = {j.result["worker"] for j in final}
    assert len(workers) >= 2, "jobs ran on more than one worker"

    # The same cluster through the tuner: a search run whose jobs are Ray tasks.
    from uhop.tune.tuner import tune

    with config.override(bench_min_s=0.01, bench_repeat=3):
        res = tune("softmax", {"R": 64, "N": 128}, strategy="random", max_evals=4, executor="ray", address=address,
                   workers=2, backends=("numpy",), queue_url=f"sqlite:///{tmp_path / 'q.db'}")  # fmt: skip
    assert res.best is not None and res.best.ok and len(res.measurements) == 4
    assert q.run(res.run_id)["status"] == "done"
