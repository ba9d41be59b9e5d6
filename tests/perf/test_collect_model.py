"""Telemetry, collection, the tiled family and the cost model, on real (tiny) measurements."""

from __future__ import annotations

import hashlib
import json
import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uhop.backends.base import Candidate
from uhop.problem import Problem

pytest.importorskip("xgboost", reason="xgboost not installed (pip install 'uhop[perf]')")
pytest.importorskip("numba", reason="numba not installed (pip install 'uhop[cpu]')")


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A SQLite store holding a tiny real collection: 6 matmul problems, registered candidates
    plus 6 tiled configs each, process-CPU timed (short benchmarks: labels are noisy, which is fine)."""
    from uhop import config
    from uhop.perf.collect import collect
    from uhop.store import SQLiteStore

    home = tmp_path_factory.mktemp("perf_home")
    store = SQLiteStore(home / "uhop.db")
    with config.override(home=home, bench_min_s=0.002, bench_repeat=3, validation_trials=1):
        res = collect("matmul", samples=40, seed=3, family_n=6, store=store, timer="process-cpu",
                      backends=("numpy", "torch"))  # fmt: skip
    return store, res


# ---- the tiled family ---------------------------------------------------------------------------
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.sampled_from([1, 7, 31, 64]), n=st.sampled_from([1, 13, 97]), k=st.sampled_from([1, 5, 128]),
    dtype=st.sampled_from(["float32", "float64"]), idx=st.integers(0, 53),
)  # fmt: skip
def test_tiled_family_matches_float64_reference(m, n, k, dtype, idx):
    from uhop.measure.validate import ValidationSet
    from uhop.perf.family import TiledMatmulFamily
    from uhop.tune.tuner import evaluate

    p = Problem.make("matmul", {"B": 1, "M": m, "N": n, "K": k}, dtype)
    fam = TiledMatmulFamily()
    cand = fam.candidates(p)[idx]
    rng = np.random.default_rng()
    a, b = rng.uniform(-1, 1, (m, k)).astype(dtype), rng.uniform(-1, 1, (k, n)).astype(dtype)
    out = fam.compile(cand, p)(a, b)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    rtol, atol = p.spec.tolerance(dtype, p.dim, p.param)
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol)
    assert out.dtype == np.dtype(dtype)
    m_, _ = evaluate(cand, fam, p, ValidationSet(p, trials=1), time_it=False)
    assert m_.ok, m_.reason


def test_tiled_family_rejects_bad_config_and_unsupported_problems():
    from uhop.perf.family import TiledMatmulFamily

    fam = TiledMatmulFamily()
    p = Problem.make("matmul", {"B": 1, "M": 4, "N": 4, "K": 4}, "float32")
    with pytest.raises(ValueError, match="bm must be a positive int"):
        fam.compile(Candidate.of("tiled", "numba-tiled", bm=0, bn=4, bk=4), p)
    assert not fam.supports(Problem.make("matmul", {"B": 2, "M": 4, "N": 4, "K": 4}, "float32"))
    assert not fam.supports(Problem.make("matmul", {"B": 1, "M": 4, "N": 4, "K": 4}, "float32", {"activation": "relu"}))
    assert len(fam.sample(p, 5, random.Random(0))) == 5


@settings(max_examples=8, deadline=None)
@given(
    m=st.sampled_from([1, 7, 33]), n=st.sampled_from([1, 13, 97]), k=st.sampled_from([1, 5, 67]),
    dtype=st.sampled_from(["float32", "float64"]), order=st.sampled_from(["kj", "jk"]),
    tasks=st.sampled_from(["tile", "rows"]), chunk=st.sampled_from([1, 2, 3]), parallel=st.booleans(),
    fastmath=st.booleans(), tiles=st.tuples(*[st.sampled_from([1, 4, 8, 32])] * 3),
)  # fmt: skip
def test_tiled_family_loop_orders_and_row_tasks_match_float64_reference(
    m, n, k, dtype, order, tasks, chunk, parallel, fastmath, tiles
):
    """The configs the cost-model grid never lists (the search-space side: row tasks, ``chunk``,
    both block-loop orders, no fast-math) are as correct as its own."""
    from uhop.perf.family import tiled_kernel

    bm, bn, bk = tiles
    cfg = dict(bm=bm, bn=bn, bk=bk, order=order, tasks=tasks, chunk=chunk, parallel=parallel,
               fastmath=fastmath)  # fmt: skip
    rng = np.random.default_rng()
    a, b = rng.uniform(-1, 1, (m, k)).astype(dtype), rng.uniform(-1, 1, (k, n)).astype(dtype)
    out = tiled_kernel(cfg, dtype)(a, b)
    p = Problem.make("matmul", {"B": 1, "M": m, "N": n, "K": k}, dtype)
    rtol, atol = p.spec.tolerance(dtype, p.dim, p.param)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b.astype(np.float64), rtol=rtol, atol=atol)
    assert out.dtype == np.dtype(dtype)


def test_blocked_search_space_configs_map_onto_the_family():
    from uhop.perf.family import DEFAULTS, blocked_config, tiled_config

    cfg = blocked_config({"BM": 32, "BN": 64, "BK": 16, "order": "jk", "chunk": 2})
    assert cfg == {"bm": 32, "bn": 64, "bk": 16, "order": "jk", "chunk": 2, "tasks": "rows", "parallel": True,
                   "fastmath": False}  # fmt: skip
    assert tiled_config({"bm": 4, "bn": 16, "bk": 16, "parallel": True}) == {"bm": 4, "bn": 16, "bk": 16, **DEFAULTS,
                                                                             "parallel": True}  # fmt: skip
    for bad, msg in (({"order": "ij"}, "order must be one of"), ({"tasks": "cols"}, "tasks must be one of"),
                     ({"chunk": 0}, "chunk must be a positive int"), ({"parallel": 1}, "parallel must be a bool"),
                     ({"BM": 8}, r"keys \['BM'\] are not tiled-family parameters")):  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            tiled_config({"bm": 4, "bn": 4, "bk": 4, **bad})


# ---- telemetry ----------------------------------------------------------------------------------
def test_tuner_run_recorded_as_telemetry_in_the_store_file(uhop_home):
    from uhop.perf import telemetry
    from uhop.store import open_store
    from uhop.tune.tuner import tune

    res = tune("softmax", {"R": 5, "N": 37}, "float32", backends=("numpy",))
    # the tuner records its own run (tuner._record_telemetry): one row per measured candidate
    n = len([m for m in res.measurements if m.status != "skipped"])
    assert n > 0
    db = telemetry.telemetry_db(open_store())
    assert db.path == open_store().path  # same database file as the kernel store
    rows = db.rows("softmax")
    assert len(rows) == n
    r = rows[0]
    assert r["key"] == res.key and r["dims"] == {"R": 5, "N": 37} and r["params"] == {}
    assert r["flops"] > 0 and r["bytes"] > 0 and len(r["config_hash"]) == 16 and len(r["hw_hash"]) == 16
    assert r["hw_features"]["hw_cores"] >= 1 and r["versions"]["numpy"] == np.__version__
    assert r["fingerprint"]["machine"] and r["timer"] == "wall" and r["created"] > 0
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["n"] >= 1 for r in ok)


def test_record_measurements_never_breaks_the_caller(caplog):
    from uhop.perf import telemetry

    p = Problem.make("softmax", {"R": 2, "N": 3}, "float32")
    bad = [{"candidate": {"backend": "numpy", "template": "x", "config": {}}, "status": "ok", "median_s": 1e-3}]
    assert telemetry.record_measurements(p, bad, store=object()) == 0
    assert "telemetry not recorded" in caplog.text
    with pytest.raises(TypeError):
        telemetry.record_measurements(p, bad, store=object(), strict=True)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_formats(collected, tmp_path, fmt):
    from uhop.perf import telemetry

    store, res = collected
    out = tmp_path / f"t.{fmt}"
    n = telemetry.export(store, out, fmt)
    assert n == res.rows
    if fmt == "parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(out)
        assert t.num_rows == n and "median_s" in t.column_names and "hw_features" in t.column_names
        assert json.loads(t.column("config")[0].as_py()) is not None
    elif fmt == "jsonl":
        assert len(out.read_text().splitlines()) == n
    with pytest.raises(ValueError, match="format must be"):
        telemetry.export(store, out, "xlsx")


# ---- collection ---------------------------------------------------------------------------------
def test_collect_records_labelled_samples_and_store_entries(collected):
    from uhop.perf import telemetry

    store, res = collected
    assert res.samples >= 40 and res.rows == res.samples + res.failed
    rows = telemetry.telemetry_db(store).rows("matmul")
    assert len(rows) == res.rows
    assert {r["backend"] for r in rows} >= {"numpy", "torch", "tiled"}
    assert all(r["timer"] == "process-cpu" and r["source"] == "collect" for r in rows)
    entries = store.entries("matmul")
    assert len(entries) == len(res.problems)
    assert all(e.candidate["backend"] != "tiled" for e in entries)  # the family never becomes a stored choice


def test_problem_suite_is_seeded_and_excludes():
    from uhop.errors import InputError
    from uhop.perf.collect import problem_suite

    a, b = problem_suite("matmul", 10, 5), problem_suite("matmul", 10, 5)
    assert a == b and len({p.dims for p in a}) == 10
    c = problem_suite("matmul", 5, 6, exclude=a)
    assert not {p.dims for p in c} & {p.dims for p in a}
    with pytest.raises(InputError, match="n must be"):
        problem_suite("matmul", 0, 1)
    from uhop.perf.collect import collect

    with pytest.raises(InputError, match="timer must be one of"):
        collect("matmul", 5, timer="sundial")
    with pytest.raises(InputError, match="samples must be"):
        collect("matmul", 0)


# ---- the model -----------------------------------------------------------------------------------
def test_training_is_deterministic_and_predictions_are_sane(collected, tmp_path):
    from uhop.perf.model import CostModel, load_rows, samples_from_rows

    store, _ = collected
    samples = samples_from_rows(load_rows(store, op="matmul"), "matmul")
    rounds = {"ranker": 30, "quantile": 30}
    a = CostModel.train(samples, "matmul", seed=7, rounds=rounds)
    b = CostModel.train(list(reversed(samples)), "matmul", seed=7, rounds=rounds)  # input order must not matter
    c = CostModel.train(samples, "matmul", seed=8, rounds=rounds)
    h = lambda m: hashlib.sha256(m.to_bytes()).hexdigest()  # noqa: E731
    assert h(a) == h(b) != h(c)
    path = a.save(tmp_path / "m.json")
    loaded = CostModel.load(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == h(a) == h(loaded)
    p = Problem.make("matmul", {"B": 1, "M": 100, "N": 60, "K": 33}, "float32")
    cands = [Candidate.of("numpy", "blas"), Candidate.of("tiled", "numba-tiled", bm=16, bn=64, bk=64, parallel=False)]
    q = loaded.predict(p, cands)
    assert q.shape == (2, 3) and np.all(q > 0) and np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2])
    assert np.array_equal(q, a.predict(p, cands))
    assert loaded.scores(p, cands).shape == (2,)


def test_too_little_data_and_bad_files_are_clear_errors(tmp_path):
    from uhop.perf.model import CostModel

    with pytest.raises(ValueError, match="run `uhop perf collect --op matmul` first"):
        CostModel.train([], "matmul")
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a UHOP cost model"):
        CostModel.load(tmp_path / "x.json")


def test_rank_and_prune_fall_back_without_a_model_and_use_it_with_one(collected, uhop_home):
    from uhop.perf.model import CostModel, load_rows, model_path, prune, rank, samples_from_rows

    p = Problem.make("matmul", {"B": 1, "M": 50, "N": 70, "K": 90}, "float32")
    from uhop.perf.family import TiledMatmulFamily

    cands = [Candidate.of("numpy", "blas"), Candidate.of("torch", "eager"), *TiledMatmulFamily().candidates(p)[:10]]
    assert [c for c, _ in rank(p, cands)] == cands and all(math.isnan(t) for _, t in rank(p, cands))
    assert prune(p, cands, keep=0.25) == cands  # no model: nothing pruned
    assert rank(p, []) == []
    store, _ = collected
    model = CostModel.train(samples_from_rows(load_rows(store, op="matmul"), "matmul"), "matmul",
                            rounds={"ranker": 30, "quantile": 30})  # fmt: skip
    model.save(model_path("matmul"))
    ranked = rank(p, cands)
    assert sorted(c.id for c, _ in ranked) == sorted(c.id for c in cands)
    assert all(t > 0 for _, t in ranked)
    kept = prune(p, cands, keep=0.25)
    assert len(kept) == 3 and kept == [c for c, _ in ranked[:3]]
    assert len(prune(p, cands[:1], keep=0.01)) == 1
    with pytest.raises(ValueError, match="keep must be"):
        prune(p, cands, keep=0)
    model_path("matmul").write_text("not json")  # a corrupt model degrades to the given order
    import os
    import time

    os.utime(model_path("matmul"), (time.time() + 5, time.time() + 5))
    assert [c for c, _ in rank(p, cands)] == cands


def test_surrogate_model_plugs_into_the_surrogate_strategy(collected, uhop_home):
    from uhop.perf.family import TiledMatmulFamily
    from uhop.perf.model import CostModel, load_rows, model_path, samples_from_rows, surrogate_model
    from uhop.space import SearchSpace
    from uhop.tune.strategies import make

    p = Problem.make("matmul", {"B": 1, "M": 40, "N": 90, "K": 20}, "float32")
    space = SearchSpace.from_candidates(TiledMatmulFamily().candidates(p))
    assert surrogate_model(p, space) is None  # no model yet: the strategy keeps its built-in one
    store, _ = collected
    CostModel.train(samples_from_rows(load_rows(store, op="matmul"), "matmul"), "matmul",
                    rounds={"ranker": 20, "quantile": 20}).save(model_path("matmul"))  # fmt: skip
    sm = surrogate_model(p, space)
    X = [space.encode(c) for c in space.configs()]
    scores = sm.predict(X)
    assert len(scores) == len(X) == 54 and all(math.isfinite(v) for v in scores)
    strat = make("surrogate", space, cost_model=sm, n_init=0, explore=0.0, seed=1)
    first = strat.ask(3)
    best3 = sorted(range(len(X)), key=lambda i: scores[i])[:3]
    assert [space.config_hash(c) for c in first] == [space.config_hash(space.decode(X[i])) for i in best3]


def test_surrogate_model_learns_from_the_measurements_of_its_search(collected, uhop_home):
    """update() moves predictions toward what this search measured: configs near a measured one
    that ran far slower than predicted are expected slower too."""
    from uhop.perf.family import TiledMatmulFamily
    from uhop.perf.model import CostModel, load_rows, model_path, samples_from_rows, surrogate_model
    from uhop.space import SearchSpace

    p = Problem.make("matmul", {"B": 1, "M": 40, "N": 90, "K": 20}, "float32")
    space = SearchSpace.from_candidates(TiledMatmulFamily().candidates(p))
    store, _ = collected
    CostModel.train(samples_from_rows(load_rows(store, op="matmul"), "matmul"), "matmul",
                    rounds={"ranker": 20, "quantile": 20}).save(model_path("matmul"))  # fmt: skip
    sm = surrogate_model(p, space)
    X = [space.encode(c) for c in space.configs()]
    before = sm.predict(X)
    # tell it that the first config ran 16x slower than predicted
    sm.update([X[0]], [2.0 ** before[0] * 16])
    after = sm.predict(X)
    assert after[0] == pytest.approx(before[0] + 4, abs=1e-6)
    assert all(a >= b - 1e-9 for a, b in zip(after, before, strict=True))
