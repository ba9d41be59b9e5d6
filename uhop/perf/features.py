"""Features for the cost model: what the problem is, what the candidate is, what the device is.

Three flat dicts, one per source, merged into one row per measurement:

- :func:`problem_features`: log2 of each canonical dim, log2 FLOPs and bytes (from the op's own
  counts), arithmetic intensity, itemsize, op params, and *device-relative* figures: the roofline
  time ``max(flops / peak, bytes / bandwidth)`` and the working set over L2 / L3. These are what
  let a model trained on one device rank candidates on another (a tree cannot extrapolate in raw
  shape, but it can in "how far above the roofline" and "does it fit in cache").
- :func:`candidate_features`: backend and template (categorical), config values (numbers as log2,
  booleans as 0/1, strings categorical).
- :func:`hardware_features`: cores usable by this process, SIMD width, clock, cache sizes, peak
  FLOP/s and memory bandwidth, read from the hardware manifest (``uhop.hardware.get_capabilities``)
  when it is available, else from py-cpuinfo; figures nobody knows are left out (NaN for the model).

Rows are plain ``dict[str, float | str]``; :class:`FeatureSpace` fixes the column order and the
categorical vocabulary once (at training) so encoding is identical at prediction time.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from uhop.backends.base import Candidate
from uhop.ops.base import ITEMSIZE
from uhop.problem import Problem

Row = dict[str, float | str]

#: the feature set's version, saved with every trained model: bump it whenever a feature is added,
#: removed or changes meaning, so that a model trained on another set is refused (stale), never
#: fed columns it was not trained on. 2: the tiled family's loop-nest features (loop starts and
#: vector steps per FMA, tile intensity, B-tile and C-row footprints over L1/L2).
FEATURE_SET = 2

#: hardware feature names (all numeric; absent when unknown)
HW_KEYS = (
    "hw_cores", "hw_vector_bits", "hw_fma_units", "hw_clock_hz", "hw_l1_bytes", "hw_l2_bytes",
    "hw_l3_bytes", "hw_peak_fp32", "hw_peak_fp64", "hw_bandwidth",
)  # fmt: skip


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else 0.0


def _val(obj: Any, path: str) -> float | None:
    """A figure's value by dotted attribute path on a manifest-like object (None if absent)."""
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part, None)
        if obj is None:
            return None
    obj = getattr(obj, "value", obj)
    return float(obj) if isinstance(obj, (int, float)) and not isinstance(obj, bool) else None


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@functools.cache
def _cpuinfo() -> dict[str, Any]:
    try:
        import cpuinfo

        return dict(cpuinfo.get_cpu_info())
    except Exception:  # py-cpuinfo is a core dependency, but a broken probe must not break tuning
        return {}


def _manifest(device: str) -> Any:
    try:
        from uhop.hardware import get_capabilities  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        return get_capabilities(device=device)
    except Exception:  # detection failing must not stop tuning: fall back to py-cpuinfo
        return None


