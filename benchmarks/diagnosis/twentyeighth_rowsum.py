"""Reductions at the end of an elementwise chain (``rowsum``), the twenty-eighth session's change:
whole tiles of whole rows loaded without masks (``EVEN``), and an ``approx`` candidate computing exp
and sigmoid as single MUFU instructions, against the generator before (OLD_EW). Every config the
backend offers, both generators, interleaved rounds in one process; GB/s from CUDA events over 10
calls; outputs checked against float64. Times the kernels directly (a candidate study, not the
product path).

    git show <before>:uhop/backends/triton_kernels/elementwise.py > /tmp/old_ew.py
    OLD_EW=/tmp/old_ew.py OUT=/tmp python3 benchmarks/diagnosis/twentyeighth_rowsum.py
"""
import importlib.util
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
import torch  # noqa: E402
from width_sweep import copy_gbps, environment, torch_fn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hosttime import interleaved_gbps  # noqa: E402

from uhop.backends.triton_kernels import elementwise as new_ew  # noqa: E402
from uhop.backends.triton_kernels import limits  # noqa: E402
from uhop.ops import get  # noqa: E402
from uhop.problem import Problem  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
spec = importlib.util.spec_from_file_location("old_ew", os.environ["OLD_EW"])
old_ew = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old_ew)

# (rows, width, dtype, expr, forms, reduce): the width sweep's 0.66-of-copy case first
CASES = [(32768, 4096, "bfloat16", "x0*sigmoid(x0)", "f", "sum"), (32768, 4096, "bfloat16", "x0*x0", "f", "sum"),
         (32768, 4096, "bfloat16", "x0*x1", "fr", "max"), (8192, 8192, "bfloat16", "exp(x0-1.0)", "f", "mean"),
         (32, 1 << 21, "bfloat16", "silu(x0)", "f", "sum"), (32768, 4096, "float32", "x0*sigmoid(x0)", "f", "sum"),
         (8192, 50257, "bfloat16", "x0*x0", "f", "mean")]  # fmt: skip

res = {"env": environment(), "copy_gbps": copy_gbps(), "cases": []}
lim = limits("cuda:0")
for R, C, dtype, text, forms, reduce in CASES:
    dt = getattr(torch, dtype)
    g = torch.Generator(device="cuda").manual_seed(R + C)
    shapes = {"f": (R, C), "r": (C,)}
    args = [torch.randn(shapes[f], device="cuda", dtype=dt, generator=g) for f in forms]
    params = {"expr": text, "reduce": reduce}
    dims = get("elementwise").check(args, params)
    p = Problem.make("elementwise", dims, dtype, params, arity=len(forms), device="cuda:0", array="torch")
    nbytes = get("elementwise").bytes(dims, dtype, params)
    ref = torch_fn("elementwise", (text, forms, reduce))(*[a.double() for a in args])
    ks, errs = {}, {}
    for template, cfg in new_ew.configs(p, lim):
        for name, mod in (("old", old_ew), ("new", new_ew)):
            if name == "old" and cfg.get("approx"):
                continue
            k = mod.build(template, cfg, p)
            y = k(*args)
            err = float((y.double() - ref).norm() / ref.norm())
            key = json.dumps({"gen": name, **cfg}, sort_keys=True)
            errs[key] = err
            if err < 2e-2:
                ks[key] = k
    med = interleaved_gbps(ks, args, nbytes)
    case = {"case": [R, C, dtype, text, forms, reduce], "bytes": nbytes, "gbps": med, "err": errs,
            "best_old": max(((c, m) for c, m in med.items() if '"old"' in c), key=lambda t: t[1], default=None),
            "best_new": max(((c, m) for c, m in med.items() if '"new"' in c), key=lambda t: t[1], default=None)}
    res["cases"].append(case)
    print(R, C, dtype, text, reduce, "old", case["best_old"], "new", case["best_new"], flush=True)
    with open(os.path.join(OUT, "diagnosis_twentyeighth_rowsum.json"), "w") as f:
        json.dump(res, f, indent=1)
