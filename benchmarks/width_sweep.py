"""Memory-bound ops at every width: UHOP's product path next to torch eager and torch.compile.

    python benchmarks/width_sweep.py [--out benchmarks/results/width_sweep_h200.json]
        [--only softmax,layernorm] [--no-product] [--no-compile] [--oracle] [--deadline-s 480]

For each case (softmax / log-softmax / layernorm / rmsnorm over widths 64..262144, odd widths, few long rows and
many short ones, bf16/fp16/fp32; elementwise chains of 1 to 4 inputs) this times, interleaved
over two rounds and on the same fresh random inputs:
- ``uhop``: the product path, ``uhop.ops.<op>(x, ...)`` with default settings and an empty store
  (``UHOP_HOME`` is a fresh temp dir). The first call tunes (its wall time is ``first_call_s``);
  when ``uhop.wait`` exists the sweep waits for background tuning before timing.
- ``eager``: torch's own op; ``compile``: ``torch.compile`` of the same function (default mode,
  static shapes, a fresh Dynamo cache per case; runs before the twenty-sixth session's fix reused
  one cache across cases, so their later cases timed dynamic-shape kernels).
- ``oracle`` (``--oracle``, labelled so: not a UHOP figure): each Triton candidate of the row /
  chain templates timed directly, i.e. what the tuner would pick with an unlimited budget.
Every output is checked against a float64 torch reference (relative L2 error). Rates count the
op's minimum bytes (each input read once, the output written once) over the median
``triton.testing.do_bench`` time (CUDA events, L2 cleared between runs); ``copy_gbps`` is a
device-to-device copy of 1 GiB measured at the start and end of the same run; ``copy_same``, a
copy of each case's own byte count timed beside it (``*_of_copy_same``: that copy's time over
the kernel's), shows what launch and ramp-up leave of the ceiling for a small case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

ELEMS = 1 << 27  # 256 MiB of bf16 per tensor: many times the 50 MB L2

#: (op, rows, width, dtype, inputs): R*N near ELEMS for many-row cases; the cases issue #20
#: names first (a run cut short by --stop-s keeps those)
CASES: list[tuple[str, int, int, str, int]] = [
    ("softmax", 8192, 50257, "bfloat16", 1),  # a GPT-2 vocabulary
    ("layernorm", 32768, 5120, "bfloat16", 3),
    *[
        ("softmax", ELEMS // n, n, "bfloat16", 1)
        for n in (64, 1000, 4096, 5120, 11008, 32768, 151936, 262144)
    ],
    ("softmax", 132, 262144, "bfloat16", 1),  # as many rows as SMs
    ("softmax", 16, 262144, "bfloat16", 1),  # fewer rows than SMs (8 MiB: launch-bound territory)
    *[("rmsnorm", ELEMS // n, n, "bfloat16", 2) for n in (1000, 4096, 11008, 151936)],
    *[("layernorm", ELEMS // n, n, "bfloat16", 3) for n in (1000, 11008, 50257)],
    ("softmax", ELEMS // 2 // 1000, 1000, "float32", 1),
    ("softmax", 2048, 50257, "float32", 1),
    ("softmax", ELEMS // 11008, 11008, "float16", 1),
    ("rmsnorm", 64, 262144, "bfloat16", 2),
    # log-softmax (an LM's loss and sampling): GPT-2's and Qwen's vocabularies, a short width
    ("log_softmax", 8192, 50257, "bfloat16", 1),
    ("log_softmax", 2048, 151936, "bfloat16", 1),
    ("log_softmax", ELEMS // 4096, 4096, "bfloat16", 1),
]
CHAINS = [("gelu(x0)*x1+0.5*x0", 2), ("sigmoid(x0*1.5+0.5)*x0-0.25", 1), ("x0*x1+x2*x3-x0", 4)]
#: chains whose inputs broadcast (f full, r a row vector of N, s a scalar) or that reduce over the
#: last dim: (rows, width, (expr, forms, reduce))
FORMS = [
    (32768, 4096, ("x0*sigmoid(x0)+x1", "fr", "none")),  # a bias row
    (32768, 4096, ("x0*x1+x2", "frs", "none")),
    (32768, 4096, ("x0*sigmoid(x0)", "f", "sum")),  # silu, then a per-row sum: one pass
    (8192, 50257, ("x0*x0", "f", "mean")),  # mean of squares over long, odd rows
    (32768, 4096, ("x0*x1", "fr", "max")),
    # mixed input dtypes (a 4th entry: each input's dtype, b bfloat16, h float16, f float32): a
    # bfloat16 activation times a float32 scale row, the float32 result torch's promotion gives
    (32768, 4096, ("x0*x1+x2", "frr", "none", "bff")),
]
#: dtype codes of a FORMS entry's 4th field
DTYPE_CODES = {"b": "bfloat16", "h": "float16", "f": "float32"}


def torch_fn(op: str, expr: str | None = None):
    import torch

    if op == "softmax":
        return lambda x: torch.softmax(x, dim=-1)
    if op == "log_softmax":
        return lambda x: torch.log_softmax(x, dim=-1)
    if op == "layernorm":
        return lambda x, w, b: torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, 1e-5)
    if op == "rmsnorm":
        return lambda x, w: torch.nn.functional.rms_norm(x, x.shape[-1:], w, 1e-6)
    from uhop.backends.torch import evaluate_expr
    from uhop.ops import expr as ex
    from uhop.ops.elementwise import reduce_last

    text, _, reduce = _form(expr)
    e = ex.parse(text)

    return lambda *xs: reduce_last(evaluate_expr(e, xs), reduce)  # one torch op per node: what eager users write


def _form(expr: Any) -> tuple[str, str, str]:
    """(expr, input forms, reduce) of an elementwise case: a FORMS entry or a plain chain."""
    return expr[:3] if isinstance(expr, tuple) else (expr, "", "none")


def uhop_fn(op: str, expr: Any = None):
    import uhop.ops as uo

    if op == "elementwise":
        text, _, reduce = _form(expr)
        return lambda *xs: uo.elementwise(text, *xs, reduce=reduce)
    return getattr(uo, op)


def bench(fn, args, rep_ms: int = 25) -> float:
    from triton.testing import do_bench

    return float(do_bench(lambda: fn(*args), warmup=5, rep=rep_ms, return_mode="median"))


def rel_err(y: Any, ref: Any) -> float:
    return float((y.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def copy_gbps() -> float:
    import torch

    x = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda").uniform_()
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x), ())
    return 2 * x.numel() * 2 / ms / 1e6


def oracle(
    op: str, dims: dict[str, int], dtype: str, params: dict[str, Any], arity: int, args: list, ref
) -> list:
    """Every Triton candidate of the case, timed directly (not the product path)."""
    from uhop import backends as bk
    from uhop.problem import Problem

    b = bk.get("triton")
    p = Problem.make(op, dims, dtype, params, arity=arity, device="cuda:0", array="torch")
    rows = []
    for c in b.candidates(p):
        row: dict[str, Any] = {"candidate": c.id}
        try:
            t0 = time.perf_counter()
            k = b.compile(c, p)
            y = k(*args)
            import torch

            torch.cuda.synchronize()
            row["compile_s"] = round(time.perf_counter() - t0, 2)
            row["err"] = rel_err(y, ref)
            row["ms"] = bench(k, args)
        except Exception as exc:  # a rejected config is a result, not a crash of the sweep
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        rows.append(row)
    return rows


def run_case(op, R, N, dtype, arity, expr, opts, copy) -> dict[str, Any]:
    import torch

    import uhop

    dt = getattr(torch, dtype)
    g = torch.Generator(device="cuda").manual_seed(R * 7 + N)
    if op == "elementwise" and isinstance(expr, tuple):
        text, forms, reduce = expr[:3]
        shapes = {"f": (R, N), "r": (N,), "s": (1,)}
        dts = [getattr(torch, DTYPE_CODES[c]) for c in expr[3]] if len(expr) > 3 else [dt] * len(forms)
        args = [torch.randn(shapes[f], device="cuda", dtype=d, generator=g) for f, d in zip(forms, dts, strict=True)]
        params = {"expr": text, "reduce": reduce}
        dims = uhop.ops.get(op).check(args, params)  # sets params["bcast"] (and "dtypes" when mixed)
        dtype = uhop.ops.get(op).check_dtypes(args)  # the result's: bytes count each input in its own
    elif op == "elementwise":
        args = [torch.randn(R * N, device="cuda", dtype=dt, generator=g) for _ in range(arity)]
        dims, params = {"N": R * N}, {"expr": expr}
    else:
        x = torch.randn(R, N, device="cuda", dtype=dt, generator=g) * 2
        vecs = [torch.randn(N, device="cuda", dtype=dt, generator=g) for _ in range(arity - 1)]
        args, dims, params = [x, *vecs], {"R": R, "N": N}, {}
    spec = uhop.ops.get(op)
    nbytes = spec.bytes(dims, dtype, params if op == "elementwise" else {})
    with torch.no_grad():
        ref_args = [a.double() for a in args]
        ref = torch_fn(op, expr)(*ref_args)
    row: dict[str, Any] = {"op": op, "R": R, "N": N, "dtype": dtype, "inputs": arity, "bytes": nbytes}
    if expr:
        row["expr"] = expr
    fns: dict[str, Any] = {"eager": torch_fn(op, expr)}
    if opts.compile:
        # a fresh Dynamo cache and static shapes per case: each case's lambda shares its code object
        # with the other cases of its op, so reused they recompiled with dynamic shapes (and past the
        # recompile limit), which ran softmax 16 x 262144 at 7 GB/s (twenty-sixth session, H200)
        torch._dynamo.reset()
        t0 = time.perf_counter()
        cf = torch.compile(torch_fn(op, expr), dynamic=False)
        try:
            cf(*args)
            torch.cuda.synchronize()
            row["compile_first_call_s"] = round(time.perf_counter() - t0, 2)
            fns["compile"] = cf
        except Exception as exc:
            row["compile_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    if opts.product and time.monotonic() < opts.deadline:
        uf = uhop_fn(op, expr)
        t0 = time.perf_counter()
        uf(*args)
        torch.cuda.synchronize()
        row["first_call_s"] = round(time.perf_counter() - t0, 2)
        if hasattr(uhop, "wait"):
            row["tuning_done"] = bool(uhop.wait(timeout=opts.wait_s))
            row["waited_s"] = round(time.perf_counter() - t0, 2)
        fns["uhop"] = uf
    for name, f in fns.items():
        row[f"{name}_err"] = rel_err(f(*args), ref)
    # a device copy moving the case's bytes (half read, half written): what "of copy" means for a
    # small case, where launch and ramp-up cost the copy too (the 1 GiB figure is the ceiling)
    src = torch.empty(max(1, int(nbytes) // 4), dtype=torch.bfloat16, device="cuda").uniform_()
    dst = torch.empty_like(src)
    fns["copy_same"] = lambda *_: dst.copy_(src)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(2):  # interleaved rounds
        for name, f in fns.items():
            times[name].append(bench(f, args))
    for name, ts in times.items():
        ms = min(ts)
        row[f"{name}_ms"] = ms
        row[f"{name}_gbps"] = round(nbytes / ms / 1e6, 1)
        row[f"{name}_of_copy"] = round(nbytes / ms / 1e6 / copy, 3)
    for name in ("eager", "compile", "uhop"):
        if f"{name}_ms" in row:
            row[f"{name}_of_copy_same"] = round(row["copy_same_ms"] / row[f"{name}_ms"], 3)
    if opts.oracle:
        row["oracle"] = oracle(op, dims, dtype, params, arity, args, ref)
        ok = [r for r in row["oracle"] if "ms" in r and r["err"] < 0.02]
        if ok:
            best = min(ok, key=lambda r: r["ms"])
            row["oracle_best"] = best["candidate"]
            row["oracle_gbps"] = round(nbytes / best["ms"] / 1e6, 1)
            row["oracle_of_copy"] = round(nbytes / best["ms"] / 1e6 / copy, 3)
    try:
        from uhop.store import open_store

        full = {**uhop.ops.get(op).defaulted_dims(), **dims}
        mine = [e for e in open_store().entries(op)  # this case's entry (the store holds every case's)
                if e.problem.get("dims") == full and e.problem.get("dtype") == dtype]
        row["uhop_store"] = [str(e.candidate)[:160] for e in mine]
        # what the product's tuning did with each candidate (why a kernel lost, failed or was skipped)
        row["uhop_measured"] = [{"params": e.problem.get("params"), "pick": e.candidate, "measurements": [
            {"candidate": m["candidate"], "status": m["status"], "median_s": m.get("median_s"),
             "reason": (m.get("reason") or "")[:200]} for m in open_store().measurements(e.key)]} for e in mine]
    except Exception as exc:
        row["uhop_store"] = f"unreadable: {exc}"
    return row


def environment() -> dict[str, Any]:
    import torch
    import triton

    def smi(q: str) -> str:
        try:
            r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=20)  # fmt: skip
            return r.stdout.strip().splitlines()[0]
        except Exception as exc:
            return f"unavailable ({type(exc).__name__})"

    props = torch.cuda.get_device_properties(0)
    return {"gpu": torch.cuda.get_device_name(0), "sm_count": props.multi_processor_count,
            "driver": smi("driver_version"), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": " ".join(sys.argv)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/width_sweep.json")
    ap.add_argument("--only", default="", help="comma-separated ops")
    ap.add_argument("--match", default="", help="comma-separated substrings of 'op RxN dtype expr' (any one keeps a case)")
    ap.add_argument("--no-product", dest="product", action="store_false")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument(
        "--oracle", action="store_true", help="also time every Triton candidate (labelled oracle)"
    )
    ap.add_argument("--deadline-s", type=float, default=480.0, help="time the product path only before this")
    ap.add_argument("--wait-s", type=float, default=60.0, help="longest uhop.wait() for background tuning")
    ap.add_argument("--stop-s", type=float, default=1e9, help="start no case after this many seconds")
    opts = ap.parse_args(argv)
    opts.deadline = time.monotonic() + opts.deadline_s
    stop = time.monotonic() + opts.stop_s
    os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp(prefix="uhop_sweep_"))  # empty store
    import torch

    if not torch.cuda.is_available():
        print("width_sweep needs a CUDA GPU (torch.cuda.is_available() is False)")
        return 2
    only = {s for s in opts.only.split(",") if s}
    cases = [(op, R, N, dt, ar, None) for op, R, N, dt, ar in CASES[:2]]
    cases += [("elementwise", 1, 1 << 26, "bfloat16", n, e) for e, n in CHAINS[:1]]
    cases += [(op, R, N, dt, ar, None) for op, R, N, dt, ar in CASES[2:]]
    cases += [("elementwise", 1, 1 << 26, "bfloat16", n, e) for e, n in CHAINS[1:]]
    cases += [("elementwise", R, N, "bfloat16", len(f[1]), f) for R, N, f in FORMS]
    cases = [c for c in cases if not only or c[0] in only]
    match = [m for m in opts.match.split(",") if m]
    cases = [c for c in cases if not match or any(m in f"{c[0]} {c[1]}x{c[2]} {c[3]} {c[5]}" for m in match)]
    result: dict[str, Any] = {"env": environment(), "copy_gbps": [copy_gbps()], "rows": []}
    copy = result["copy_gbps"][0]
    for op, R, N, dt, ar, expr in cases:
        if time.monotonic() > stop:
            result.setdefault("not_run", []).append([op, R, N, dt, expr])
            continue
        t0 = time.perf_counter()
        try:
            r = run_case(op, R, N, dt, ar, expr, opts, copy)
        except Exception as exc:
            r = {"op": op, "R": R, "N": N, "dtype": dt, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        r["case_s"] = round(time.perf_counter() - t0, 1)
        result["rows"].append(r)
        print(line(r), flush=True)
        with open(opts.out, "w") as f:
            json.dump(result, f, indent=1)
    result["copy_gbps"].append(copy_gbps())
    with open(opts.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"copy {result['copy_gbps']} GB/s; {result['env']}")
    return 0


def line(r: dict[str, Any]) -> str:
    def g(k):
        v = r.get(k)
        return f"{v:7.0f}" if isinstance(v, (int, float)) else "      -"

    name = f"{r['op']:<11} {r['R']:>8}x{r['N']:<8} {r['dtype']:<8}"
    errs = " ".join(f"{k[:-4]}={r[k]:.1e}" for k in r if k.endswith("_err") and isinstance(r[k], float))
    extra = r.get("error") or r.get("compile_error") or ""
    return (f"{name} uhop {g('uhop_gbps')} eager {g('eager_gbps')} compile {g('compile_gbps')} "
            f"copy@size {g('copy_same_gbps')} oracle {g('oracle_gbps')} {r.get('oracle_best', '')} first {r.get('first_call_s', '-')}s "
            f"{errs} {extra}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
