"""The GPU helpers the diagnosis scripts share: microseconds of host time per call of ``fn``
on a CUDA device (``warm`` calls first; the device drained before and after the timed loop, so
the figure is the host's cost while the GPU keeps up, not the kernels')."""
import importlib.util
import json
import os
import sys
import time

import torch


def host_us(fn, n: int = 3000, warm: int = 50) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return us


def event_gbps(fn, args, nbytes: int, n: int = 10) -> float:
    """GB/s of ``fn(*args)`` moving ``nbytes`` per call: CUDA events around ``n`` calls."""
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn(*args)
    e.record()
    torch.cuda.synchronize()
    return nbytes / (s.elapsed_time(e) / n * 1e-3) / 1e9


def row_case(op: str, R: int, N: int):
    """A row op's bf16 inputs on cuda:0, seeded (x, then layernorm's weight and bias or rmsnorm's
    weight), and the bytes one call moves (x read, y written, the weights read once)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(R, N, device="cuda", dtype=torch.bfloat16, generator=g)
    nw = {"layernorm": 2, "rmsnorm": 1}.get(op, 0)
    args = [x] + [torch.randn(N, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(nw)]
    return args, 2 * x.numel() * 2 + nw * N * 2


def interleaved_gbps(kernels: dict, args, nbytes: int, rounds: int = 5) -> dict:
    """Median GB/s per named kernel over ``rounds`` rounds, each timing every kernel once."""
    import statistics

    t = {c: [] for c in kernels}
    for _ in range(rounds):
        for c, k in kernels.items():
            t[c].append(event_gbps(k, args, nbytes))
    return {c: round(statistics.median(v), 1) for c, v in t.items()}


def best_by(med: dict, field: str, values) -> dict:
    """For each value of config ``field`` (keys of ``med`` are JSON configs): the fastest (config, GB/s)."""
    import json

    return {v: max(((c, m) for c, m in med.items() if json.loads(c)[field] == v), key=lambda p: p[1], default=None)
            for v in values}


def old_module(env: str, name: str):
    """The module at the path in environment variable ``env`` (the code before a change, from
    ``git show <commit>:<path>``), imported as ``name``."""
    spec = importlib.util.spec_from_file_location(name, os.environ[env])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def best(med: dict, gen: str):
    """The fastest (config, GB/s) of generator ``gen`` in a study's medians."""
    return max(((c, m) for c, m in med.items() if f'"{gen}"' in c), key=lambda t: t[1], default=None)


def rowsum_study(cases, old_ew, out_name: str) -> None:
    """Every ``rowsum`` config the backend offers for each (rows, width, dtype, expr, forms,
    reduce) case, built by the current generator and by ``old_ew`` (configs it does not know are
    skipped), interleaved rounds, outputs checked against float64; JSON to $OUT/``out_name``."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # width_sweep
    from width_sweep import copy_gbps, environment, torch_fn

    from uhop.backends.triton_kernels import elementwise as new_ew
    from uhop.backends.triton_kernels import limits
    from uhop.ops import get
    from uhop.problem import Problem

    res = {"env": environment(), "copy_gbps": copy_gbps(), "cases": []}
    lim = limits("cuda:0")
    for R, C, dtype, text, forms, reduce in cases:
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
                "best_old": best(med, "old"), "best_new": best(med, "new")}
        res["cases"].append(case)
        print(R, C, dtype, text, reduce, "old", case["best_old"], "new", case["best_new"], flush=True)
        with open(os.path.join(os.environ.get("OUT", "/tmp"), out_name), "w") as f:
            json.dump(res, f, indent=1)
