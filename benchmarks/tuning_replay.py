"""Search strategies on a recorded search space, replayed deterministically on CPU.

The space: a cache-blocked numba matmul (float32, 384x384x384; the kernel is the cost model's
tiled family, ``uhop.perf.family``, under :func:`~uhop.perf.family.blocked_config`) with five
tunable parameters -- row/column/depth tile sizes (powers of two), block-loop order and parallel
chunking (row blocks per prange task) -- under a cache constraint (A and B tiles fit in 1 MiB,
half this CPU's L2).
Every valid config was measured on a machine (``record``: shuffled order, best of ``--passes``)
and stored as JSON under ``benchmarks/data/`` (``blocked_matmul_space.json``: the 2-core dev
machine, one pass in grid order, recorded while other jobs ran on it). ``replay`` runs each
strategy against the stored times, so the comparison is deterministic and needs no timing.
``live`` re-measures the default grid (what a hand-written backend lists) against the config a
strategy finds.

    python benchmarks/tuning_replay.py record [--data F] [--passes 2]   # ~10 min on 2 cores
    python benchmarks/tuning_replay.py replay [--data F] [--out NAME]   # a few minutes, no timing
    python benchmarks/tuning_replay.py live                             # ~1 min; tuning_live.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data" / "blocked_matmul_space.json"
RESULTS = ROOT / "results"
M = N = K = 384
#: the grid a backend author would list by hand: square tiles, k-inner, one block per task
DEFAULT_GRID = [dict(BM=b, BN=b, BK=b, order="jk", chunk=1) for b in (32, 64, 128)] + [
    dict(BM=64, BN=128, BK=64, order="jk", chunk=1)
]


def make_space():
    from uhop.space import Categorical, Constraint, Pow2, SearchSpace

    # A fixed 2 MiB (this CPU's L2 per core), not the manifest's: a recorded space must be the same
    # space wherever it is replayed.
    l2 = 2 * 1024 * 1024
    return SearchSpace(
        [Pow2("BM", 8, 256), Pow2("BN", 16, 512), Pow2("BK", 8, 512), Categorical("order", ("jk", "kj")),
         Categorical("chunk", (1, 2, 4))],
        [Constraint(lambda c, _l=l2: 4 * (c["BM"] * c["BK"] + c["BK"] * c["BN"]) <= _l / 2, "A+B tiles <= L2/2")],
        backend="bench", template="blocked_matmul",
    )  # fmt: skip


def make_runner():
    """(kernel_of(cfg) -> (A, B) -> C, arg_sets): the real kernel, ``uhop.perf.family``'s tiled
    matmul under the space's config (:func:`~uhop.perf.family.blocked_config`)."""
    from uhop.perf.family import blocked_config, tiled_kernel

    rng = np.random.default_rng(0)
    sets = [[rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)]
            for _ in range(2)]  # fmt: skip

    def kernel_of(cfg):
        return tiled_kernel(blocked_config(cfg), np.float32)

    return kernel_of, sets


def measure(cfg, kernel_of, sets, min_time_s=0.03, repeat=3):
    from uhop.measure.bench import benchmark

    run = kernel_of(cfg)
    A, B = sets[0]
    ref = A.astype(np.float64) @ B.astype(np.float64)
    err = float(np.max(np.abs(run(A, B) - ref)))
    if not err <= 1e-3 * math.sqrt(K) * float(np.max(np.abs(ref))):
        return {"status": "wrong-result", "median_s": None, "max_err": err}
    t = benchmark(run, sets, min_time_s=min_time_s, repeat=repeat)
    return {"status": "ok", "median_s": t.median_s, "spread": t.spread, "max_err": err}


