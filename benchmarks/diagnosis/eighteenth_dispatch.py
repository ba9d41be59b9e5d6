"""Host cost of one ``uhop.ops.matmul`` call on a host-bound GEMM (eighteenth session): 1024^3
bf16 on cuda:0 after the product has tuned it (the pick is ``torch.matmul`` itself), host us per
call of ``torch.matmul``, ``uhop.ops.matmul``, the dispatch's guard check alone, an empty lambda,
and a bare ``def f(*args, **kw)`` around ``torch.matmul``; three interleaved rounds. The
``uhop.ops`` row is the product path; the others isolate its parts.

    OUT=/tmp python3 benchmarks/diagnosis/eighteenth_dispatch.py
"""
import json
import os
import sys
import tempfile

os.environ["UHOP_HOME"] = tempfile.mkdtemp()
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from hosttime import host_us  # noqa: E402
from width_sweep import environment  # noqa: E402

import uhop  # noqa: E402
from uhop import ops  # noqa: E402
from uhop.dispatch import _direct_cache  # noqa: E402

a, b = (torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2))
ops.matmul(a, b)
uhop.wait()
ops.matmul(a, b)
ops.matmul(a, b)  # the second hit builds the guard
guard = _direct_cache.guarded["matmul"][0][2]


def wrapper(*args, **params):
    return torch.matmul(*args)


fns = {"torch.matmul": lambda: torch.matmul(a, b), "ops.matmul": lambda: ops.matmul(a, b),
       "guard.check": lambda: guard.check(a, b), "empty lambda": lambda: None,
       "py wrapper *args **kw": lambda: wrapper(a, b)}  # fmt: skip
res = {n: [] for n in fns}
for _ in range(3):
    for n, f in fns.items():
        res[n].append(host_us(f))
print(json.dumps({k: [round(x, 2) for x in v] for k, v in res.items()}))
json.dump({"env": environment(), "host_us_per_call": res},
          open(os.path.join(os.environ.get("OUT", "/tmp"), "diagnosis_eighteenth_dispatch.json"), "w"), indent=1)
