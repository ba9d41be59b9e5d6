"""The learned cost model: gradient-boosted trees (XGBoost) over telemetry.

Two boosters, trained on the same feature rows (:mod:`uhop.perf.features`):

- a **ranker** (``rank:pairwise``, one query group per problem and device) whose scores order a
  problem's candidates (higher = faster); labels are ``-log2(t / t_best)`` within the group;
- a **quantile regressor** (``reg:quantileerror`` at 0.1 / 0.5 / 0.9) of ``log2(t / roofline)``,
  where ``roofline = max(flops / peak, bytes / bandwidth)`` from the manifest features, giving a
  latency estimate with an 80% interval (widened by conformalized quantile regression on
  out-of-fold predictions, so it covers about 80% of new measurements from the same device). Predicting the distance above the device's roofline,
  rather than raw seconds, is what lets a model trained on one device say something on another.

Training is deterministic: samples are aggregated (median over repeated measurements of one
candidate on one problem and device) and sorted, XGBoost runs single-threaded with a fixed seed,
and the artifact (one JSON file: features, metadata, both boosters as base64 UBJSON, no
timestamps) is byte-identical for the same data and seed; ``meta.data_sha256`` names the data.

The API the tuner uses never raises and never needs a model: :func:`rank` returns the given
order with ``nan`` predictions when no model is trained for the op (or anything goes wrong).
Model files live at ``settings().home / "models" / "costmodel-<op>.json"``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uhop.backends.base import Candidate
from uhop.perf.features import (
    FEATURE_SET,
    FeatureSpace,
    Row,
    candidate_features,
    hardware_features,
    problem_features,
)

log = logging.getLogger("uhop.perf")

FORMAT = "uhop-costmodel"
VERSION = 1
QUANTILES = (0.1, 0.5, 0.9)

#: booster settings; nthread=1 is part of determinism (hist histograms summed in a fixed order)
RANK_PARAMS: dict[str, Any] = {
    "objective": "rank:pairwise", "eta": 0.08, "max_depth": 6, "min_child_weight": 1.0, "subsample": 0.8,
    "colsample_bytree": 0.8, "lambda": 1.0, "tree_method": "hist", "nthread": 1, "eval_metric": "ndcg@3",
}  # fmt: skip
QUANTILE_PARAMS: dict[str, Any] = {
    "objective": "reg:quantileerror", "quantile_alpha": list(QUANTILES), "eta": 0.12, "max_depth": 5,
    "min_child_weight": 2.0, "subsample": 0.8, "colsample_bytree": 0.8, "tree_method": "hist", "nthread": 1,
}  # fmt: skip
#: 200 + 200 rounds: as accurate on held-out matmul problems as 300 + 400, at a 2.7 MB artifact
ROUNDS = {"ranker": 200, "quantile": 200}
CQR_FOLDS = 4


@dataclass(frozen=True)
class Sample:
    """One candidate on one problem on one device: the median over its measurements."""

    group: str  # problem key + hardware-features hash: one ranking query
    problem: dict[str, Any]
    candidate: dict[str, Any]
    hw: dict[str, float]
    median_s: float
    n: int  # measurements aggregated


def _jkey(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def samples_from_rows(rows: Iterable[Mapping[str, Any]], op: str | None = None) -> list[Sample]:
    """Aggregate telemetry rows (decoded: JSON columns as objects) into sorted samples; rows that
    are not ``ok`` or have no positive time are dropped."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("status") != "ok" or (op and r.get("op") != op):
            continue
        t = r.get("median_s")
        if t is None or not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            continue
        hw = r["hw_features"] if isinstance(r["hw_features"], Mapping) else json.loads(r["hw_features"])
        g = f"{r['key']}|{hashlib.sha256(_jkey(hw).encode()).hexdigest()[:8]}"
        groups.setdefault((g, r["config_hash"]), []).append(r)
    out = []
    for (g, _), rs in sorted(groups.items()):
        r0 = rs[0]
        dec = lambda v: v if isinstance(v, Mapping) else json.loads(v)  # noqa: E731
        out.append(Sample(
            group=g, problem=dict(dec(r0["problem"])),
            candidate={"backend": r0["backend"], "template": r0["template"], "config": dict(dec(r0["config"]))},
            hw={k: float(v) for k, v in dec(r0["hw_features"]).items()},
            median_s=float(statistics.median(float(r["median_s"]) for r in rs)), n=len(rs),
        ))  # fmt: skip
    return out


def _rows_for(samples: Sequence[Sample]) -> list[Row]:
    cache: dict[str, Row] = {}
    out = []
    for s in samples:
        pk = s.group
        if pk not in cache:
            cache[pk] = problem_features(s.problem, s.hw)
        out.append({**cache[pk], **candidate_features(s.candidate, s.problem, s.hw)})
    return out


