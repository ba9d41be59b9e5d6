"""Learned cost model for matmul on this CPU: collect, train, evaluate on held-out problems.

Data (genuine measurements, this machine): problems drawn from a seeded suite of matmul shapes
(float32, dims 1..1024 incl. primes and tile non-multiples, <= 1.6e7 FLOP); per problem every
registered CPU candidate (numpy BLAS, torch, numba BLAS+epilogue variants, IREE tiled configs)
plus 16 sampled configs of the tiled numba family (``uhop.perf.family``), each validated against
float64 and timed by the one benchmark function, reading the process's CPU time with every
thread pool at 1 and the process pinned to one core: this 2-core VM is shared with other jobs (load
average 5-11), and wall-clock timings of the same candidates disagree run to run (see the noise
ceilings in the results).

- ``train``: seed 1, ``--train`` problems, one pass.
- ``heldout``: seed 2, problems whose dims never occur in ``train``, two passes (candidate order
  reshuffled), labelled with the median over passes; pass-to-pass agreement = noise ceiling.
- ``heldout_avx2``: the held-out problems on a second "device": this CPU restricted to AVX2
  (OpenBLAS Haswell kernels, numba/torch compiled for AVX2; no IREE), with the AVX2 manifest's
  features. A second ISA, not a second chip: no other device was available.
- ``heldout_wall2``: the default protocol (wall clock, both cores, 2-thread pools) under the
  machine's load -- what the timings look like without the protocol above.

Reported per set: overall ranking (Spearman over all of a problem's candidates, top-1 within
10%, pruning loss) and within each template family with >= 5 configs per problem (only the tiled
numba family here), with the family's pass-to-pass noise ceiling, and the spread over 5 model
seeds (within a family, a seed moves the mean as much as a feature change does).

    python benchmarks/costmodel.py collect     # ~15 min on 2 cores (sets in parallel: --only NAME --core N)
    python benchmarks/costmodel.py evaluate    # ~2 min; writes benchmarks/results/costmodel_matmul.json
    # before/after a feature change: run this script on the old package, keep it as "before"
    PYTHONPATH=OLD_TREE python benchmarks/costmodel.py evaluate --out before.json
    python benchmarks/costmodel.py evaluate --before before.json --before-note "what it was"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
RESULTS = ROOT / "results"
OP = "matmul"
#: short benchmarks: the thread-CPU clock needs few samples; the held-out set is measured twice
BENCH = dict(bench_min_s=0.01, bench_repeat=3, validation_trials=2)
FLOP_CAP = 1.6e7


def _store(path: Path):
    from uhop.store import SQLiteStore

    return SQLiteStore(path)


def _collect_set(name: str, problems, seed: int, passes: int, family_n: int, timer: str, hw=None, tag: str = "") -> None:
    import random

    from uhop import config
    from uhop.perf import telemetry
    from uhop.perf.collect import candidates_for, measure_problem

    tmp = Path(tempfile.mkdtemp(prefix=f"uhop-cm-{name}-"))
    store = _store(tmp / "uhop.db")
    rng = random.Random(seed)
    t0 = time.monotonic()
    plan = [(p, candidates_for(p, rng, family_n)) for p in problems]
    with config.override(home=tmp, **BENCH):
        for k in range(passes):
            for i, (p, cands) in enumerate(plan):
                order = list(cands)
                random.Random(seed * 1000 + k * 100 + i).shuffle(order)
                ms = measure_problem(p, order, store=store, source=f"collect:{name}:pass{k}", timer=timer,
                                    hw=hw)  # fmt: skip
                ok = sum(m.ok for m in ms)
                print(f"[{name} pass {k}] {i + 1}/{len(plan)} {p.describe()}: {ok}/{len(ms)} ok "
                      f"({time.monotonic() - t0:.0f}s)", flush=True)  # fmt: skip
    DATA.mkdir(parents=True, exist_ok=True)
    out = DATA / f"costmodel_{name}{tag}.parquet"
    n = telemetry.export(store, out, "parquet")
    print(f"{name}: {n} rows -> {out} in {time.monotonic() - t0:.0f}s", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


#: name -> (suite, passes, timer, single core): the 1-core sets read the thread's CPU time with
#: every thread pool at 1 and the process pinned to one core, so a busy shared machine preempting
#: the kernel does not count; ``heldout_wall2`` is the default protocol (wall clock, both cores).
SETS = {
    "train": ("train", 1, "process-cpu", True),
    "heldout": ("heldout", 2, "process-cpu", True),
    "heldout_avx2": ("heldout", 2, "process-cpu", True),
    "heldout_wall2": ("heldout", 2, "wall", False),
}
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
#: a second device: this CPU restricted to AVX2 code (OpenBLAS Haswell kernels, numba and torch
#: compiled for AVX2; IREE left out since it compiles for the host ISA), with the manifest
#: features of the AVX2 manifest (256-bit vectors: half the peak FLOP/s).
AVX2_ENV = {
    "OPENBLAS_CORETYPE": "Haswell", "NUMBA_CPU_NAME": "haswell", "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "UHOP_BACKENDS": "numpy,torch,numba",
}  # fmt: skip


def _avx2_hw() -> dict:
    from uhop.hardware import get_capabilities
    from uhop.perf.features import hardware_features

    hw = hardware_features("cpu")
    bits = float(get_capabilities("x86-64-avx2").cpu.vector_width_bits.value)
    scale = bits / hw["hw_vector_bits"]
    return {**hw, "hw_vector_bits": bits, "hw_peak_fp32": hw["hw_peak_fp32"] * scale,
            "hw_peak_fp64": hw["hw_peak_fp64"] * scale}  # fmt: skip


def collect(args) -> None:
    from uhop.perf.collect import problem_suite

    suites = {"train": problem_suite(OP, args.train, seed=1, flop_cap=FLOP_CAP)}
    suites["heldout"] = problem_suite(OP, args.heldout, seed=2, exclude=suites["train"], flop_cap=FLOP_CAP)
    for name, (suite, passes, timer, single) in SETS.items():
        if args.only not in (None, name):
            continue
        passes = args.passes or passes
        if single and not args.child:
            env = {**os.environ, **ONE_THREAD, **(AVX2_ENV if name == "heldout_avx2" else {})}
            cmd = ["taskset", "-c", str(args.core), sys.executable, __file__, "collect", "--only", name, "--child",
                   "--train", str(args.train), "--heldout", str(args.heldout), "--family", str(args.family),
                   "--passes", str(passes), "--tag", args.tag]  # fmt: skip
            subprocess.run(cmd, env=env, check=True)
        else:
            hw = _avx2_hw() if name == "heldout_avx2" else None
            _collect_set(name, suites[suite], {"train": 1, "heldout": 2}[suite], passes, args.family, timer, hw,
                         tag=f"_{args.tag}" if args.tag else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["collect", "evaluate"])
    ap.add_argument("--train", type=int, default=60, help="training problems")
    ap.add_argument("--heldout", type=int, default=20, help="held-out problems")
    ap.add_argument("--family", type=int, default=16, help="tiled-family configs sampled per problem")
    ap.add_argument("--only", choices=list(SETS))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--passes", type=int, default=0,
                    help="collect: passes per set (default: the set's own, 1 train / 2 held-out); labels are "
                         "the median over passes")
    ap.add_argument("--tag", default="", help="collect: suffix of the data files written (costmodel_SET_TAG.parquet); "
                                              "evaluate: read the train/heldout sets of that tag where they exist")
    ap.add_argument("--core", type=int, default=1, help="core the one-thread sets are pinned to")
    ap.add_argument("--seed", type=int, default=0, help="model seed")
    ap.add_argument("--seeds", type=int, default=5, help="evaluate: model seeds for the seed-spread figures")
    ap.add_argument("--out", type=Path, default=RESULTS / f"costmodel_{OP}.json", help="evaluate: result file")
    ap.add_argument("--before", type=Path, help="evaluate: an earlier result file whose summaries to keep as 'before'")
    ap.add_argument("--before-note", default="", help="evaluate: what the 'before' run was (code, command)")
    args = ap.parse_args()
    if args.phase == "collect":
        collect(args)
    else:
        evaluate(args)


def _groups(samples):
    out: dict[str, list] = {}
    for s in samples:
        out.setdefault(s.group, []).append(s)
    return out


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


#: a template family (backend/template) is ranked on its own where a problem has at least this
#: many of its configs (only the tiled numba family has that many in this data: 16 per problem)
FAMILY_MIN = 5


def _family(s) -> str:
    return f"{s.candidate['backend']}/{s.candidate['template']}"


def _ckey(s) -> tuple[str, str]:
    return s.group, json.dumps(s.candidate, sort_keys=True)


def _pass_times(rows) -> dict[str, dict[tuple[str, str], float]]:
    """pass name -> (group, candidate) -> median seconds of that pass alone (held-out sets have two)."""
    from uhop.perf.model import samples_from_rows

    out = {}
    for p in sorted({r["source"].rsplit(":", 1)[-1] for r in rows}):
        out[p] = {_ckey(s): s.median_s for s in samples_from_rows([r for r in rows if r["source"].endswith(":" + p)], OP)}
    return out


def _family_metrics(ss, score, t, passes) -> dict:
    """Within-family ranking of one problem: each family with >= FAMILY_MIN configs, its model
    scores against the labels (median over passes) and against each pass alone (the scale of the
    pass-to-pass noise ceiling)."""
    fams: dict[str, list[int]] = {}
    for i, s in enumerate(ss):
        fams.setdefault(_family(s), []).append(i)
    out = {}
    for f, ix in sorted(fams.items()):
        if len(ix) < FAMILY_MIN:
            continue
        d = {"n": len(ix), "spearman": _spearman([score[i] for i in ix], [-t[i] for i in ix]),
             "top1_ratio": float(t[max(ix, key=lambda i: score[i])] / min(t[i] for i in ix))}  # fmt: skip
        single = []
        for pt in (passes or {}).values():
            ok = [i for i in ix if _ckey(ss[i]) in pt]
            single.append(_spearman([score[i] for i in ok], [-pt[_ckey(ss[i])] for i in ok]))
        single = [v for v in single if not math.isnan(v)]
        if len(single) >= 2:
            d["spearman_vs_single_pass"] = float(statistics.fmean(single))
        out[f] = d
    return out


def _problem_metrics(model, ss, keep_fracs=(1 / 3, 1 / 4), passes=None) -> dict:
    """Metrics of one held-out problem's candidates ``ss`` (samples with measured medians);
    ``passes`` (from :func:`_pass_times`) adds within-family agreement with each pass alone."""
    from uhop.backends.base import Candidate

    cands = [Candidate.from_json(s.candidate) for s in ss]
    t = np.array([s.median_s for s in ss])
    hw = ss[0].hw
    score = model.scores(ss[0].problem, cands, hw)
    q = model.predict(ss[0].problem, cands, hw)
    order = np.argsort(-score, kind="stable")
    best = t.min()
    out = {
        "n": len(ss), "best_s": float(best),
        "spearman": _spearman(list(score), list(-t)),
        "spearman_quantile_median": _spearman(list(-q[:, 1]), list(-t)),
        "top1_ratio": float(t[order[0]] / best),
        "covered80": float(np.mean((q[:, 0] <= t) & (t <= q[:, 2]))),
        "abs_log2_err_median": float(np.median(np.abs(np.log2(q[:, 1] / t)))),
    }  # fmt: skip
    rng = np.random.default_rng(0)
    for f in keep_fracs:
        k = max(1, int(f * len(ss)))  # floor: at least a 1/f cut in evaluations
        name = f"prune_{round(1 / f)}x"
        out[f"{name}_loss"] = float(t[order[:k]].min() / best - 1)
        out[f"{name}_evals"] = k
        # the same budget spent on random candidates (what pruning has to beat)
        out[f"{name}_random_loss"] = float(np.mean([t[rng.choice(len(t), k, replace=False)].min() / best - 1
                                                    for _ in range(200)]))  # fmt: skip
    out["family"] = _family_metrics(ss, score, t, passes)
    # kept as it was (the tiled family, >= 3 configs); "family" generalises it
    tiled = [i for i, s in enumerate(ss) if s.candidate["backend"] == "tiled"]
    if len(tiled) >= 3:
        out["spearman_tiled_only"] = _spearman([score[i] for i in tiled], [-t[i] for i in tiled])
        tb = min(t[i] for i in tiled)
        out["top1_ratio_tiled_only"] = float(t[max(tiled, key=lambda i: score[i])] / tb)
    # what the fast policy sees: registered backends only (the tiled family is not registered)
    reg = [i for i, s in enumerate(ss) if s.candidate["backend"] != "tiled"]
    if len(reg) >= 2:
        out["top1_ratio_registered"] = float(t[max(reg, key=lambda i: score[i])] / min(t[i] for i in reg))
    # the heuristic the fast policy uses today for matmul: vendor backends first, registry order
    vendor = [i for i, s in enumerate(ss) if s.candidate["backend"] in ("numpy", "torch")]
    if vendor:
        first = min(vendor, key=lambda i: ("numpy", "torch").index(ss[i].candidate["backend"]))
        out["heuristic_top1_ratio"] = float(t[first] / min(t[i] for i in reg))  # vs the registered best
    return {k: v for k, v in out.items() if v is not None}


def _summary(per: list[dict]) -> dict:
    def mean(key):
        vals = [p[key] for p in per if key in p and not math.isnan(p[key])]
        return float(statistics.fmean(vals)) if vals else None

    def share(key, cond):
        vals = [p[key] for p in per if key in p]
        return float(sum(cond(v) for v in vals) / len(vals)) if vals else None

    return {
        "problems": len(per),
        "spearman_mean": mean("spearman"),
        "spearman_median": float(statistics.median([p["spearman"] for p in per if not math.isnan(p["spearman"])])),
        "spearman_quantile_median_mean": mean("spearman_quantile_median"),
        "top1_within_10pct": share("top1_ratio", lambda r: r <= 1.10),
        "top1_ratio_geomean": float(math.exp(statistics.fmean(math.log(p["top1_ratio"]) for p in per))),
        "heuristic_top1_within_10pct": share("heuristic_top1_ratio", lambda r: r <= 1.10),
        "top1_registered_within_10pct": share("top1_ratio_registered", lambda r: r <= 1.10),
        "candidates_mean": float(statistics.fmean(p["n"] for p in per)),
        "prune_3x_evals_mean": mean("prune_3x_evals"),
        "prune_3x_eval_cut": float(sum(p["n"] for p in per) / sum(p["prune_3x_evals"] for p in per)),
        "prune_3x_loss_mean": mean("prune_3x_loss"),
        "prune_3x_loss_median": float(statistics.median(p["prune_3x_loss"] for p in per)),
        "prune_3x_random_loss_mean": mean("prune_3x_random_loss"),
        "prune_3x_within_3pct": share("prune_3x_loss", lambda v: v <= 0.03),
        "prune_4x_eval_cut": float(sum(p["n"] for p in per) / sum(p["prune_4x_evals"] for p in per)),
        "prune_4x_loss_mean": mean("prune_4x_loss"),
        "prune_4x_random_loss_mean": mean("prune_4x_random_loss"),
        "prune_4x_within_3pct": share("prune_4x_loss", lambda v: v <= 0.03),
        "interval80_coverage": mean("covered80"),
        "abs_log2_err_median_mean": mean("abs_log2_err_median"),
        "spearman_tiled_only_mean": mean("spearman_tiled_only"),
        "top1_tiled_only_within_10pct": share("top1_ratio_tiled_only", lambda r: r <= 1.10),
        "families": _family_summary(per),
    }  # fmt: skip


def _family_summary(per: list[dict]) -> dict:
    """Per template family (>= FAMILY_MIN configs in a problem): mean within-family Spearman
    against the labels and against single passes, and the share of problems whose top-ranked
    config is within 10% of the family's best."""
    out = {}
    for f in sorted({f for p in per for f in p.get("family", {})}):
        ds = [p["family"][f] for p in per if f in p.get("family", {})]

        def mean(key, ds=ds):
            vals = [d[key] for d in ds if key in d and not math.isnan(d[key])]
            return float(statistics.fmean(vals)) if vals else None

        out[f] = {"problems": len(ds), "configs_mean": mean("n"), "spearman_mean": mean("spearman"),
                  "spearman_vs_single_pass_mean": mean("spearman_vs_single_pass"),
                  "top1_within_10pct": float(statistics.fmean(d["top1_ratio"] <= 1.10 for d in ds))}  # fmt: skip
    return out


