"""``uhop bench``: UHOP vs the naive eager baseline vs the library baseline, in one run.

Every row times three things on the same inputs:
``naive`` (the plain numpy formula a user would write), ``library`` (the vendor path UHOP could
have picked itself: numpy/OpenBLAS for GEMM, torch's CPU kernels where torch is installed), and
``uhop`` (the public entry point, ``uhop.ops.<op>``, dispatch overhead included), interleaved
round by round (the machine's noise falls on all three alike).

``uhop bench OP --shape S`` runs one case of the user's own: the library baseline and the
plain numpy formula where the op and params match a suite row, else the op's reference (numpy)
as the naive baseline and no library row.

On a GPU (``--device cuda``) the two baselines are what a PyTorch user runs instead: torch eager
(torch's own op, the ``torch`` backend's kernel for the problem) and ``torch.compile`` of that
same function (default mode; its compile time is reported apart), on CUDA tensors of the case's
dtype (bf16 and fp16 too), each timed with the device synchronized around every round.
"""

from __future__ import annotations

import dataclasses
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from uhop.measure.bench import benchmark


def _erf(x):
    try:
        from scipy.special import erf

        return erf(x)
    except ImportError:
        return np.vectorize(math.erf, otypes=[x.dtype])(x)


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_layernorm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def _np_rmsnorm(x, w, eps=1e-6):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _np_log_softmax(x):
    s = x - x.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def _np_attention(q, k, v, causal=False):
    s = q @ np.swapaxes(k, -1, -2) / np.float32(math.sqrt(q.shape[-1]))
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], dtype=bool), 1), -np.inf, s)
    return _np_softmax(s) @ v


def _np_gelu_mm(a, b, bias):
    y = a @ b + bias
    return 0.5 * y * (1 + _erf(y / np.float32(math.sqrt(2))))


NAIVE: dict[str, Callable[..., Any]] = {
    "elementwise": lambda x: (1 / (1 + np.exp(-(x * 1.5 + 0.5)))) * x - 0.25,
    "softmax": _np_softmax,
    "log_softmax": _np_log_softmax,
    "layernorm": _np_layernorm,
    "rmsnorm": _np_rmsnorm,
    "matmul": lambda a, b: a @ b,
    "matmul_gelu": _np_gelu_mm,
    "attention": _np_attention,
    "attention_causal": lambda q, k, v: _np_attention(q, k, v, True),
    "conv2d": None,  # filled from the op reference (einsum), the plain way to write it in numpy
}


def _library(name: str) -> tuple[str, Callable[..., Any]] | None:
    """The vendor path for a row: torch's CPU kernels if installed, numpy BLAS for GEMM."""
    if name == "matmul":
        return "numpy BLAS", lambda a, b: np.matmul(a, b)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    t = torch.from_numpy
    table: dict[str, Callable[..., Any]] = {
        "elementwise": lambda x: torch.sigmoid(t(x) * 1.5 + 0.5) * t(x) - 0.25,
        "softmax": lambda x: torch.softmax(t(x), -1),
        "log_softmax": lambda x: torch.log_softmax(t(x), -1),
        "layernorm": lambda x, w, b: F.layer_norm(t(x), (x.shape[-1],), t(w), t(b), 1e-5),
        "rmsnorm": lambda x, w: F.rms_norm(t(x), (x.shape[-1],), t(w), 1e-6),
        "matmul_gelu": lambda a, b, bias: F.gelu(torch.addmm(t(bias), t(a), t(b))),
        "attention": lambda q, k, v: F.scaled_dot_product_attention(t(q), t(k), t(v)),
        "attention_causal": lambda q, k, v: F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True),
        "conv2d": lambda x, w: F.conv2d(t(x), t(w), padding=1),
    }
    return ("torch " + torch.__version__, table[name]) if name in table else None


@dataclass(frozen=True)
class Case:
    name: str
    op: str
    shape: str
    params: dict[str, Any]
    arity: int
    dtype: str = "float32"
    #: the suite row whose naive formula and library call this case shares ("" for none)
    baseline: str = ""
    #: "cpu", or "cuda[:N]": torch eager and torch.compile are the baselines there
    device: str = "cpu"