def data_hash(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(_jkey([s.group, s.problem, s.candidate, s.hw, repr(s.median_s), s.n]).encode())
        h.update(b"\n")
    return h.hexdigest()


class CostModel:
    """A trained model for one op: :meth:`predict` latency quantiles, :meth:`scores` for ranking."""

    def __init__(self, op: str, features: FeatureSpace, ranker: Any, quantile: Any, meta: dict[str, Any]) -> None:
        self.op, self.features, self.ranker, self.quantile, self.meta = op, features, ranker, quantile, meta

    # ---- training ------------------------------------------------------------------------------
    @classmethod
    def train(cls, samples: Sequence[Sample], op: str, seed: int = 0, rounds: Mapping[str, int] | None = None) -> CostModel:
        import xgboost as xgb

        samples = [s for s in samples if s.problem.get("op") == op]
        groups = sorted({s.group for s in samples})
        if len(groups) < 2 or len(samples) < 10:
            raise ValueError(
                f"need labelled samples of at least 2 problems (10 samples) of op {op!r} to train, got "
                f"{len(samples)} samples of {len(groups)} problems; run `uhop perf collect --op {op}` first"
            )
        samples = sorted(samples, key=lambda s: (s.group, _jkey(s.candidate)))
        rows = _rows_for(samples)
        fs = FeatureSpace.fit(rows)
        X = fs.encode(rows)
        t = np.array([s.median_s for s in samples])
        best: dict[str, float] = {}
        for s in samples:
            best[s.group] = min(best.get(s.group, math.inf), s.median_s)
        rel = np.array([-math.log2(s.median_s / best[s.group]) for s in samples], dtype=np.float32)
        gi = {g: i for i, g in enumerate(groups)}
        qid = np.array([gi[s.group] for s in samples], dtype=np.uint32)
        roof = np.array([r["log_roofline_s"] for r in rows], dtype=np.float64)
        y = (np.log2(t) - roof).astype(np.float32)
        rounds = {**ROUNDS, **(rounds or {})}
        names = [c.replace("[", "(").replace("]", ")").replace("<", "lt") for c in fs.columns]
        d_rank = xgb.DMatrix(X, label=rel, qid=qid, feature_names=names, nthread=1)
        ranker = xgb.train({**RANK_PARAMS, "seed": seed}, d_rank, rounds["ranker"])
        d_q = xgb.DMatrix(X, label=y, feature_names=names, nthread=1)
        quantile = xgb.train({**QUANTILE_PARAMS, "seed": seed}, d_q, rounds["quantile"])
        # Conformalized quantile regression: in-sample quantiles are too narrow, so widen the
        # interval by the level-corrected 80th percentile of out-of-fold conformity scores
        # max(lo - y, y - hi), folds by problem (4, fixed by sorted group order).
        fold = qid % CQR_FOLDS
        scores = np.zeros(len(y))
        for f in range(CQR_FOLDS):
            tr, te = fold != f, fold == f
            if not te.any() or not tr.any():
                continue
            b = xgb.train({**QUANTILE_PARAMS, "seed": seed}, xgb.DMatrix(X[tr], label=y[tr], feature_names=names,
                          nthread=1), rounds["quantile"])  # fmt: skip
            q = np.sort(b.predict(xgb.DMatrix(X[te], feature_names=names, nthread=1)).reshape(int(te.sum()), -1), axis=1)
            scores[te] = np.maximum(q[:, 0] - y[te], y[te] - q[:, -1])
        level = min(1.0, math.ceil((len(y) + 1) * (QUANTILES[-1] - QUANTILES[0])) / len(y))
        widen = float(np.quantile(scores, level, method="higher"))
        meta = {
            "op": op, "feature_set": FEATURE_SET, "seed": seed, "samples": len(samples), "problems": len(groups),
            "measurements": sum(s.n for s in samples), "data_sha256": data_hash(samples),
            "rounds": rounds, "interval_widen_log2": round(widen, 6), "rank_params": RANK_PARAMS, "quantile_params": QUANTILE_PARAMS,
            "xgboost": xgb.__version__, "devices": len({_jkey(s.hw) for s in samples}),
        }  # fmt: skip
        return cls(op, fs, ranker, quantile, meta)

    # ---- persistence ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT, "version": VERSION, "feature_set": FEATURE_SET, "op": self.op,
            "features": self.features.to_json(), "meta": self.meta,
            "ranker": base64.b64encode(bytes(self.ranker.save_raw("ubj"))).decode(),
            "quantile": base64.b64encode(bytes(self.quantile.save_raw("ubj"))).decode(),
        }  # fmt: skip
        return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        import xgboost as xgb

        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"model file {path} is not readable JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"model file {path} is not a UHOP cost model (format != {FORMAT!r})")
        if doc.get("version") != VERSION:
            raise ValueError(f"model file {path} has version {doc.get('version')}, this UHOP reads {VERSION}")
        # A model of another feature set would be handed columns it never saw (or old columns with
        # new meanings) and rank silently wrong: refuse it. Files from before the field are set 1.
        if doc.get("feature_set", 1) != FEATURE_SET:
            raise ValueError(
                f"model file {path} is stale: trained on feature set {doc.get('feature_set', 1)}, this UHOP "
                f"computes feature set {FEATURE_SET}; retrain with `uhop perf train --op {doc.get('op', '<op>')}`"
            )
        boosters = []
        for name in ("ranker", "quantile"):
            b = xgb.Booster(params={"nthread": 1})
            b.load_model(bytearray(base64.b64decode(doc[name])))
            boosters.append(b)
        return cls(doc["op"], FeatureSpace.from_json(doc["features"]), boosters[0], boosters[1], doc["meta"])

    # ---- prediction ----------------------------------------------------------------------------
    def _matrix(self, problem: Any, candidates: Sequence[Candidate | Mapping[str, Any]], hw: Mapping[str, float] | None):
        import xgboost as xgb

        from uhop.problem import Problem

        if not isinstance(problem, Problem):
            problem = Problem.from_json(problem)
        hw = dict(hw) if hw is not None else hardware_features(problem.device)
        prow = problem_features(problem, hw)
        rows = [{**prow, **candidate_features(c, problem, hw)} for c in candidates]
        names = [c.replace("[", "(").replace("]", ")").replace("<", "lt") for c in self.features.columns]
        return xgb.DMatrix(self.features.encode(rows), feature_names=names, nthread=1), float(prow["log_roofline_s"])

    def predict(self, problem: Any, candidates: Sequence[Candidate | Mapping[str, Any]],
                hw: Mapping[str, float] | None = None) -> np.ndarray:  # fmt: skip
        """Predicted latency quantiles in seconds, shape ``(len(candidates), 3)``: 10%, 50%, 90%."""
        if not candidates:
            return np.zeros((0, 3))
        d, roof = self._matrix(problem, candidates, hw)
        q = np.sort(np.asarray(self.quantile.predict(d), dtype=np.float64).reshape(len(candidates), -1), axis=1)
        w = float(self.meta.get("interval_widen_log2", 0.0))
        q[:, 0] -= w
        q[:, -1] += w
        return np.exp2(q + roof)

    def scores(self, problem: Any, candidates: Sequence[Candidate | Mapping[str, Any]],
               hw: Mapping[str, float] | None = None) -> np.ndarray:  # fmt: skip
        """Ranking scores (higher = predicted faster), one per candidate."""
        if not candidates:
            return np.zeros(0)
        d, _ = self._matrix(problem, candidates, hw)
        return np.asarray(self.ranker.predict(d), dtype=np.float64)


