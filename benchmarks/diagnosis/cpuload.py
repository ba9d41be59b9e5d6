"""The CPU diagnosis scripts' shared loop: each function timed idle and while two other processes
run multi-threaded numpy GEMMs (the load of a CI run or a neighbour's job), interleaved: medians
of 7 calls per round (``uhop.measure.bench.benchmark``), ``rounds`` rounds."""
import statistics
import subprocess
import sys
import time

from uhop.measure.bench import benchmark

HOG = "import numpy as np\na = np.ones((512, 512), np.float32)\nwhile True: a @ a"
LOAD = "2 processes: " + HOG.replace("\n", "; ")


def idle_and_loaded(fns: dict, rounds: int) -> tuple[dict, dict, dict]:
    """(ms per round, median ms, summary against ``fns["numpy"]``) per condition and function."""
    res = {c: {n: [] for n in fns} for c in ("idle", "loaded")}
    for r in range(rounds):
        for cond in ("idle", "loaded"):
            hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)] if cond == "loaded" else []
            time.sleep(0.5 if hogs else 0.1)
            try:
                for n, f in fns.items():
                    res[cond][n].append(round(benchmark(f, [()], warmup=1, repeat=7, min_time_s=0).median_s * 1e3, 2))
            finally:
                for h in hogs:  # the processes this loop started, by handle
                    h.kill()
                    h.wait()
            print(r, cond, {n: v[-1] for n, v in res[cond].items()}, flush=True)
    med = {c: {n: statistics.median(v) for n, v in d.items()} for c, d in res.items()}
    summary = {c: {n: f"{m:.1f} ms, {med[c]['numpy'] / m:.2f}x numpy" for n, m in d.items()} for c, d in med.items()}
    return res, med, summary
