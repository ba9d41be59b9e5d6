"""The default dispatch policy: first use serves the library baseline at once and tunes in the
background; the winner is swapped in, persisted, and shared by numpy, torch and CLI callers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import uhop
from uhop import config
from uhop.dispatch import _direct_cache, clear_process_cache
from uhop.store import open_store

rng = np.random.default_rng()


def softmax64(x):
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_first_call_serves_the_baseline_then_the_tuned_kernel_is_swapped_in():
    x = rng.standard_normal((64, 300)).astype(np.float32)
    with config.override(policy="background", tune_budget_s=20):
        out = uhop.ops.softmax(x)  # served by the baseline while tuning runs
        np.testing.assert_allclose(out, softmax64(x), rtol=1e-5, atol=1e-6)
        (k_first,) = _direct_cache.values()
        assert uhop.wait(timeout=120)
        (e,) = open_store().entries("softmax")
        assert e.median_s is not None and e.policy == "tune"
        (k_final,) = _direct_cache.values()
        out2 = uhop.ops.softmax(x)
        np.testing.assert_allclose(out2, softmax64(x), rtol=1e-5, atol=1e-6)
        # the cache entry was replaced by the tuned kernel unless the baseline itself won
        if e.candidate["backend"] != "numpy" or e.candidate["template"] != "blocked":
            assert k_final is not k_first


def test_concurrent_first_calls_from_threads_tune_once_and_agree():
    x = rng.standard_normal((32, 128)).astype(np.float32)
    outs, errors = [], []

    def call():
        try:
            outs.append(uhop.ops.softmax(x))
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    with config.override(policy="background", tune_budget_s=20):
        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert uhop.wait(timeout=120)
    assert not errors
    for o in outs:
        np.testing.assert_allclose(o, softmax64(x), rtol=1e-5, atol=1e-6)
    (e,) = open_store().entries("softmax")
    ran = {json.dumps(m["candidate"], sort_keys=True) for m in open_store().measurements(e.key) if m["status"] == "ok"}
    assert len(open_store().measurements(e.key)) == len(ran) + sum(
        1 for m in open_store().measurements(e.key) if m["status"] != "ok"
    )  # one tuning run: each candidate measured once


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_serves_what_it_inherited():
    x = rng.standard_normal((16, 64)).astype(np.float32)
    with config.override(policy="background", tune_budget_s=20):
        uhop.ops.softmax(x)
        pid = os.fork()
        if pid == 0:  # child: its own (empty) background queue; the call must work and wait return
            code = 0
            try:
                out = uhop.ops.softmax(x)
                np.testing.assert_allclose(out, softmax64(x), rtol=1e-5, atol=1e-6)
                assert uhop.wait(timeout=60)
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert uhop.wait(timeout=120)


CALLER = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np, uhop
    from uhop.store import open_store
    t1 = time.perf_counter()
    x = np.random.default_rng().standard_normal((128, 512)).astype(np.float32)
    if sys.argv[1] == "torch":
        import torch
        x = torch.from_numpy(x)
        t1 = time.perf_counter()
    t = time.perf_counter()
    uhop.ops.softmax(x)
    first = time.perf_counter() - t
    uhop.wait()
    key = open_store().entries("softmax")[0].key
    print(json.dumps({"import_s": t1 - t0, "first_s": first, "rows": len(open_store().measurements(key))}))
    """
)