@functools.cache
def _hardware_features(device: str, cores: int) -> tuple[tuple[str, float], ...]:
    hw: dict[str, float | None] = {k: None for k in HW_KEYS}
    m = _manifest(device)
    if m is not None:
        hw["hw_vector_bits"] = _val(m, "cpu.vector_width_bits")
        hw["hw_fma_units"] = _val(m, "cpu.fma_units_per_core")
        hw["hw_clock_hz"] = _val(m, "clocks.boost_hz") or _val(m, "clocks.base_hz")
        hw["hw_l1_bytes"] = _val(m, "caches.l1_bytes")
        hw["hw_l2_bytes"] = _val(m, "caches.l2_bytes")
        hw["hw_l3_bytes"] = _val(m, "caches.l3_bytes")
        for key, dt in (("hw_peak_fp32", "fp32"), ("hw_peak_fp64", "fp64")):
            fn = getattr(m, "peak_flops", None)
            try:
                hw[key] = float(fn(dt)) if callable(fn) and fn(dt) else None
            except Exception:
                hw[key] = None
        fn = getattr(m, "peak_bandwidth", None)
        try:
            hw["hw_bandwidth"] = float(fn()) if callable(fn) and fn() else None
        except Exception:
            hw["hw_bandwidth"] = None
    if device == "cpu":
        needed = ("hw_vector_bits", "hw_fma_units", "hw_clock_hz", "hw_l1_bytes", "hw_l2_bytes", "hw_l3_bytes")
        info = _cpuinfo() if any(hw[k] is None for k in needed) else {}  # py-cpuinfo takes ~1 s
        flags = set(info.get("flags", ()))
        # The process's affinity, not the socket's core count: the manifest's peaks assume every
        # core, but a process pinned to fewer cores (taskset, cgroups) gets only its share.
        hw["hw_cores"] = float(cores)
        if hw["hw_vector_bits"] is None:
            hw["hw_vector_bits"] = 512.0 if "avx512f" in flags else 256.0 if "avx2" in flags else 128.0
        if hw["hw_fma_units"] is None:
            hw["hw_fma_units"] = 2.0 if "fma" in flags or "avx512f" in flags else 1.0
        if hw["hw_clock_hz"] is None:
            hz = info.get("hz_advertised") or info.get("hz_actual")
            hw["hw_clock_hz"] = float(hz[0]) if hz and hz[0] else None
        for key, ck in (("hw_l1_bytes", "l1_data_cache_size"), ("hw_l2_bytes", "l2_cache_size"),
                        ("hw_l3_bytes", "l3_cache_size")):  # fmt: skip
            if hw[key] is None and isinstance(info.get(ck), int) and info[ck] > 0:
                hw[key] = float(info[ck])
        total = float(os.cpu_count() or cores)
        share = cores / total if total else 1.0
        if hw["hw_peak_fp32"] is None and hw["hw_clock_hz"]:
            # derived upper bound: cores x clock x FMA units x 2 FLOP x fp32 lanes
            hw["hw_peak_fp32"] = cores * hw["hw_clock_hz"] * hw["hw_fma_units"] * 2 * hw["hw_vector_bits"] / 32
        elif hw["hw_peak_fp32"] is not None:
            hw["hw_peak_fp32"] *= share
        if hw["hw_peak_fp64"] is None and hw["hw_peak_fp32"]:
            hw["hw_peak_fp64"] = hw["hw_peak_fp32"] / 2
        elif hw["hw_peak_fp64"] is not None:
            hw["hw_peak_fp64"] *= share
        if hw["hw_bandwidth"] is None:
            # Unknown DRAM bandwidth: ~10 GB/s per core (a typical single-core stream figure),
            # only so the roofline feature exists; `uhop hw probe` replaces it with a measurement.
            hw["hw_bandwidth"] = 10e9 * cores
        else:
            hw["hw_bandwidth"] *= share
    return tuple((k, float(v)) for k, v in hw.items() if v is not None and math.isfinite(v))


def hardware_features(device: str = "cpu") -> dict[str, float]:
    """Manifest figures of ``device`` as seen by this process (cores = CPU affinity)."""
    return dict(_hardware_features(device, _usable_cores() if device == "cpu" else 0))


def problem_features(problem: Problem | Mapping[str, Any], hw: Mapping[str, float]) -> Row:
    """Shape, counts and device-relative figures of a problem (a :class:`Problem` or its JSON)."""
    if not isinstance(problem, Problem):
        problem = Problem.from_json(problem)
    row: Row = {"op": problem.op, "dtype": problem.dtype, "layout": problem.layout, "arity": float(problem.arity)}
    for name, v in problem.dims:
        row[f"dim_{name}"] = _log2(v)
    flops, nbytes = problem.flops(), problem.bytes()
    item = ITEMSIZE.get(problem.dtype, 4)
    row.update(
        log_flops=_log2(flops), log_bytes=_log2(nbytes), intensity=_log2(flops / nbytes if nbytes else 0.0),
        itemsize=float(item),
    )  # fmt: skip
    for k, v in problem.params:
        if isinstance(v, bool):
            row[f"param_{k}"] = float(v)
        elif isinstance(v, (int, float)):
            row[f"param_{k}"] = float(v)
        elif isinstance(v, str) and len(v) <= 64:
            row[f"param_{k}"] = v
    for k, v in hw.items():
        row[k] = _log2(v) if v > 16 else v  # sizes and rates as log2; small counts as they are
    peak = hw.get("hw_peak_fp64" if problem.dtype == "float64" else "hw_peak_fp32")
    bw = hw.get("hw_bandwidth")
    roof = max(flops / peak if peak else 0.0, nbytes / bw if bw else 0.0)
    row["log_roofline_s"] = math.log2(roof) if roof > 0 else -40.0
    for level in ("l2", "l3"):
        size = hw.get(f"hw_{level}_bytes")
        if size:
            row[f"ws_over_{level}"] = _log2(nbytes) - _log2(size)
    return row