def record(args) -> None:
    """Measure every config ``passes`` times, each pass in a fresh shuffled order (so load that
    drifts over the recording is not mistaken for a pattern in the parameters); keep the fastest."""
    import random as _random

    space = make_space()
    kernel_of, sets = make_runner()
    configs = list(space.configs())
    print(f"recording {len(configs)} configs of {space.upper_size()}, {args.passes} pass(es) ...", flush=True)
    best: dict[int, dict] = {}
    t0 = time.time()
    rng = _random.Random(0)
    for p in range(args.passes):
        order = list(range(len(configs)))
        rng.shuffle(order)
        for n, i in enumerate(order):
            m = measure(configs[i], kernel_of, sets)
            old = best.get(i)
            if old is None or (m["median_s"] is not None and (old["median_s"] is None or m["median_s"] < old["median_s"])):
                best[i] = m
            if n % 200 == 0:
                print(f"pass {p} {n}/{len(configs)} {time.time() - t0:.0f}s", flush=True)
    out = [{"config": configs[i], **best[i]} for i in range(len(configs))]
    import numba

    doc = {
        "space": f"numba blocked matmul float32 {M}x{N}x{K}",
        "params": list(space.names),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "numba": numba.__version__, "threads": numba.get_num_threads()},
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "passes": args.passes,
        "seconds": round(time.time() - t0, 1),
        "measurements": out,
    }  # fmt: skip
    data = Path(args.data)
    data.parent.mkdir(parents=True, exist_ok=True)
    tmp = data.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=0))
    tmp.replace(data)
    print(f"wrote {data} ({len(out)} configs, {doc['seconds']} s)")


def _cpu() -> str:
    from uhop.problem import cpu_model

    return cpu_model()


#: rows of the replay table: label -> registry name and options
STRATEGIES = {
    "random": {"name": "random", "options": {}},
    "evolution": {"name": "evolution", "options": {}},
    "evolution-cmaes": {"name": "evolution", "options": {"sampler": "cmaes"}},
    "surrogate": {"name": "surrogate", "options": {}},
}


def load_table(data: Path | str = DATA):
    doc = json.loads(Path(data).read_text())
    space = make_space()
    table = {}
    for m in doc["measurements"]:
        t = m["median_s"] if m["status"] == "ok" and m["median_s"] else math.inf
        table[space.config_hash(m["config"])] = t
    return space, table, doc


def replay_strategy(name, space, table, budget, seed, **options):
    """Run strategy ``name`` against the recorded table; returns (best time, evaluations used)."""
    from uhop.tune.strategies import SearchBudget, make, run_search

    strat = make(name, space, seed=seed, **options)

    def evaluate(cfgs):
        for cfg in cfgs:
            yield cfg, (table[space.config_hash(cfg)],), None

    res = run_search(space, strat, evaluate, SearchBudget(max_evals=budget))
    return res.best_values[0] if res.best_values else math.inf, res.evaluations


def replay(args) -> None:
    space, table, doc = load_table(args.data)
    best = min(table.values())
    n = len(table)
    seeds = list(range(args.seeds))
    fractions = [0.02, 0.05, 0.10, 0.15]
    rows = []
    for frac in fractions:
        budget = max(1, int(frac * n))
        for strat, opts in STRATEGIES.items():
            gaps, used = [], []
            for s in seeds:
                t, e = replay_strategy(opts["name"], space, table, budget, s, **opts["options"])
                gaps.append(t / best - 1.0)
                used.append(e)
            rows.append({
                "strategy": strat, "budget_fraction": frac, "budget": budget,
                "mean_gap_pct": 100 * statistics.mean(gaps), "median_gap_pct": 100 * statistics.median(gaps),
                "worst_gap_pct": 100 * max(gaps), "within_3pct": sum(g <= 0.03 for g in gaps) / len(gaps),
                "mean_evaluations": statistics.mean(used),
            })  # fmt: skip
            r = rows[-1]
            print(f"{strat:16s} budget {budget:4d} ({frac:.0%}): mean gap {r['mean_gap_pct']:.2f}%  "
                  f"worst {r['worst_gap_pct']:.2f}%  within 3%: {r['within_3pct']:.0%}")  # fmt: skip
    t_ex, e_ex = replay_strategy("exhaustive", space, table, n + 1, 0)
    grid = min(table[space.config_hash(c)] for c in DEFAULT_GRID)
    out = {
        "space": doc["space"], "configs": n, "recorded_on": doc["machine"], "seeds": len(seeds),
        "exhaustive": {"best_s": t_ex, "evaluations": e_ex}, "default_grid_best_s": grid,
        "default_grid_vs_best_pct": 100 * (grid / best - 1), "rows": rows,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(out, indent=1))
    print(f"exhaustive best {t_ex * 1e3:.3f} ms in {e_ex} evaluations; default grid best {grid * 1e3:.3f} ms")