def _noise_ceiling(rows) -> dict:
    """Rank agreement of the two held-out passes with each other, over all candidates and within
    each template family (>= FAMILY_MIN configs measured in both passes).

    Pass-to-pass Spearman ``r`` is how well a re-measurement ranks: a model's agreement with one
    pass (``spearman_vs_single_pass``) is on the same scale. A model that knew the noise-free
    order could do better than ``r``: by the test-retest bound (Pearson, independent noise;
    approximate for Spearman) up to ``sqrt(r)`` against one pass and ``sqrt(2r / (1 + r))``
    against the two-pass median the labels are; both given per family, averaged over problems."""
    by: dict[tuple[str, str], dict[str, float]] = {}
    fam_by: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in rows:
        if r["status"] == "ok" and r["median_s"]:
            by.setdefault((r["key"], r["source"].rsplit(":", 1)[-1]), {})[r["config_hash"]] = r["median_s"]
            f = f"{r['backend']}/{r['template']}"
            fam_by.setdefault((f, r["key"], r["source"].rsplit(":", 1)[-1]), {})[r["config_hash"]] = r["median_s"]
    families: dict[str, list[float]] = {}
    for f, k in sorted({(f, k) for f, k, _ in fam_by}):
        a, b = fam_by.get((f, k, "pass0"), {}), fam_by.get((f, k, "pass1"), {})
        common = sorted(set(a) & set(b))
        if len(common) >= FAMILY_MIN:
            rho = _spearman([a[c] for c in common], [b[c] for c in common])
            if not math.isnan(rho):
                families.setdefault(f, []).append(rho)
    n_pass = len({r["source"].rsplit(":", 1)[-1] for r in rows}) or 1

    def sb(r: float, n: int) -> float:  # Spearman-Brown: the bound against the mean of n passes
        r = max(r, 0.0)
        return math.sqrt(n * r / (1 + (n - 1) * r))

    fam_out = {
        f: {"problems": len(rs), "pass_to_pass_spearman_mean": float(statistics.fmean(rs)), "passes": n_pass,
            "bound_vs_label": float(statistics.fmean(sb(r, n_pass) for r in rs)),
            "bound_vs_single_pass": float(statistics.fmean(math.sqrt(max(r, 0.0)) for r in rs)),
            "bound_vs_two_pass_median": float(statistics.fmean(math.sqrt(2 * max(r, 0.0) / (1 + max(r, 0.0)))
                                                               for r in rs))}
        for f, rs in families.items()
    }  # fmt: skip
    keys = sorted({k for k, _ in by})
    rhos, top1 = [], []
    for k in keys:
        a, b = by.get((k, "pass0"), {}), by.get((k, "pass1"), {})
        common = sorted(set(a) & set(b))
        if len(common) >= 3:
            rhos.append(_spearman([a[c] for c in common], [b[c] for c in common]))
            best_b = min(b[c] for c in common)
            top1.append(b[min(common, key=lambda c: a[c])] / best_b <= 1.10)
    rhos = [r for r in rhos if not math.isnan(r)]
    return {"pass_to_pass_spearman_mean": float(statistics.fmean(rhos)) if rhos else None,
            "pass0_best_within_10pct_in_pass1": float(statistics.fmean(top1)) if top1 else None,
            "families": fam_out}  # fmt: skip


