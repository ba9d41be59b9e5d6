"""Cache-hit dispatch overhead of ``uhop.ops`` on CPU torch tensors: host time per call through
``uhop.ops.matmul`` minus through the served kernel itself (interleaved rounds, median), after the
problem was tuned. Tiny inputs (4 x 4), so the kernel's own work is a couple of microseconds.

    python benchmarks/dispatch_overhead.py --out benchmarks/results/dispatch_overhead_cpu.json

Run it with ``PYTHONPATH`` on another checkout to compare versions on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
    import torch
    from gpu_dispatch_check import overhead

    import uhop
    from uhop.dispatch import _direct_cache

    x, y = torch.randn(4, 4), torch.randn(4, 4)
    uhop.ops.matmul(x, y)
    uhop.wait()
    uhop.ops.matmul(x, y)
    (kernel,) = [k for sig, k in _direct_cache.items() if sig[0] == "matmul"]
    ov, direct = overhead(uhop.ops.matmul, kernel, (x, y))
    # with the op's params spelled out, as benchmarks/tuner_vs_oracle.py calls it
    spelled = lambda a, b: uhop.ops.matmul(a, b, activation="none", trans_b=False)  # noqa: E731
    spelled(x, y)
    ov_params, _ = overhead(spelled, kernel, (x, y))
    res = {"label": a.label, "uhop": str(Path(uhop.__file__).parent), "python": platform.python_version(),
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "overhead_us": ov * 1e6, "overhead_with_params_us": ov_params * 1e6, "kernel_us": direct * 1e6}  # fmt: skip
    print(json.dumps(res))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
