"""The tiled family's config features (values on a known problem) and the feature-set contract
between a saved model and the code that feeds it (a model of another feature set is stale)."""

from __future__ import annotations

import json
import math

import pytest

from uhop.backends.base import Candidate
from uhop.problem import Problem

HW = {"hw_cores": 1.0, "hw_vector_bits": 512.0, "hw_l1_bytes": 49152.0, "hw_l2_bytes": 2097152.0}


def test_config_features_on_a_known_problem():
    from uhop.perf.family import config_features

    M, N, K = 100, 70, 33
    f = config_features({"bm": 16, "bn": 64, "bk": 16, "parallel": False}, {"M": M, "N": N, "K": K}, 4, HW)
    # 7 x 2 x 3 blocks; the inner j loop runs over N in pieces of 64 and 6
    assert f["x_bm"] == 4 and f["x_bn"] == 6 and f["x_bk"] == 4
    assert f["x_tasks"] == pytest.approx(math.log2(14)) and f["x_tiles_per_core"] == pytest.approx(
        math.log2(14)
    )
    assert f["x_k_steps"] == pytest.approx(math.log2(3))
    assert f["x_edge_waste"] == pytest.approx(7 * 16 * 2 * 64 / (M * N) - 1)
    assert f["x_n_rem"] == pytest.approx(6 / 64) and f["x_k_rem"] == pytest.approx(1 / 16)
    assert f["x_jloops_per_fma"] == pytest.approx(math.log2(2 / N))
    assert f["x_kloops_per_fma"] == pytest.approx(math.log2(2 * 3 / (N * K)))
    assert f["x_blocks_per_fma"] == pytest.approx(math.log2(42 / (M * N * K)))
    # float32 on 512-bit vectors: 16 lanes; 64 = 4 vector steps, the 6 left over run scalar
    assert f["x_bn_over_lanes"] == 2
    assert f["x_v1_steps_per_fma"] == pytest.approx(math.log2((4 + 6) / N))
    assert f["x_v1_scalar_frac"] == pytest.approx(6 / N)
    assert f["x_v4_steps_per_fma"] == pytest.approx(math.log2((1 + 6) / N))  # one 64-wide unrolled step
    traffic = 4 * 42 * (16 * 16 + 16 * 64 + 2 * 16 * 64)
    assert f["x_tile_intensity"] == pytest.approx(math.log2(2 * M * N * K / traffic))
    assert f["x_btile_over_l1"] == pytest.approx(math.log2(4 * 16 * 64 / 49152))
    assert f["x_tile_over_l1"] == pytest.approx(math.log2(4 * (16 * 16 + 16 * 64 + 16 * 64) / 49152))


def test_config_features_cut_tiles_at_the_edge_and_take_caches_per_core():
    from uhop.perf.family import config_features

    dims = {"M": 3, "N": 5, "K": 7}
    big = config_features({"bm": 64, "bn": 256, "bk": 256}, dims, 8, HW)
    exact = config_features({"bm": 3, "bn": 5, "bk": 7}, dims, 8, HW)
    assert big == exact and big["x_edge_waste"] == 0 and big["x_tasks"] == 0
    # float64: 8 lanes; N = 5 is all scalar remainder
    assert big["x_v1_scalar_frac"] == 1.0
    # the manifest's L1/L2 are per core: more cores change tasks per core, not the footprints
    two = config_features(
        {"bm": 16, "bn": 64, "bk": 16}, {"M": 100, "N": 70, "K": 33}, 4, {**HW, "hw_cores": 2.0}
    )
    one = config_features({"bm": 16, "bn": 64, "bk": 16}, {"M": 100, "N": 70, "K": 33}, 4, HW)
    assert {k: v for k, v in two.items() if k != "x_tiles_per_core"} == {
        k: v for k, v in one.items() if k != "x_tiles_per_core"
    }
    assert two["x_tiles_per_core"] == pytest.approx(one["x_tiles_per_core"] - 1)
    # sizes given as log2 (the problem row's convention) mean the same
    logged = {k: math.log2(v) if v > 16 else v for k, v in HW.items()}
    assert config_features({"bm": 16, "bn": 64, "bk": 16}, {"M": 100, "N": 70, "K": 33}, 4, logged) == one


def _synthetic_samples():
    """Samples of a made-up timing law (no kernel runs): enough to train a small model."""
    from uhop.perf.family import TiledMatmulFamily
    from uhop.perf.features import hardware_features
    from uhop.perf.model import Sample

    hw = hardware_features("cpu")
    out = []
    for m, n, k in ((64, 64, 64), (100, 30, 7), (16, 300, 90), (200, 200, 3)):
        p = Problem.make("matmul", {"B": 1, "M": m, "N": n, "K": k}, "float32")
        cands = [Candidate.of("numpy", "blas"), *TiledMatmulFamily().candidates(p)[:12]]
        for i, c in enumerate(cands):
            t = 1e-6 * m * n * k / 1e3 * (1 if c.backend == "numpy" else 3 + (i % 5) / (c.cfg["bn"] / 16))
            out.append(Sample(group=p.key(),
                              problem=p.to_json(), candidate=c.to_json(), hw=hw, median_s=t, n=1))  # fmt: skip
    return out


def test_training_and_prediction_build_the_same_feature_rows():
    """The feature-vector contract: a sample's training row is the row predict() builds for the
    same problem, candidate and hardware (family features included)."""
    from uhop.perf.features import candidate_features, problem_features
    from uhop.perf.model import _rows_for

    s = next(s for s in _synthetic_samples() if s.candidate["backend"] == "tiled")
    p = Problem.from_json(s.problem)
    row = {**problem_features(p, s.hw), **candidate_features(Candidate.from_json(s.candidate), p, s.hw)}
    assert _rows_for([s])[0] == row
    assert "x_v1_steps_per_fma" in row and "x_btile_over_l1" in row


def test_a_model_of_another_feature_set_is_stale_and_ignored(uhop_home, caplog):
    pytest.importorskip("xgboost")
    from uhop.perf import features
    from uhop.perf.model import CostModel, load_model, model_path, rank
    from uhop.tune.prior import order

    model = CostModel.train(_synthetic_samples(), "matmul", rounds={"ranker": 5, "quantile": 5})
    assert model.meta["feature_set"] == features.FEATURE_SET
    path = model.save(model_path("matmul"))
    assert json.loads(path.read_text())["feature_set"] == features.FEATURE_SET
    assert load_model("matmul") is not None
    p = Problem.make("matmul", {"B": 1, "M": 50, "N": 70, "K": 90}, "float32")
    cands = [Candidate.of("numpy", "blas"), Candidate.of("torch", "eager")]
    assert all(math.isfinite(t) for _, t in rank(p, cands))

    for stale in (features.FEATURE_SET - 1, None):  # an older set, and a file from before the field
        doc = json.loads(path.read_text())
        if stale is None:
            del doc["feature_set"]
        else:
            doc["feature_set"] = stale
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match="stale: trained on feature set"):
            CostModel.load(path)
        import os
        import time

        os.utime(
            path, (time.time() + 10 + (stale or 0), time.time() + 10 + (stale or 0))
        )  # new mtime: reload
        assert load_model("matmul") is None
        assert "stale" in caplog.text
        # the tuner's order falls back to the roofline prior: given order + nan from rank
        assert [c for c, _ in rank(p, cands)] == cands and all(math.isnan(t) for _, t in rank(p, cands))
        assert all(math.isfinite(t) for _, t in order(p, cands))