def _dims_key(s) -> str:
    return json.dumps([s.problem["dims"], s.problem["dtype"], s.problem["params"]], sort_keys=True)


def _eval_set(model, samples, rows=None) -> dict:
    passes = _pass_times(rows) if rows else None
    per = [_problem_metrics(model, ss, passes=passes) for _, ss in sorted(_groups(samples).items())]
    return {"summary": _summary(per), "per_problem": per}


def _seed_spread(train, held, rows, seeds, first=None) -> dict:
    """Held-out summary figures of models trained with each seed: mean and standard deviation."""
    from uhop.perf.model import CostModel

    runs = []
    for i, seed in enumerate(seeds):
        runs.append(first if i == 0 and first else _eval_set(CostModel.train(train, OP, seed=seed), held, rows)["summary"])
    figs = {k: [r[k] for r in runs] for k in ("spearman_mean", "top1_within_10pct", "prune_3x_loss_mean")}
    for f in sorted({f for r in runs for f in r["families"]}):
        for k in ("spearman_mean", "spearman_vs_single_pass_mean", "top1_within_10pct"):
            figs[f"{f}:{k}"] = [r["families"][f][k] for r in runs if f in r["families"]]
    return {"seeds": list(seeds), **{k: {"mean": float(statistics.fmean(v)), "std": float(statistics.pstdev(v)),
                                         "values": v} for k, v in figs.items() if v}}  # fmt: skip