def live(args) -> None:
    """Re-measure: best of the default grid vs the evolutionary strategy's pick, fresh timings."""
    from uhop.tune.strategies import SearchBudget, make, run_search

    space = make_space()
    kernel_of, sets = make_runner()
    n = space.size() or 0
    budget = int(0.10 * n)
    name = args.strategy
    if name == "auto":  # evolution needs Optuna; a machine without it still gets a guided search
        import importlib.util

        name = "evolution" if importlib.util.find_spec("optuna") else "surrogate"
    strat = make(name, space, seed=args.seed)

    def evaluate(cfgs):
        for cfg in cfgs:
            m = measure(cfg, kernel_of, sets, min_time_s=0.02)
            yield cfg, (m["median_s"] or math.inf,), m

    t0 = time.time()
    res = run_search(space, strat, evaluate, SearchBudget(max_evals=budget))
    tuned_cfg = res.best_config
    search_s = time.time() - t0
    # Fresh timings, default grid and tuned config interleaved over several rounds; per config the
    # best round counts (other load on the machine only ever adds time).
    configs = [*DEFAULT_GRID, tuned_cfg]
    rounds = [[measure(c, kernel_of, sets, 0.2, 5)["median_s"] for c in configs] for _ in range(args.rounds)]
    best_of = [min(r[i] for r in rounds) for i in range(len(configs))]
    grid = list(zip(best_of[:-1], DEFAULT_GRID, strict=True))
    grid_t, grid_cfg = min(grid, key=lambda x: x[0])
    tuned_t = best_of[-1]
    out = {
        "space": f"numba blocked matmul float32 {M}x{N}x{K}", "strategy": name, "budget": budget, "configs": n,
        "search_seconds": round(search_s, 1), "rounds": args.rounds,
        "round_medians_s": rounds, "default_grid": [{"config": c, "median_s": t} for t, c in grid],
        "default_grid_best": {"config": grid_cfg, "median_s": grid_t}, "tuned": {"config": tuned_cfg, "median_s": tuned_t},
        "latency_reduction_pct": 100 * (1 - tuned_t / grid_t),
        "latency_reduction_median_of_rounds_pct": _median_reduction(rounds), "cpu": _cpu(),
        "numba_threads": __import__("numba").get_num_threads(), "cores": os.cpu_count(),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tuning_live.json").write_text(json.dumps(out, indent=1))
    print(f"default grid best {grid_t * 1e3:.2f} ms {grid_cfg}\ntuned by {name} ({budget} evals) {tuned_t * 1e3:.2f} ms "
          f"{tuned_cfg}\n-> {out['latency_reduction_pct']:.1f}% lower latency")  # fmt: skip


def _median_reduction(rounds) -> float:
    """Reduction vs the default grid's best config, each config's time the median over rounds."""
    med = [statistics.median(r[i] for r in rounds) for i in range(len(rounds[0]))]
    return 100 * (1 - med[-1] / min(med[:-1]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--data", default=str(DATA))
    rec.add_argument("--passes", type=int, default=1)
    r = sub.add_parser("replay")
    r.add_argument("--seeds", type=int, default=20)
    r.add_argument("--data", default=str(DATA))
    r.add_argument("--out", default="tuning_replay.json", help="file name under benchmarks/results/")
    li = sub.add_parser("live")
    li.add_argument("--seed", type=int, default=0)
    li.add_argument("--rounds", type=int, default=5)
    li.add_argument("--strategy", default="evolution", help="evolution, surrogate, random, ... or auto")
    args = ap.parse_args(argv)
    {"record": record, "replay": replay, "live": live}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
