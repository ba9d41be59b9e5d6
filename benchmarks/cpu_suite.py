"""CPU suite: UHOP vs the naive numpy baseline vs the library baseline, side by side in one run.

Reproduce (from the repo root, on an otherwise idle machine):

    python benchmarks/cpu_suite.py            # writes benchmarks/results/cpu_suite.json

It tunes every problem from scratch in a temporary UHOP_HOME (so the numbers include nothing
from an earlier store), then times UHOP's public entry point (dispatch included), the plain numpy
formula and the library path on the same inputs. Ratios > 1 mean UHOP is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="cpu")
    ap.add_argument("--budget", type=float, default=30.0, help="tuning budget per problem, seconds")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_suite.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["UHOP_HOME"] = home
        from rich.console import Console

        from uhop import config
        from uhop.benchsuite import print_table, run_suite

        config.reload()
        console = Console(width=200)
        rows, meta = run_suite(args.suite, budget_s=args.budget, console=console)
        print_table(rows, console)
    meta["command"] = "python benchmarks/cpu_suite.py " + " ".join(sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": meta, "results": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
