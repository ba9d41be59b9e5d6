"""The persistent job queue (SQLite; PostgreSQL: a local test server, or UHOP_TEST_PG_URL) and the local executors."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from uhop.problem import Problem
from uhop.tune.jobs import PostgresJobQueue, SQLiteJobQueue, TuningJob, open_queue

PG_URL = os.environ.get("UHOP_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request, tmp_path):
    if request.param == "sqlite":
        q = SQLiteJobQueue(tmp_path / "jobs.db")
    else:
        url = PG_URL or request.getfixturevalue("pg_url")  # a real local server (tests/conftest.py)
        q = PostgresJobQueue(url)
    yield q
    q.close()


def softmax_job(run_id: str, rows: int, block: int, priority: int = 0, **kw) -> TuningJob:
    prob = Problem.make("softmax", {"R": rows, "N": 16}, "float32").to_json()
    return TuningJob("softmax", prob, "numpy", {"template": "blocked", "config": {"block": block}},
                     priority=priority, run_id=run_id, **kw)  # fmt: skip


def test_priority_order_and_ties_are_deterministic(queue):
    run = queue.create_run({"what": "order"})
    jobs = [softmax_job(run, r, 16, priority=p) for r, p in [(1, 0), (2, 5), (3, 0), (4, 5), (5, 1)]]
    ids = queue.submit(jobs)
    order = []
    while (j := queue.claim("w", run_id=run)) is not None:
        order.append(j.id)
        assert queue.complete(j.id, j.attempts, {"ok": True}, 1e-3)
    assert order == [ids[1], ids[3], ids[4], ids[0], ids[2]]
    assert queue.counts(run)["done"] == 5
    done = queue.get(ids[0])
    assert done.status == "done" and done.started <= done.ended and done.latency_s == 1e-3 and done.result == {"ok": True}


def test_same_config_is_never_queued_twice(queue):
    run = queue.create_run({})
    a = queue.submit([softmax_job(run, 3, 16), softmax_job(run, 3, 64)])
    b = queue.submit([softmax_job(run, 3, 16)])
    assert b == a[:1] and queue.counts(run)["pending"] == 2


def test_fencing_retries_and_give_up(queue):
    run = queue.create_run({})
    (jid,) = queue.submit([softmax_job(run, 7, 16, max_retries=1)])
    first = queue.claim("w1", run_id=run)
    assert first.attempts == 1 and first.status == "running" and first.worker == "w1"
    assert queue.fail(jid, first.attempts, "worker died") == "pending"
    second = queue.claim("w2", run_id=run)
    assert second.attempts == 2 and second.retries == 1
    # the first worker comes back from the dead: its result is refused
    assert not queue.complete(jid, first.attempts, {"stale": True})
    assert queue.fail(jid, first.attempts, "late") == ""
    assert queue.fail(jid, second.attempts, "died again") == "failed"
    job = queue.get(jid)
    assert job.status == "failed" and job.retries == 1 and "died again" in job.error


def test_expired_lease_is_reclaimed_then_given_up(queue):
    run = queue.create_run({})
    (jid,) = queue.submit([softmax_job(run, 9, 16, max_retries=1)])
    queue.claim("w1", run_id=run, lease_s=0.01)
    time.sleep(0.05)
    again = queue.claim("w2", run_id=run, lease_s=0.01)
    assert again.id == jid and again.retries == 1 and again.attempts == 2
    time.sleep(0.05)
    assert queue.claim("w3", run_id=run) is None
    assert queue.get(jid).status == "failed"


def test_release_worker_and_requeue_running(queue):
    run = queue.create_run({"spec": 1})
    queue.submit([softmax_job(run, r, 16) for r in (1, 2, 3)])
    a, b = queue.claim("dead", run_id=run), queue.claim("alive", run_id=run)
    assert queue.release_worker("dead") == 1
    assert queue.get(a.id).status == "pending" and queue.get(b.id).status == "running"
    assert queue.requeue_running(run) == 1 and queue.counts(run)["pending"] == 3
    assert queue.run(run)["spec"] == {"spec": 1} and queue.run(run)["status"] == "running"
    queue.finish_run(run, "done", {"n": 3})
    assert queue.run(run)["summary"] == {"n": 3} and run not in [r["id"] for r in queue.runs("running")]


def test_bad_job_arguments():
    with pytest.raises(ValueError, match="priority"):
        TuningJob("softmax", {}, "numpy", {}, priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue URL"):
        open_queue("mysql://x")


def _claimer(url: str, run: str, out: mp.Queue) -> None:
    q = open_queue(url)
    got = []
    while (j := q.claim(f"p{os.getpid()}", run_id=run)) is not None:
        q.complete(j.id, j.attempts, {"by": os.getpid()})
        got.append(j.id)
    out.put(got)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_claimers_take_each_job_once(tmp_path, kind, request):
    if kind == "postgresql":
        url = PG_URL or request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    q = open_queue(url)
    run = q.create_run({})
    ids = q.submit([softmax_job(run, r, b) for r in range(1, 31) for b in (16, 64)])
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, run, out)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [i for _ in procs for i in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(got) == sorted(ids)
    assert q.counts(run)["done"] == len(ids)


# ---- executors ------------------------------------------------------------------------------------


def test_local_pool_runs_120_jobs_exactly_once(tmp_path):
    from uhop.tune.executors import make_executor
    from uhop.tune.search import worker_settings

    q = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    run = q.create_run({})
    ids = q.submit([softmax_job(run, r, b) for r in range(1, 41) for b in (16, 64, 0)])
    assert len(set(ids)) == 120
    t0 = time.time()
    with make_executor("local", q, run, settings=worker_settings(), workers=2) as ex:
        seen = [j.id for j in ex.run(ids)]
    assert sorted(seen) == sorted(ids), "every job reported exactly once"
    jobs = q.jobs(run_id=run)
    assert all(j.status == "done" and j.attempts == 1 for j in jobs)
    assert all(j.result["measurement"]["status"] == "ok" for j in jobs)
    assert len({j.result["worker"] for j in jobs}) == 2, "both workers took jobs"
    assert time.time() - t0 < 120


def test_local_worker_reads_its_stop_pipe_above_fd_1024(tmp_path):
    """A parent with many files open hands its workers a stop pipe above 1024, which select()
    refuses: every worker died at start and the pool restarted them for ever (the CI suite's
    process got there)."""
    import resource

    from uhop.tune.executors.local import _StopPipe

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard if hard != resource.RLIM_INFINITY else 4096) <= 1500:
        pytest.skip(f"the file limit ({soft}/{hard}) leaves no descriptor above 1024 to test")
    if soft <= 1500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1501 if hard == resource.RLIM_INFINITY else min(hard, 4096), hard))
    r, w = os.pipe()
    high = os.dup2(r, 1500)
    try:
        stop = _StopPipe(high)
        assert not stop.is_set()
        os.close(w)
        assert stop.is_set()
    finally:
        os.close(high)
        os.close(r)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_worker_that_cannot_start_fails_the_run_instead_of_restarting_for_ever(tmp_path, monkeypatch):
    from uhop.tune.executors import local, make_executor
    from uhop.tune.search import worker_settings

    monkeypatch.setattr(local, "EARLY_EXITS", 3)
    monkeypatch.setattr(local.LocalExecutor, "entry", "uhop.tune.executors.local:_no_such_entry")
    q = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    run = q.create_run({})
    ids = q.submit([softmax_job(run, 8, 16)])
    t0 = time.time()
    with make_executor("local", q, run, settings=worker_settings(), workers=1) as ex:
        with pytest.raises(RuntimeError, match="3 times in a row"):
            list(ex.run(ids))
    assert time.time() - t0 < 60


def test_killed_local_worker_job_is_retried(tmp_path):
    from uhop import config
    from uhop.tune.executors import make_executor
    from uhop.tune.search import worker_settings

    q = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    run = q.create_run({})
    ids = q.submit([softmax_job(run, 64, b) for b in (1, 2, 4, 8, 16, 32)])
    with config.override(bench_min_s=0.3):  # long enough jobs to kill one mid-flight
        ex = make_executor("local", q, run, settings=worker_settings(), workers=2)
    killed = None
    seen = []
    with ex:
        for job in ex.run(ids):
            seen.append(job.id)
            if killed is None:
                running = q.jobs(run_id=run, status="running")
                if running:
                    killed = running[0]
                    os.kill(int(killed.worker.rsplit(":", 1)[1]), signal.SIGKILL)
    assert killed is not None
    assert sorted(seen) == sorted(ids)
    again = q.get(killed.id)
    assert again.status == "done" and again.retries == 1 and again.attempts == 2
    assert all(j.status == "done" for j in q.jobs(run_id=run))


# ---- search runs end to end -------------------------------------------------------------------------

_CRASHING_RUN = """
import sys
from uhop import config
from uhop.tune.tuner import tune
with config.override(bench_min_s=0.15, bench_repeat=3):
    tune("softmax", {"R": 96, "N": 64}, strategy="random", max_evals=6, executor="inline", backends=("numpy", "numba"),
         seed=4)