def roofline_s(problem: Problem | Mapping[str, Any], hw: Mapping[str, float]) -> float:
    """Lower bound on latency in seconds from the device's peaks (2**-40 s when unknown)."""
    return 2.0 ** float(problem_features(problem, hw)["log_roofline_s"])


#: backend name -> "module:function(config, dims, itemsize, hw) -> dict": features of how a
#: config meets a problem (tiles per core, footprint over L1...), for kernel families that know
CONFIG_FEATURES = {"tiled": "uhop.perf.family:config_features"}


def candidate_features(candidate: Candidate | Mapping[str, Any], problem: Problem | Mapping[str, Any] | None = None,
                       hw: Mapping[str, float] | None = None) -> Row:  # fmt: skip
    """Backend, template and config of a candidate; with ``problem`` and ``hw``, also the
    family's config-meets-problem features (:data:`CONFIG_FEATURES`)."""
    if isinstance(candidate, Candidate):
        candidate = candidate.to_json()
    row: Row = {"backend": str(candidate["backend"]), "template": f"{candidate['backend']}/{candidate['template']}"}
    for k, v in sorted(dict(candidate.get("config", {})).items()):
        if isinstance(v, bool):
            row[f"cfg_{k}"] = float(v)
        elif isinstance(v, (int, float)):
            row[f"cfg_{k}"] = _log2(v + 1) if v >= 0 else float(v)
        else:
            row[f"cfg_{k}"] = str(v)
    target = CONFIG_FEATURES.get(row["backend"])  # type: ignore[arg-type]
    if target and problem is not None and hw is not None:
        import importlib

        if not isinstance(problem, Problem):
            problem = Problem.from_json(problem)
        mod, fn = target.split(":")
        try:
            extra = getattr(importlib.import_module(mod), fn)(candidate.get("config", {}), problem.dim,
                                                              ITEMSIZE.get(problem.dtype, 4), hw)  # fmt: skip
        except Exception:  # a config the family cannot describe gets no extra features
            extra = {}
        row.update({k: float(v) for k, v in extra.items()})
    return row


def row_for(problem: Problem | Mapping[str, Any], candidate: Candidate | Mapping[str, Any], hw: Mapping[str, float]) -> Row:
    return {**problem_features(problem, hw), **candidate_features(candidate, problem, hw)}


class FeatureSpace:
    """Column order and categorical vocabulary, fixed from training rows.

    A numeric feature is one column; a categorical feature ``name`` with value ``v`` is a one-hot
    column ``name=v``. Values not seen in training encode as all-zero one-hots; missing numbers
    encode as NaN (the trees' default direction)."""

    def __init__(self, numeric: Sequence[str], categorical: Mapping[str, Sequence[str]]) -> None:
        self.numeric = tuple(sorted(numeric))
        self.categorical = {k: tuple(sorted(v)) for k, v in sorted(categorical.items())}
        self.columns = list(self.numeric) + [f"{k}={v}" for k, vs in self.categorical.items() for v in vs]
        self._index = {c: i for i, c in enumerate(self.columns)}

    @classmethod
    def fit(cls, rows: Iterable[Row]) -> FeatureSpace:
        numeric: set[str] = set()
        cats: dict[str, set[str]] = {}
        for r in rows:
            for k, v in r.items():
                if isinstance(v, str):
                    cats.setdefault(k, set()).add(v)
                else:
                    numeric.add(k)
        clash = numeric & set(cats)
        if clash:  # a feature seen both as number and text: keep it categorical
            numeric -= clash
        return cls(sorted(numeric), {k: sorted(v) for k, v in cats.items()})

    def encode(self, rows: Sequence[Row]) -> np.ndarray:
        X = np.full((len(rows), len(self.columns)), np.nan, dtype=np.float32)
        for k in self.categorical:
            for v in self.categorical[k]:
                X[:, self._index[f"{k}={v}"]] = 0.0
        for i, r in enumerate(rows):
            for k, v in r.items():
                if isinstance(v, str):
                    j = self._index.get(f"{k}={v}")
                    if j is not None:
                        X[i, j] = 1.0
                else:
                    j = self._index.get(k)
                    if j is not None and v is not None and math.isfinite(v):
                        X[i, j] = v
        return X

    def to_json(self) -> dict[str, Any]:
        return {"numeric": list(self.numeric), "categorical": {k: list(v) for k, v in self.categorical.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FeatureSpace:
        return cls(d["numeric"], d["categorical"])
