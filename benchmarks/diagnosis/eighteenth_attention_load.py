"""CPU attention next to another busy process (eighteenth session): the demo's causal attention
(8 heads x 2048 x 64, float32) as numpy as written, the numba ``blocked`` kernel with its blocks
one after another (all-core BLAS per block: two thread barriers per block) and with its blocks as
tasks (single-threaded BLAS per task), then the product: ``@uhop.optimize("attention")`` with
default settings, tuned on the idle machine in this process on an empty store. Each is timed idle
and while two other processes run multi-threaded numpy GEMMs (the load of a CI run or a
neighbour's job), interleaved: medians of 7 calls per round, 3 rounds. The kernel rows time the
candidates directly (they describe the candidates); the ``uhop`` row is the product path.

    python3 benchmarks/diagnosis/eighteenth_attention_load.py [--out FILE]
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp(prefix="uhop-attn-load-"))
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpuload import LOAD, idle_and_loaded  # noqa: E402

import uhop  # noqa: E402
from uhop.backends.numba import attention_kernel  # noqa: E402
from uhop.demo import _chosen, attention  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="benchmarks/results/diagnosis_eighteenth_attention_load_cpu.json")
ap.add_argument("--rounds", type=int, default=3)
a = ap.parse_args()
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((8, 2048, 64)).astype(np.float32) for _ in range(3))
opt = uhop.optimize("attention")(attention)
t0 = time.perf_counter()
opt(q, k, v)
uhop.wait()  # the background tuning run, on the idle machine
tuned_s = time.perf_counter() - t0
chosen = _chosen(opt, (q, k, v))
fns = {
    "numpy": lambda: attention(q, k, v),
    "blocked_serial_128": (lambda kern: lambda: kern(q, k, v))(attention_kernel("float32", True, False, False, 128)),
    "blocked_tasks_128": (lambda kern: lambda: kern(q, k, v))(attention_kernel("float32", True, True, False, 128)),
    "blocked_tasks_256": (lambda kern: lambda: kern(q, k, v))(attention_kernel("float32", True, True, False, 256)),
    "uhop": lambda: opt(q, k, v),
}
res, med, summary = idle_and_loaded(fns, a.rounds)
print(json.dumps(summary, indent=1))
meta = {"numpy": np.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "uhop_first_call_and_tuning_s": round(tuned_s, 1), "load": LOAD,
        "command": "python3 benchmarks/diagnosis/eighteenth_attention_load.py"}
json.dump({"meta": meta, "chosen": str(chosen), "ms_per_round": res, "median_ms": med, "summary": summary},
          open(a.out, "w"), indent=1)