def evaluate(args) -> None:
    import hashlib

    from uhop.perf.model import CostModel, load_rows, samples_from_rows

    files = {n: DATA / f"costmodel_{n}.parquet" for n in SETS}
    if args.tag:  # labels from more passes (less noise): the tagged train / held-out sets
        files.update({n: DATA / f"costmodel_{n}_{args.tag}.parquet" for n in ("train", "heldout")
                      if (DATA / f"costmodel_{n}_{args.tag}.parquet").exists()})
    rows = {n: load_rows(data=[f], op=OP) for n, f in files.items() if f.exists()}
    train = samples_from_rows(rows["train"], OP)
    train_dims = {_dims_key(s) for s in train}
    held = samples_from_rows(rows["heldout"], OP)
    assert not {_dims_key(s) for s in held} & train_dims, "held-out problems leaked into training"
    t0 = time.monotonic()
    model = CostModel.train(train, OP, seed=args.seed)
    train_s = time.monotonic() - t0
    # determinism: the same data and seed give byte-identical files; another seed does not
    h1 = hashlib.sha256(model.to_bytes()).hexdigest()
    h2 = hashlib.sha256(CostModel.train(train, OP, seed=args.seed).to_bytes()).hexdigest()
    h3 = hashlib.sha256(CostModel.train(train, OP, seed=args.seed + 1).to_bytes()).hexdigest()
    report = {
        "what": "learned cost model (XGBoost rank:pairwise + quantile 0.1/0.5/0.9) for matmul on this CPU",
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "cores": os.cpu_count(), "note": "shared 2-core VM, load average 5-11 from other jobs"},
        "command": ("python benchmarks/costmodel.py collect && python benchmarks/costmodel.py evaluate" if not args.tag
                    else f"python benchmarks/costmodel.py collect --only heldout --passes 4 --tag {args.tag} && "
                         f"python benchmarks/costmodel.py collect --only train --passes 3 --tag {args.tag} && "
                         f"python benchmarks/costmodel.py evaluate --tag {args.tag}")
                   + (f" --before {args.before.name}" if args.before else ""),
        "data": {n: f.name for n, f in files.items() if f.exists()},
        "protocol": {name: {"passes": v[1], "timer": v[2], "one_core_one_thread": v[3]} for name, v in SETS.items()},
        "bench": BENCH, "flop_cap": FLOP_CAP,
        "train": {"problems": len(_groups(train)), "samples": len(train), "seconds": round(train_s, 2),
                  "meta": model.meta},
        "determinism": {"sha256_seed": h1, "sha256_seed_again": h2, "identical": h1 == h2,
                        "sha256_other_seed": h3, "other_seed_differs": h3 != h1},
    }  # fmt: skip
    from uhop.perf import features

    report["feature_set"] = getattr(features, "FEATURE_SET", 1)
    report["heldout"] = _eval_set(model, held, rows["heldout"])
    report["heldout"]["noise_ceiling"] = _noise_ceiling(rows["heldout"])
    # The figures above are one model (seed 0, what `uhop perf train` makes); within a family the
    # seed moves the mean Spearman by about as much as a feature change, so give the spread too.
    report["heldout"]["seed_spread"] = _seed_spread(train, held, rows["heldout"], range(args.seed, args.seed + args.seeds),
                                                    first=report["heldout"]["summary"])  # fmt: skip
    # Transfer to another device, with the model trained on this one only.
    # heldout_avx2: the same CPU restricted to AVX2 code (OpenBLAS Haswell kernels, numba and
    # torch compiled for AVX2), manifest features of the AVX2 manifest (256-bit vectors, half the
    # peak) -- a second ISA, not a second chip. heldout_wall2: the default protocol (wall clock,
    # both cores, 2-thread pools) on this machine while other jobs compete: 2 cores in the
    # manifest features and preemption in every number (see its noise ceiling).
    for name in ("heldout_avx2", "heldout_wall2"):
        if name not in rows:
            continue
        dev = [s for s in samples_from_rows(rows[name], OP) if _dims_key(s) not in train_dims]
        report[f"transfer_{name}"] = _eval_set(model, dev, rows[name])
        report[f"transfer_{name}"]["noise_ceiling"] = _noise_ceiling(rows[name])
        # few-shot: add half of the device's problems to training, test on the other half; the
        # manifest features are what tell the devices apart in one model
        groups = sorted(_groups(dev))
        half_a, half_b = set(groups[0::2]), set(groups[1::2])
        extra = samples_from_rows([r for r in rows[name] if r["source"].endswith("pass0")], OP)
        extra = [s for s in extra if s.group in half_a]
        b_only = [s for s in dev if s.group in half_b]
        both = CostModel.train(train + extra, OP, seed=args.seed)
        report[f"transfer_{name}_fewshot"] = {
            "added_problems": len(half_a), "tested_problems": len(half_b),
            "model_trained_on_this_device_only": _eval_set(model, b_only)["summary"],
            "model_with_half_the_device_problems": _eval_set(both, b_only)["summary"],
        }  # fmt: skip
    # cost of asking the model (the fast policy and surrogate pruning pay this per problem)
    from uhop.backends.base import Candidate

    ss = next(iter(_groups(held).values()))
    cands = [Candidate.from_json(s.candidate) for s in ss]
    t0 = time.perf_counter()
    for _ in range(20):
        model.scores(ss[0].problem, cands, ss[0].hw)
        model.predict(ss[0].problem, cands, ss[0].hw)
    report["rank_cost_s_per_problem"] = (time.perf_counter() - t0) / 20
    report["rank_cost_candidates"] = len(cands)
    if args.before:
        # an earlier run's summaries side by side (same data, same metrics; see --before-note)
        prev = json.loads(args.before.read_text())
        report["before"] = {"note": args.before_note, "feature_set": prev.get("feature_set", 1),
                            **{k: {x: v[x] for x in ("summary", "noise_ceiling", "seed_spread") if x in v}
                               for k, v in prev.items() if isinstance(v, dict) and "summary" in v}}  # fmt: skip
    path = args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    sets = ("heldout", "transfer_heldout_avx2", "transfer_heldout_wall2")
    keys = ("problems", "candidates_mean", "spearman_mean", "top1_within_10pct", "top1_registered_within_10pct",
            "heuristic_top1_within_10pct",
            "prune_3x_eval_cut", "prune_3x_loss_mean", "prune_3x_within_3pct", "prune_3x_random_loss_mean",
            "interval80_coverage", "spearman_tiled_only_mean", "families")  # fmt: skip
    brief = {k: {x: report[k]["summary"][x] for x in keys} for k in sets if k in report}
    brief["noise"] = {k: report[k]["noise_ceiling"] for k in sets if k in report}
    for k in ("transfer_heldout_avx2_fewshot", "transfer_heldout_wall2_fewshot"):
        if k in report:
            brief[k] = {m: {x: v[x] for x in ("spearman_mean", "top1_within_10pct", "prune_3x_loss_mean",
                                              "interval80_coverage")}
                        for m, v in report[k].items() if isinstance(v, dict)}  # fmt: skip
    brief["heldout_seed_spread"] = {k: v for k, v in report["heldout"]["seed_spread"].items() if k != "seeds"}
    brief["determinism"] = report["determinism"]
    print(json.dumps(brief, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
