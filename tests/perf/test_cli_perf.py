"""``uhop perf`` end to end: collect -> train (byte-identical twice) -> predict -> export."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from typer.testing import CliRunner

pytest.importorskip("xgboost", reason="xgboost not installed (pip install 'uhop[perf]')")
pytest.importorskip("pyarrow", reason="pyarrow not installed (pip install 'uhop[perf]')")


def _app():
    from uhop.cli import build_app

    return build_app()


def test_collect_train_predict_export(uhop_home, tmp_path, table_column):
    from uhop import config

    r = CliRunner()
    app = _app()
    with config.override(bench_min_s=0.002, bench_repeat=3, validation_trials=1, backends=("numpy", "torch")):
        res = r.invoke(app, ["perf", "collect", "--op", "matmul", "--samples", "24", "--seed", "4", "--family", "5",
                             "--timer", "thread-cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert re.search(r"\((\d+) labelled", res.output) and int(re.search(r"\((\d+) labelled", res.output)[1]) >= 24

    res = r.invoke(app, ["perf", "stats"], env={"COLUMNS": "80"})
    assert res.exit_code == 0 and "tiled" in res.output
    assert all(len(ln) <= 80 for ln in res.output.splitlines()), res.output
    res = r.invoke(app, ["perf", "stats", "--json"])
    counts = json.loads(res.output)["counts"]
    assert {c["backend"] for c in counts} >= {"numpy", "tiled"} and sum(c["rows"] for c in counts) == json.loads(res.output)["rows"]

    outs = []
    for name in ("a.json", "b.json"):
        res = r.invoke(app, ["perf", "train", "--op", "matmul", "--seed", "1", "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        outs.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
        assert outs[-1] in res.output
    assert outs[0] == outs[1]  # same data + seed: byte-identical artifact

    res = r.invoke(app, ["perf", "train", "--op", "matmul"])  # default location, used by predict
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["perf", "predict", "--op", "matmul", "--shape", "256x256x256"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert "numpy/blas" in res.output and ".." in res.output
    assert all(len(ln) <= 80 for ln in res.output.splitlines()), res.output
    ranked = json.loads(r.invoke(app, ["perf", "predict", "--op", "matmul", "--shape", "256x256x256", "--json"]).output)
    ids = [c["candidate"] for c in ranked["candidates"]]
    assert len(ids) > 3 and all(c["p10_s"] <= c["median_s"] <= c["p90_s"] for c in ranked["candidates"])
    assert table_column(res.output, 1) == ids  # every candidate id whole at 80 columns (folded, never cut), same order
    res = r.invoke(app, ["perf", "predict", "--op", "matmul", "--shape", "256x256x256", "--backend", "tiled",
                         "--config", '{"bm": 16, "bn": 64, "bk": 64, "parallel": false}'])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert re.search(r"candidate: tiled/numba-tiled\{bk=64,bm=16,bn=64,parallel=False\}  predicted [\d.]+ \w?s "
                     r"\(80% interval [\d.]+ \w?s \.\. [\d.]+ \w?s\)", res.output), res.output

    res = r.invoke(app, ["perf", "predict", "--op", "matmul", "--shape", "8x8x8", "--backend", "tiled", "--config", "[1]"])
    assert res.exit_code == 2 and "--config must be a JSON object" in res.output
    res = r.invoke(app, ["perf", "predict", "--op", "matmul", "--shape", "8x8", "--config", "{}"])
    assert res.exit_code == 2 and "shape" in res.output

    out = tmp_path / "tel.parquet"
    res = r.invoke(app, ["perf", "export", "--format", "parquet", "--out", str(out)])
    assert res.exit_code == 0 and out.exists(), res.output
    res = r.invoke(app, ["perf", "export", "--format", "xml", "--out", str(out)])
    assert res.exit_code == 2 and "--format must be" in res.output


def test_predict_without_model_is_a_clear_error(uhop_home):
    res = CliRunner().invoke(_app(), ["perf", "predict", "--op", "matmul", "--shape", "8x8x8"])
    assert res.exit_code == 1 and "no cost model" in res.output and "uhop perf train" in res.output