def _run(home, lib, **env):
    e = {**os.environ, "UHOP_HOME": str(home), "UHOP_BACKENDS": "numpy,torch,numba", **env}
    e.pop("UHOP_POLICY", None)
    p = subprocess.run([sys.executable, "-c", CALLER, lib], env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_cli_tuned_entry_serves_numpy_and_torch_callers_in_new_processes(uhop_home):
    pytest.importorskip("torch")
    env = {**os.environ, "UHOP_HOME": str(uhop_home), "UHOP_BACKENDS": "numpy,torch,numba", "UHOP_TUNE_BUDGET_S": "20"}
    p = subprocess.run([sys.executable, "-m", "uhop", "tune", "softmax", "--shape", "128x512"], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    (e,) = open_store().entries("softmax")
    rows = len(open_store().measurements(e.key))
    for lib in ("numpy", "torch"):
        r = _run(uhop_home, lib)
        assert r["rows"] == rows, f"a {lib} caller tuned again"
        # warm start: the target is 0.25 s; this shared 2-core CI machine gets a margin
        assert r["first_s"] < 1.5, r
    assert len(open_store().entries("softmax")) == 1


def test_exit_waits_for_background_tuning_so_a_short_script_stores_its_pick(uhop_home):
    script = "import numpy as np, uhop; uhop.ops.softmax(np.random.rand(32, 96).astype(np.float32))"
    env = {**os.environ, "UHOP_HOME": str(uhop_home), "UHOP_BACKENDS": "numpy,torch", "UHOP_TUNE_BUDGET_S": "5"}
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    clear_process_cache()
    (e,) = open_store().entries("softmax")
    assert e.median_s is not None


def test_isolation_worker_imports_this_uhop_whatever_the_working_directory(tmp_path):
    shadow = tmp_path / "uhop"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the wrong uhop')\n")
    from uhop.tune.isolated import IsolatedEvaluator

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ev = IsolatedEvaluator("cpu")
        from uhop.backends.base import Candidate
        from uhop.problem import Problem

        m = ev.evaluate(Candidate.of("numpy", "eager", block=0), Problem.make("softmax", {"R": 8, "N": 16}, "float32"), trials=1)
        ev.close()
    finally:
        os.chdir(cwd)
    assert m.ok, m.reason


LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import uhop
    from uhop import dispatch
    x = np.random.default_rng().standard_normal((64, 256)).astype(np.float32)
    uhop.ops.softmax(x)
    first = [v[1].name for v in dispatch._interim.values()] + [v[1].name for v in dispatch._resolved.values()]
    uhop.wait()
    y = uhop.ops.softmax(x)
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    err = float(np.abs(y - e / e.sum(-1, keepdims=True)).max())
    final = [v[1].name for v in dispatch._resolved.values()]
    print(json.dumps({"first": first, "final": final, "err": err}))
    """
)


def test_stored_kernel_of_a_library_the_caller_has_not_loaded_is_built_off_the_first_call(uhop_home):
    """Warm start: a numpy caller whose stored pick is a torch kernel is served numpy's baseline
    at once while torch (1-2 s to import) loads in the background; then the stored pick serves."""
    pytest.importorskip("torch")
    env = {**os.environ, "UHOP_HOME": str(uhop_home), "UHOP_TUNE_BUDGET_S": "10"}
    env.pop("UHOP_POLICY", None)
    p = subprocess.run([sys.executable, "-m", "uhop", "tune", "softmax", "--shape", "64x256", "--backend", "torch"],
                       env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    (e,) = open_store().entries("softmax")
    assert e.candidate["backend"] == "torch"
    p = subprocess.run([sys.executable, "-c", LOADER], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["first"] == ["numpy"], r
    assert r["final"] == ["torch"], r
    assert r["err"] < 1e-5, r


def test_tuning_a_numpy_problem_does_not_import_libraries_whose_kernels_do_not_win(uhop_home):
    """Every candidate runs in the isolation worker: this process learns that torch and IREE are
    installed without importing them (1-2 s and hundreds of MB for a numpy caller)."""
    pytest.importorskip("torch")
    pytest.importorskip("numba")
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import uhop
        from uhop.store import open_store
        uhop.ops.softmax(np.random.default_rng().standard_normal((256, 1000)).astype(np.float32))
        uhop.wait()
        print(json.dumps({"pick": open_store().entries("softmax")[0].candidate["backend"],
                          "torch": "torch" in sys.modules, "iree": "iree.runtime" in sys.modules}))
        """
    )
    env = {**os.environ, "UHOP_HOME": str(uhop_home), "UHOP_TUNE_BUDGET_S": "20"}
    env.pop("UHOP_POLICY", None)
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["torch"] == (r["pick"] == "torch"), r
    assert r["iree"] == (r["pick"] == "iree"), r


def test_the_tuning_thread_ends_when_idle():
    """An idle tuning thread must not outlive its work: an OpenMP kernel it ran gave it a thread
    team, and while that team exists GNU OpenMP stops spinning between the caller's parallel
    regions (a 64x64 torch op on 2 cores: 5 -> 12 us)."""
    import time

    from uhop.tune.background import IDLE_S

    x = rng.standard_normal((16, 200)).astype(np.float32)
    with config.override(policy="background", tune_budget_s=5):
        uhop.ops.softmax(x)
        assert uhop.wait(timeout=120)
    deadline = time.monotonic() + IDLE_S + 5.0
    while any(t.name == "uhop-tuner" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(t.name == "uhop-tuner" for t in threading.enumerate())


def test_ctrl_c_exits_at_once_instead_of_waiting_for_background_tuning(uhop_home):
    """A script interrupted (an uncaught KeyboardInterrupt) while a problem tunes in the
    background: no exit wait for the pick (it waited up to UHOP_EXIT_WAIT_S, 20 s), the tuning
    thread stopped and joined without an error of its own (the queue emptied under it raised
    KeyError there), nothing stored."""
    import time

    script = textwrap.dedent("""
        import time, numpy as np, uhop
        a = np.random.rand(384, 384).astype(np.float32)
        uhop.ops.matmul(a, a)
        time.sleep(1.0)
        print("interrupting", flush=True)
        raise KeyboardInterrupt
    """)
    env = {**os.environ, "UHOP_HOME": str(uhop_home), "UHOP_TUNE_BUDGET_S": "60"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    assert "interrupting" in p.stdout and "KeyboardInterrupt" in p.stderr, p.stderr[-2000:]
    assert "Exception in thread" not in p.stderr and "finishing background tuning" not in p.stderr, p.stderr[-2000:]
    assert took < 15, took  # imports and the first call included; the wait alone was 20 s
    clear_process_cache()
    assert not open_store().entries("matmul")


def test_exit_hook_runs_before_concurrent_futures_and_exit_never_drops_a_store_entry(uhop_home):
    """At exit, thread pools refuse new work once concurrent.futures' exit hook has run, so a
    stored kernel's re-validation still running then could fail for that reason alone: UHOP's
    hook is moved to run first when its thread starts, and a validation failure once the process
    is exiting drops no store entry (tuner_vs_oracle_cpu_run28.json lost five picks this way
    when the exit began joining the tuning thread)."""
    import concurrent.futures.thread  # noqa: F401 - registers its hook
    import threading as th

    from uhop.dispatch import _verify, make_problem
    from uhop.ops import get
    from uhop.tune import background as bg

    cf_hook = next(h for h in th._threading_atexits if getattr(h, "func", None) is concurrent.futures.thread._python_exit)
    th._threading_atexits.remove(cf_hook)
    th._threading_atexits.append(cf_hook)  # as when a library imports it after uhop
    bg.queue().submit("test-job", lambda: None, persist=False)  # a job starts: the hook goes last
    uhop.wait()
    assert getattr(th._threading_atexits[-1], "func", None) is bg._at_exit
    with config.override(policy="tune"):
        uhop.ops.softmax(rng.random((8, 40)).astype(np.float32))
    (entry,) = open_store().entries("softmax")
    problem = make_problem(get("softmax"), (np.zeros((8, 40), np.float32),), {})

    def broken(x):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    from uhop.backends import get as get_backend
    from uhop.backends.base import Candidate

    got = (broken, get_backend("numpy"), Candidate.from_json(entry.candidate))
    bg._abandon.set()
    try:
        with pytest.raises(bg.Abandoned):
            _verify(problem, entry.key, got)
    finally:
        bg._abandon.clear()
    assert [e.key for e in open_store().entries("softmax")] == [entry.key]
    with pytest.warns(UserWarning, match="failed validation"):  # not exiting: the verdict stands
        _verify(problem, entry.key, got)
    uhop.wait()


SAME_PROBLEM = textwrap.dedent(
    """
    import json, time
    import numpy as np, uhop
    from uhop import dispatch
    from uhop.store import open_store
    x = np.random.default_rng().standard_normal((96, 700)).astype(np.float32)
    uhop.ops.softmax(x)
    uhop.wait()
    (e,) = open_store().entries("softmax")
    (got,) = dispatch._resolved.values()
    print(json.dumps({"rows": len(open_store().measurements(e.key)), "served": got[2].id, "stored": e.candidate}))
    """
)


def test_processes_meeting_one_new_problem_tune_it_once(uhop_home):
    """A pool of worker processes meeting the same new problem: one tunes it, the others serve
    the baseline until it is stored, then serve the stored pick (each worker tuned it, all at
    once, and each one's exit waited for its own tuning: a 2-process spawn pool took 15.7 s to
    close)."""
    import time

    from uhop.problem import Problem
    from uhop.tune.background import TuningLease

    env = {**os.environ, "UHOP_HOME": str(uhop_home), "UHOP_TUNE_BUDGET_S": "6", "UHOP_BACKENDS": "numpy,torch,numba"}
    env.pop("UHOP_POLICY", None)
    a = subprocess.Popen([sys.executable, "-c", SAME_PROBLEM], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)  # fmt: skip
    lease = TuningLease(Problem.make("softmax", {"R": 96, "N": 700}, "float32").key(config.settings().shape_buckets))
    deadline = time.monotonic() + 120
    while lease.acquire():  # until process A holds it (it is tuning)
        lease.release()
        assert a.poll() is None and time.monotonic() < deadline, a.stderr.read()[-2000:] if a.poll() is not None else ""
        time.sleep(0.05)
    t0 = time.monotonic()
    b = subprocess.run([sys.executable, "-c", SAME_PROBLEM], env=env, capture_output=True, text=True, timeout=300)
    b_s = time.monotonic() - t0
    out_a, err_a = a.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, err_a[-2000:] + b.stderr[-2000:]
    ra, rb = (json.loads(o.strip().splitlines()[-1]) for o in (out_a, b.stdout))
    assert rb["rows"] == ra["rows"], (ra, rb)  # B stored no measurements of its own
    assert rb["stored"] == ra["stored"] and rb["served"] == ra["served"]
    assert b_s < 60, b_s