SUITES: dict[str, list[Case]] = {
    "cpu": [
        Case("elementwise", "elementwise", "16777216", {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"}, 1),
        Case("softmax", "softmax", "8192x1024", {}, 1),
        Case("layernorm", "layernorm", "8192x1024", {}, 3),
        Case("rmsnorm", "rmsnorm", "8192x1024", {}, 2),
        Case("matmul", "matmul", "1024x1024x1024", {}, 2),
        Case("matmul_gelu", "matmul", "1024x4096x1024", {"activation": "gelu"}, 3),
        Case("attention", "attention", "1x8x1024x64", {}, 3),
        Case("attention_causal", "attention", "1x8x1024x64", {"causal": True}, 3),
        Case("conv2d", "conv2d", "8x64x56x56x64x3x3", {"padding": 1}, 2),
    ],
    "quick": [
        Case("elementwise", "elementwise", "262144", {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"}, 1),
        Case("softmax", "softmax", "256x512", {}, 1),
        Case("layernorm", "layernorm", "256x512", {}, 3),
        Case("matmul", "matmul", "128x128x128", {}, 2),
    ],
    # the shapes of benchmarks/gpu_suite.py's memory-bound rows and a GEMM, in bf16 (with --device cuda)
    "gpu": [
        Case("elementwise", "elementwise", "67108864", {"expr": "sigmoid(x0*1.5+0.5)*x0-0.25"}, 1, "bfloat16"),
        Case("softmax", "softmax", "32768x4096", {}, 1, "bfloat16"),
        Case("layernorm", "layernorm", "32768x4096", {}, 3, "bfloat16"),
        Case("rmsnorm", "rmsnorm", "32768x4096", {}, 2, "bfloat16"),
        Case("matmul", "matmul", "4096x4096x4096", {}, 2, "bfloat16"),
        Case("attention_causal", "attention", "8x16x2048x64", {"causal": True}, 3, "bfloat16"),
    ],
}
GPU_DTYPES = ("float32", "float16", "bfloat16")


def custom_case(op: str, shape: str, params: dict[str, Any] | None = None, arity: int | None = None,
                dtype: str = "float32", device: str = "cpu") -> Case:  # fmt: skip
    """One case from the command line (``uhop bench matmul --shape 512x512x512``). Raises
    ``InputError`` (unknown op, bad shape, dtype, params, arity or device) naming what was expected."""
    from uhop.errors import InputError
    from uhop.ops import get as get_op
    from uhop.problem import Problem, require_device

    spec = get_op(op)
    params = dict(params or {})
    require_device(device)
    if device == "cpu" and dtype not in ("float32", "float64"):
        raise InputError(f"dtype must be float32 or float64 for `uhop bench` on the CPU (numpy baselines), got {dtype!r}")
    if device != "cpu" and dtype not in GPU_DTYPES:
        raise InputError(f"dtype must be one of {', '.join(GPU_DTYPES)} for `uhop bench` on {device}, got {dtype!r}")
    # validates all of it; the problem's default arity leaves optional inputs out (matmul's bias)
    arity = Problem.make(op, spec.parse_shape(shape), dtype, params, arity).arity
    baseline = next((c.name for c in SUITES["cpu"] if (c.op, c.params, c.arity) == (op, params, arity)
                     and (op != "elementwise")), "")  # fmt: skip
    name = " ".join([op, *(f"{k}={v}" for k, v in params.items())])
    return Case(name, op, shape, params, arity, dtype, baseline, device)


def machine_info(device: str = "cpu") -> dict[str, Any]:
    from uhop import __version__
    from uhop.problem import cpu_model, hardware_fingerprint

    info = {
        "cpu": cpu_model(),
        "cores": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "uhop": __version__,
        "versions": hardware_fingerprint("cpu"),
    }
    if device != "cpu":
        info["device"] = device
        info["gpu"] = hardware_fingerprint(device)
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")} for d in threadpool_info()]
    except ImportError:
        pass
    return info


def _peak(dtype: str, device: str = "cpu") -> tuple[float | None, float | None]:
    try:
        from uhop.hardware import get_capabilities

        caps = get_capabilities(device=device if device != "cuda" else "cuda:0")
        return caps.peak_flops({"float32": "fp32", "float64": "fp64"}.get(dtype, dtype)), caps.peak_bandwidth()
    except Exception:
        return None, None


def run_suite(suite: str, budget_s: float = 30.0, console: Any = None,
              device: str = "cpu") -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}, got {suite!r}")
    if suite == "gpu" and device == "cpu":
        raise ValueError("the gpu suite runs on a CUDA device (--device cuda)")
    cases = SUITES[suite] if device == "cpu" else [dataclasses.replace(c, device=device) for c in SUITES[suite]]
    return run_cases(cases, budget_s=budget_s, console=console, overhead=device == "cpu")


def _gpu_inputs(problem: Any, xs: list[np.ndarray]) -> list[Any]:
    """Host inputs (float32 for bf16/fp16 problems, as the ops draw them) as CUDA tensors of the
    problem's input dtypes."""
    import torch

    from uhop.measure.validate import input_dtypes

    out = []
    for x, dt in zip(xs, input_dtypes(problem, len(xs)), strict=True):
        t = torch.from_numpy(np.ascontiguousarray(x)).to(problem.device)
        out.append(t.to(getattr(torch, dt)) if x.dtype.kind == "f" else t)
    return out


def _gpu_baselines(problem: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """torch eager (the torch backend's kernel for the problem: torch's own op) and
    torch.compile of it (compiled at its first call, during the warm-up)."""
    import torch

    from uhop import backends as bk
    from uhop.errors import InputError

    tb = bk.get("torch")
    if not (tb.available and tb.supports(problem)):
        raise InputError(f"torch has no kernel for {problem.describe()}: no GPU baseline to compare with")
    eager = tb.compile(next(iter(tb.candidates(problem))), problem)
    return eager, torch.compile(eager)


def run_cases(cases: list[Case], budget_s: float = 30.0, console: Any = None,
              overhead: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    import uhop
    from uhop.ops import get as get_op
    from uhop.problem import Problem
    from uhop.tune.tuner import tune

    rng = np.random.default_rng(0)
    rows = []
    for case in cases:
        gpu = case.device != "cpu"
        peak_flops, peak_bw = _peak(case.dtype, case.device)
        spec = get_op(case.op)
        dims = spec.parse_shape(case.shape)
        problem = Problem.make(case.op, dims, case.dtype, case.params, case.arity, device=case.device,
                               array="torch" if gpu else "numpy")  # fmt: skip
        if console:
            from uhop.cli.progress import Reporter

            console.print(f"[bold]{case.name}[/bold] {problem.describe()}: tuning (budget {budget_s:g} s) ...")
            with Reporter(console, f"  {case.name}: candidates") as rep:
                res = tune(problem=problem, budget_s=budget_s, progress=lambda i, n, m, _r=rep: _r.update(i, n))
            console.print(f"  chose {res.best.candidate.id if res.best else 'nothing'}; timing UHOP, "
                          + ("torch eager and torch.compile (compiling) ..." if gpu else "naive and library ..."))  # fmt: skip
        else:
            res = tune(problem=problem, budget_s=budget_s)
        xs = spec.make_inputs(problem.dim, problem.param, rng, case.dtype, case.arity)
        if gpu:
            xs = _gpu_inputs(problem, xs)
            sets = [xs] + [[x.clone() for x in xs] for _ in range(2)]
        else:
            sets = [xs] + [[x.copy() for x in xs] for _ in range(2)]
        direct = getattr(uhop.ops, case.op)
        if case.op == "elementwise":
            expr = case.params["expr"]

            def run_uhop(*a, _e=expr):
                return uhop.ops.elementwise(_e, *a)
        else:
            p = case.params

            def run_uhop(*a, _d=direct, _p=p):
                return _d(*a, **_p)

        sync = None
        if gpu:
            import torch

            naive, compiled = _gpu_baselines(problem)
            naive_label, lib = "torch eager", (f"torch.compile (torch {torch.__version__})", compiled)
            sync = torch.cuda.synchronize
        else:
            known = case.baseline or (case.name if case.name in NAIVE else "")
            naive = NAIVE.get(known)
            if naive is None:
                p = problem.param

                def naive(*a, _spec=spec, _p=p):
                    return _spec.reference(*a, **_p)

            naive_label = "numpy formula" if known in NAIVE and NAIVE[known] is not None else "op reference (numpy)"
            lib = _library(known) if known else None
        kernels = [run_uhop, naive] + ([lib[1]] if lib else [])
        run_uhop(*xs)
        uhop.wait()  # whatever the first call set off (a stored entry's check) ends before timing
        first: list[float] | None = [] if gpu else None  # torch.compile's compile: its first call
        try:
            samples = _interleaved(kernels, sets, sync=sync, first=first)
        except Exception as exc:  # torch.compile failing on this problem: say so, time the rest
            if not (gpu and lib):
                raise
            if console:
                console.print(f"  torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            lib, kernels = None, kernels[:2]
            samples = _interleaved(kernels, sets, sync=sync, first=first)
        meds = [float(np.median(s)) for s in samples]
        t_uhop, t_naive = meds[0], meds[1]
        t_lib = meds[2] if lib else None
        q = np.quantile(samples[0], [0.1, 0.9])
        flops, nbytes = problem.flops(), problem.bytes()
        row = {
            "name": case.name,
            "problem": problem.describe(),
            "device": case.device,
            "chosen": res.best.candidate.id if res.best else None,
            "uhop_s": t_uhop,
            "uhop_spread": float((q[1] - q[0]) / t_uhop),
            "naive_s": t_naive,
            "naive": naive_label,
            "library": lib[0] if lib else None,
            "library_s": t_lib,
            "speedup_vs_naive": t_naive / t_uhop,
            "speedup_vs_library": (t_lib / t_uhop) if t_lib else None,
            "gflops": flops / t_uhop / 1e9,
            "gbps": nbytes / t_uhop / 1e9,
            "pct_peak_flops": 100 * flops / t_uhop / peak_flops if peak_flops else None,
            "pct_peak_bw": 100 * nbytes / t_uhop / peak_bw if peak_bw else None,
        }
        if first and lib:
            row["compile_first_call_s"] = first[2]  # torch.compile's first call: its compile
        rows.append(row)
    if overhead:
        rows.append(dispatch_overhead())
    return rows, machine_info(cases[0].device if cases else "cpu")


def _interleaved(kernels: list[Callable[..., Any]], sets: list[list[Any]], rounds: int = 7, round_s: float = 0.05,
                 sync: Callable[[], Any] | None = None, first: list[float] | None = None) -> list[list[float]]:  # fmt: skip
    """Seconds per call, ``[kernel][round]``: each round times every kernel over about
    ``round_s`` of calls (rotating input sets), in an order rotated by one each round, so the
    machine's noise falls on all alike. One warm-up call each, which also sizes the rounds: a
    slow baseline (numpy attention, the einsum convolution: 0.3-2 s a call) makes 8 calls in all,
    as a 7-sample benchmark did (``tune.retime.interleaved``'s benchmark per round made 35).
    ``sync`` (a GPU's) waits for the device before and after each timed stretch; ``first``
    receives each kernel's first-call seconds (a JIT's compile)."""
    from time import perf_counter

    sync = sync or (lambda: None)
    per = []
    for k in kernels:
        sync()
        t0 = perf_counter()
        k(*sets[0])
        sync()
        per.append(max(perf_counter() - t0, 1e-7))
    if first is not None:
        first[:] = per
        for i, k in enumerate(kernels):  # the size of a round from a warm call, not the compile
            sync()
            t0 = perf_counter()
            k(*sets[0])
            sync()
            per[i] = max(perf_counter() - t0, 1e-7)
    calls = [max(1, min(10_000, int(round_s / t))) for t in per]
    out: list[list[float]] = [[] for _ in kernels]
    n = len(kernels)
    for r in range(rounds):
        for j in range(n):
            i = (j + r) % n
            sync()
            t0 = perf_counter()
            for c in range(calls[i]):
                kernels[i](*sets[c % len(sets)])
            sync()
            out[i].append((perf_counter() - t0) / calls[i])
    return out


def dispatch_overhead(n: int = 20000) -> dict[str, Any]:
    """Per-call cost of a cache hit through ``@uhop.optimize`` over calling the chosen kernel."""
    import uhop

    @uhop.optimize("matmul")
    def mm(a, b):
        return a @ b

    a = np.random.default_rng(1).uniform(-1, 1, (8, 8)).astype(np.float32)
    b = a.copy()
    mm(a, b)
    uhop.wait()  # the tuned kernel, not the interim one, and no tuning running beside the timing
    mm(a, b)
    kernel = next(iter(mm._kernels.values()))
    t_direct = benchmark(kernel, [(a, b)], min_time_s=0.2, repeat=9)
    t_uhop = benchmark(mm, [(a, b)], min_time_s=0.2, repeat=9)
    return {
        "name": "dispatch_overhead",
        "problem": "matmul 8x8x8 float32, cache hit through @uhop.optimize",
        "kernel_s": t_direct.median_s,
        "uhop_s": t_uhop.median_s,
        "overhead_us": (t_uhop.median_s - t_direct.median_s) * 1e6,
    }


def _roofline(r: dict[str, Any]) -> str:
    """The binding roof: the larger share of peak FLOP/s or peak bandwidth (manifest figures,
    measured ones where `uhop hw probe` stored them; derived CPU peaks assume the base clock, so
    turbo can read above 100%)."""
    if r.get("pct_peak_bw") is None and r["gflops"] < 4 * r["gbps"]:  # memory-bound, no BW figure
        return "BW? (uhop hw probe)"
    shares = [(r.get("pct_peak_flops"), "FLOP/s"), (r.get("pct_peak_bw"), "BW")]
    shares = [(v, k) for v, k in shares if v is not None]
    if not shares:
        return "-"
    v, k = max(shares)
    return f"{v:.0f}% {k}"


def print_table(rows: list[dict[str, Any]], console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from uhop.cli.core import _fmt_time, fold_id

    cases = [r for r in rows if r["name"] != "dispatch_overhead"]
    gpu = any(r.get("device", "cpu") != "cpu" for r in cases)
    naive_col, lib_col = ("eager", "compile") if gpu else ("naive", "library")
    where = f" on {cases[0]['device']}" if gpu else ""
    times = Table(title=f"uhop bench{where} (ratios > 1: UHOP faster)")
    for col in ("case", "UHOP", naive_col, lib_col, f"vs {naive_col}", f"vs {lib_col}"):
        times.add_column(col, no_wrap=col != "case" and col != lib_col, overflow="fold",
                         justify="left" if col in ("case", lib_col) else "right")  # fmt: skip
    picks = Table(title="what UHOP picked")
    for col in ("case", "UHOP pick", "GFLOP/s", "GB/s", "roofline"):
        picks.add_column(col, overflow="fold", no_wrap=col in ("GFLOP/s", "GB/s"), justify="right" if col in ("GFLOP/s", "GB/s") else "left")
    for r in cases:
        times.add_row(
            r["name"], _fmt_time(r["uhop_s"]), _fmt_time(r["naive_s"]),
            (f"{_fmt_time(r['library_s'])}" + ("" if gpu else f" ({r['library']})")) if r["library_s"] else "-",
            f"{r['speedup_vs_naive']:.2f}x", f"{r['speedup_vs_library']:.2f}x" if r["speedup_vs_library"] else "-",
        )  # fmt: skip
        picks.add_row(escape(r["name"]), escape(fold_id(r["chosen"] or "-")), f"{r['gflops']:.1f}", f"{r['gbps']:.2f}", _roofline(r))
    # Ten columns do not fit 80: times and picks are two tables (same rows, same order).
    console.print(times)
    console.print(picks)
    if gpu:
        lib = next((r["library"] for r in cases if r.get("library")), "torch.compile")
        console.print(f"eager: torch's own op; compile: {lib}, default mode (first call, its compile: "
                      + ", ".join(f"{r['name']} {r['compile_first_call_s']:.1f} s" for r in cases
                                  if r.get("compile_first_call_s") is not None) + ")")  # fmt: skip
    if any(r.get("naive") == "op reference (numpy)" for r in cases):
        console.print("naive: the op's reference in numpy where no suite row has these params (no library row)")
    ov = next((r for r in rows if r["name"] == "dispatch_overhead"), None)
    if ov:
        console.print(f"cache-hit dispatch overhead: {ov['overhead_us']:.2f} µs per call "
                      f"(kernel {ov['kernel_s'] * 1e6:.2f} µs, through UHOP {ov['uhop_s'] * 1e6:.2f} µs)")  # fmt: skip