# ---- the tuner-facing API --------------------------------------------------------------------------
def model_path(op: str) -> Path:
    from uhop.config import settings

    return settings().home / "models" / f"costmodel-{op}.json"


_loaded: dict[str, tuple[float, CostModel | None]] = {}


def load_model(op: str) -> CostModel | None:
    """The trained model for ``op`` (cached per file modification time), or None."""
    path = model_path(op)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    cached = _loaded.get(str(path))
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        model = CostModel.load(path)
    except Exception as exc:
        log.warning("cost model %s not usable: %s", path, exc)
        model = None
    _loaded[str(path)] = (mtime, model)
    return model


def rank(problem: Any, candidates: Sequence[Candidate]) -> list[tuple[Candidate, float]]:
    """``candidates`` ordered best-first by the trained model, each with its predicted median
    latency in seconds. Without a model for ``problem.op`` (or on any error) the given order is
    returned unchanged with ``nan`` predictions. Ties keep the given order (stable sort)."""
    cands = list(candidates)
    model = load_model(problem.op) if cands else None
    if model is None:
        return [(c, math.nan) for c in cands]
    try:
        s = model.scores(problem, cands)
        med = model.predict(problem, cands)[:, 1]
    except Exception as exc:
        log.warning("cost model ranking failed, keeping the given order: %s", exc)
        return [(c, math.nan) for c in cands]
    order = sorted(range(len(cands)), key=lambda i: -s[i])
    return [(cands[i], float(med[i])) for i in order]


