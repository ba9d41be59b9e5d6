"""Parallel precompile: JIT candidates built by the pool are loaded, not compiled, by the process
that evaluates them; a tuning run with the pool on records what was built ahead."""

from __future__ import annotations

import numpy as np
import pytest

from uhop import config
from uhop.backends.base import Candidate
from uhop.problem import Problem

pytest.importorskip("numba")


def test_a_candidate_built_by_the_pool_loads_from_the_disk_cache_here(uhop_home):
    from uhop import backends as bk
    from uhop.backends import numba_kernels
    from uhop.tune.precompile import Precompiler

    # a shape and expression no other test compiles: this process has not built it
    expr = f"x0*{np.random.default_rng().integers(2, 10**6)}.5 - x1"
    p = Problem.make("elementwise", {"N": 4099}, "float32", {"expr": expr}, arity=2)
    c = Candidate.of("numba", "fused", parallel=False, wide=False, chunk=4096)
    pre = Precompiler(1)
    try:
        pre.submit(p, [c])
        built = pre.wait(c, timeout=300)
    finally:
        pre.close()
    assert built is not None and built > 0
    before = set(numba_kernels._compiled)
    kernel = bk.get("numba").compile(c, p)
    xs = [np.random.default_rng().standard_normal(4099).astype(np.float32) for _ in range(2)]
    y = kernel(*xs)
    np.testing.assert_allclose(y, xs[0].astype(np.float64) * float(expr.split("*")[1].split(" ")[0]) - xs[1],
                               rtol=1e-5, atol=1e-3)  # fmt: skip
    (fn,) = [numba_kernels._compiled[k] for k in set(numba_kernels._compiled) - before]
    assert sum(fn.stats.cache_hits.values()) >= 1 and not sum(fn.stats.cache_misses.values())


def test_a_wait_for_a_candidate_never_queued_returns_at_once(uhop_home):
    from uhop.tune.precompile import Precompiler

    pre = Precompiler(1)
    try:
        assert pre.wait(Candidate.of("numba", "fused", parallel=True, wide=False, chunk=64), timeout=60) is None
    finally:
        pre.close()


def test_tuning_with_the_pool_records_builds_ahead_and_picks_a_valid_kernel(uhop_home):
    from uhop.tune.tuner import tune

    p = Problem.make("softmax", {"R": 64, "N": 333}, "float32")
    with config.override(precompile_workers=1, backends=("numpy", "numba"), tune_budget_s=60, isolate="always"):
        res = tune(problem=p, policy="tune")
    ahead = [m for m in res.measurements if "ahead" in dict(m.phases)]
    assert ahead, [m.phases for m in res.measurements]
    x = np.random.default_rng().standard_normal((64, 333)).astype(np.float32)
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    np.testing.assert_allclose(res.kernel(x), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_precompile_workers_setting():
    assert config.Settings(precompile_workers=3).precompile_processes == 3
    assert config.Settings(precompile_workers=0).precompile_processes == 0
    assert 0 <= config.Settings().precompile_processes <= 8


def test_a_script_without_a_main_guard_runs_its_top_level_once(tmp_path):
    """The build processes do not re-import the caller's ``__main__`` (multiprocessing's spawn
    did: a script without ``if __name__ == "__main__"`` ran its top level again in each of
    them, with its side effects and its own tuning)."""
    import os
    import subprocess
    import sys
    import textwrap

    mark = tmp_path / "runs.txt"
    script = tmp_path / "noguard.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        import uhop
        with open({str(mark)!r}, "a") as f:
            f.write("ran\\n")
        x = np.random.default_rng().standard_normal((64, 337)).astype(np.float32)
        uhop.ops.softmax(x)
        uhop.wait()
        from uhop.problem import Problem
        from uhop.tune.tuner import tune
        res = tune(problem=Problem.make("softmax", {{"R": 32, "N": 341}}, "float32"), policy="tune")
        print("AHEAD", sum("ahead" in dict(m.phases) for m in res.measurements))
    """))
    env = {**os.environ, "UHOP_HOME": str(tmp_path / "home"), "UHOP_PRECOMPILE_WORKERS": "1",
           "UHOP_BACKENDS": "numpy,numba", "UHOP_ISOLATE": "always", "UHOP_TUNE_BUDGET_S": "30"}  # fmt: skip
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert mark.read_text().splitlines() == ["ran"], r.stderr[-2000:]
    ahead = int(r.stdout.split("AHEAD")[1].split()[0])
    assert ahead >= 1, r.stdout  # the build process did build candidates ahead


def test_the_pool_is_closed_when_the_tuning_loop_raises(uhop_home, monkeypatch):
    """An exception out of the loop (here the progress callback's: a Ctrl-C lands the same way)
    leaves no precompile pool building for a tuning run that is over."""
    from uhop.tune import precompile
    from uhop.tune.tuner import tune

    pools = []
    real = precompile.Precompiler.__init__

    def spy(self, workers):
        real(self, workers)
        pools.append(self)

    monkeypatch.setattr(precompile.Precompiler, "__init__", spy)

    def stop(*_):
        raise RuntimeError("stop here")

    p = Problem.make("softmax", {"R": 16, "N": 331}, "float32")
    with config.override(precompile_workers=1, backends=("numpy", "numba"), tune_budget_s=60, isolate="always"):
        with pytest.raises(RuntimeError, match="stop here"):
            tune(problem=p, policy="tune", progress=stop)
    assert pools and all(pool._closed for pool in pools)