"""


def test_crashed_run_resumes_where_it_stopped(uhop_home):
    import subprocess
    import sys

    from uhop.tune.tuner import tune

    env = {**os.environ, "UHOP_HOME": str(uhop_home)}
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_RUN], env=env)
    q = open_queue()
    deadline = time.time() + 120
    run = None
    while time.time() < deadline and proc.poll() is None:
        runs = q.runs("running")
        if runs and q.counts(runs[0]["id"])["done"] >= 3:
            run = runs[0]["id"]
            proc.kill()  # kill -9 in the middle of the run
            break
        time.sleep(0.05)
    proc.wait()
    assert run is not None, "the run finished before it could be interrupted"
    before = {j.key: j for j in q.jobs(run_id=run, status="done")}
    res = tune(resume=run, executor="inline")
    after = q.jobs(run_id=run)
    assert res.run_id == run and q.run(run)["status"] == "done"
    assert len(after) == 6 and len({j.key for j in after}) == 6, "budget kept, nothing measured twice"
    for j in after:
        if j.key in before:  # finished before the crash: not run again
            assert j.attempts == 1 and j.ended == before[j.key].ended
    assert all(j.status == "done" for j in after)
    assert len(res.measurements) == 6 and res.best is not None


def test_cli_multi_objective_writes_pareto_front(tmp_path):
    import json

    from typer.testing import CliRunner

    from uhop.cli import build_app

    out = tmp_path / "front.json"
    res = CliRunner().invoke(build_app(), [
        "tune", "softmax", "--shape", "32x64", "--strategy", "nsga2", "--budget", "4", "--objectives", "latency",
        "memory", "--weights", "0.7", "0.3", "-b", "numpy", "--executor", "inline", "--pareto", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["objectives"] == ["latency", "memory"] and doc["weights"] == [0.7, 0.3]
    assert doc["front"] and all(m["status"] == "ok" for m in doc["front"])
    assert "Pareto front" in res.output
    bad = CliRunner().invoke(build_app(), ["tune", "softmax", "--shape", "8x8", "--objectives", "latency", "speed"])
    assert bad.exit_code != 0 and "unexpected argument 'speed'" in bad.output
    bad = CliRunner().invoke(build_app(), ["tune", "softmax", "--shape", "8x8", "--strategy", "anneal"])
    assert bad.exit_code != 0 and "--strategy must be one of" in bad.output


def test_energy_and_memory_objectives_on_cpu():
    import numpy as np

    from uhop.tune.objectives import energy_per_call, peak_memory

    x = np.random.default_rng(0).standard_normal((256, 1024))

    def call():
        return np.exp(x) + 1.0  # two fresh 2 MiB arrays

    mem, how = peak_memory(call, lambda: None, "cpu")
    assert mem >= x.nbytes and how
    e, how = energy_per_call(call, lambda: None, "cpu", 1e-3)
    assert e > 0 and (how.startswith("rapl") or how.startswith("estimate"))
    assert energy_per_call(call, lambda: None, "cpu", float("inf"))[0] == float("inf")


def test_a_script_without_a_main_guard_runs_its_top_level_once_with_the_local_pool(tmp_path):
    """The local executor's workers are fresh ``python -c`` processes: multiprocessing's spawn
    re-imported the caller's ``__main__``, so a script without an ``if __name__ == "__main__"``
    guard ran its top level (and its own tuning run) again in every worker."""
    import os
    import subprocess
    import sys
    import textwrap

    mark = tmp_path / "runs.txt"
    script = tmp_path / "noguard.py"
    script.write_text(textwrap.dedent(f"""
        import uhop
        with open({str(mark)!r}, "a") as f:
            f.write("ran\\n")
        res = uhop.tune("softmax", {{"R": 16, "N": 40}}, strategy="exhaustive", executor="local",
                        workers=2, backends=["numpy"], budget_s=120)
        print("PICK", res.best.candidate.id)
    """))
    env = {**os.environ, "UHOP_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "PICK numpy/" in r.stdout, r.stdout
    assert mark.read_text().splitlines() == ["ran"], r.stderr[-2000:]