def prune(problem: Any, candidates: Sequence[Candidate], keep: float = 1 / 3, min_keep: int = 1) -> list[Candidate]:
    """The best-ranked ``floor(keep * n)`` (at least ``min_keep``, at least 1) candidates, best
    first, so ``keep=1/3`` cuts evaluations at least 3x; all of them, in the given order, without
    a model. Never returns an empty list for a non-empty input."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    ranked = rank(problem, candidates)
    if ranked and math.isnan(ranked[0][1]):
        return [c for c, _ in ranked]
    k = max(min_keep, 1, int(keep * len(ranked)))
    return [c for c, _ in ranked[:k]]


class SurrogateModel:
    """The trained model behind the surrogate strategy's ``cost_model`` protocol
    (``update(X, y)``, ``predict(X) -> scores``, lower is better, ``X`` = ``space.encode(cfg)``):
    each vector is decoded to its candidate and scored with the predicted log2 median latency.

    The trained model is a prior learned from telemetry (other problems, other days); ``update``
    learns this search's own measurements on top of it: the residual ``log2(measured) -
    log2(predicted)`` of every measured config, spread to unmeasured configs by an
    inverse-distance-weighted mean over the nearest measured ones (so a config next to several
    that ran 2x slower than predicted is expected 2x slower too). A vector that does not decode
    to a valid config scores ``inf``."""

    def __init__(self, problem: Any, space: Any, model: CostModel) -> None:
        self.problem, self.space, self.model = problem, space, model
        self._residual: Any = None

    def _prior(self, X: Sequence[Sequence[float]]) -> list[float]:
        cands: list[Candidate | None] = []
        for x in X:
            try:
                cfg = self.space.decode(x)
                cands.append(self.space.candidate(cfg) if self.space.is_valid(cfg) else None)
            except Exception:
                cands.append(None)
        ok = [c for c in cands if c is not None]
        try:
            med = iter(np.log2(self.model.predict(self.problem, ok)[:, 1]).tolist()) if ok else iter(())
        except Exception as exc:
            log.warning("cost model prediction failed: %s", exc)
            return [0.0] * len(X)
        return [next(med) if c is not None else math.inf for c in cands]

    def update(self, X: Sequence[Sequence[float]], y: Sequence[float]) -> None:
        from uhop.tune.strategies.surrogate import NearestNeighbours

        prior = self._prior(X)
        pts = [(list(x), math.log2(v) - p) for x, v, p in zip(X, y, prior, strict=True)
               if math.isfinite(v) and v > 0 and math.isfinite(p)]  # fmt: skip
        if not pts:
            return
        nn = NearestNeighbours(self.space.bounds())
        nn.X = [nn._scale(x) for x, _ in pts]
        nn.y = [r for _, r in pts]  # residuals in log2 units, averaged as they are
        self._residual = nn

    def predict(self, X: Sequence[Sequence[float]]) -> list[float]:
        prior = self._prior(X)
        if self._residual is None:
            return prior
        corr = self._residual.predict(X)
        return [p + c if math.isfinite(p) else p for p, c in zip(prior, corr, strict=True)]


def surrogate_model(problem: Any, space: Any) -> SurrogateModel | None:
    """A ``cost_model=`` for :class:`uhop.tune.strategies.surrogate.Surrogate` on ``problem``, or
    None when no model is trained for the op (the strategy then uses its built-in model)."""
    model = load_model(problem.op)
    return SurrogateModel(problem, space, model) if model is not None else None


def load_rows(store: Any = None, data: Sequence[str | Path] = (), op: str | None = None) -> list[dict[str, Any]]:
    """Telemetry rows from exported files (``.parquet`` / ``.jsonl``) if given, else the store."""
    from uhop.perf.telemetry import JSON_COLUMNS, telemetry_db

    if not data:
        from uhop.store import open_store

        return telemetry_db(store or open_store()).rows(op)
    out: list[dict[str, Any]] = []
    for f in data:
        f = Path(f)
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            recs = pq.read_table(f).to_pylist()
        elif f.suffix in (".jsonl", ".json"):
            recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        else:
            raise ValueError(f"data file {f}: expected .parquet or .jsonl")
        for r in recs:
            for c in JSON_COLUMNS:
                if isinstance(r.get(c), str):
                    r[c] = json.loads(r[c])
            if op is None or r.get("op") == op:
                out.append(r)
    return out


def train(op: str, *, store: Any = None, data: Sequence[str | Path] = (), seed: int = 0,
          out: str | Path | None = None) -> tuple[CostModel, Path]:  # fmt: skip
    """Train on the telemetry of ``op`` and save to ``out`` (default :func:`model_path`)."""
    model = CostModel.train(samples_from_rows(load_rows(store, data, op), op), op, seed)
    return model, model.save(out or model_path(op))
