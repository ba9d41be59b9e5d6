"""Expected time of a candidate before it is measured: the order a budgeted tuning run follows.

A trained cost model (:mod:`uhop.perf.model`) ranks candidates when one exists for the op. Until
then a roofline prior does: ``flops / (peak * eff) + bytes * passes / bandwidth``
with the device's peaks from its hardware manifest (measured by ``uhop hw probe`` where it ran)
and, per template, how many passes over memory it makes (a fused kernel one, an eager chain one
per node) and what fraction of the peak it reaches (vendor GEMMs most of it, a serial loop on a
multi-core CPU a fraction). The figures are coarse on purpose: the prior only has to put the
kernels that can win ahead of those that cannot, so that the budget reaches them; timing decides.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from uhop.backends.base import Candidate
from uhop.problem import Problem

#: ops bound by arithmetic when large (the rest stream memory)
COMPUTE_OPS = frozenset({"matmul", "conv2d", "attention"})
#: fallback peaks when the manifest has none: (FLOP/s, bytes/s)
_FALLBACK = {"cpu": (1e11, 2e10), "cuda": (5e13, 2e12)}


@functools.cache
def peaks(device: str, dtype: str) -> tuple[float, float]:
    """(peak FLOP/s, peak bytes/s) of ``device`` for ``dtype``, from its manifest."""
    flops, bw = _FALLBACK["cpu" if device == "cpu" else "cuda"]
    try:
        from uhop.hardware import get_capabilities

        m = get_capabilities(device=device)
        flops = m.peak_flops(dtype) or m.peak_flops("float32") or flops
        bw = m.peak_bandwidth() or bw
    except Exception:  # no manifest for this device: the fallback keeps the order sensible
        pass
    return float(flops), float(bw)


def _passes(problem: Problem) -> int:
    """Memory passes of an unfused (eager) evaluation of ``problem``'s memory-bound part."""
    if problem.op == "elementwise":
        from uhop.ops.expr import parse

        e = parse(problem.param["expr"])
        return max(1, _nodes(e))
    if problem.op in ("softmax", "layernorm", "rmsnorm", "log_softmax"):
        return 5
    act = problem.param.get("activation", "none")
    return {"none": 1, "relu": 2, "silu": 4, "gelu": 6}.get(str(act), 4)


def _nodes(e: object) -> int:
    args = getattr(e, "args", ())
    return (1 if args else 0) + sum(_nodes(a) for a in args)


def _threads(device: str) -> int:
    if device != "cpu":
        return 1
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def efficiency(c: Candidate, problem: Problem) -> tuple[float, float]:
    """(fraction of peak FLOP/s, memory passes relative to one fused pass) for ``c``."""
    cfg, t, b = c.cfg, c.template, c.backend
    eager = _passes(problem)
    serial = 1.0 / min(_threads(problem.device), 4) if cfg.get("parallel") is False else 1.0
    if problem.op in COMPUTE_OPS:
        epi = eager if b in ("numpy", "torch") and t in ("eager", "blas", "im2col") else 1
        comp = {"numpy": 0.6, "torch": 0.7, "numba": 0.6, "triton": 0.65, "iree": 0.25}.get(b, 0.3)
        if b == "torch" and t in ("sdpa", "lt_epilogue"):
            comp, epi = 0.75, 1
        if t == "batched":  # numba: a batched b's GEMMs as tasks, where numpy and torch loop all-core
            comp = 0.75  # BLAS calls, a barrier each (1.36x numpy idle at 96 x 1024 x 64 x 1024)
        return comp, float(epi) / serial  # a serial epilogue streams the output on one core
    # memory-bound: fused generated kernels make one pass; eager chains one per node
    if b in ("numba", "triton", "iree", "opencl", "cuda"):
        # cuda: the cluster row kernels, offered for long rows only, ahead of Triton's split there
        # in 16-bit (row_variants_cuda_h100_fifteenth.json: 86-92% of copy against 82%), behind it
        # in float32 (2692 vs 2857 GB/s at 2048 x 50257); the pipe kernels (softmax and layernorm
        # over 8K-56K, many rows) ahead of Triton's row at 11008 (row_variants_pipe_h100_twentyseventh.json;
        # on the H200 by 10-14%, row_variants_pipe_h200_twentyeighth.json)
        cuda = 0.9 if problem.dtype in ("bfloat16", "float16") else 0.8
        eff = {"numba": 0.8, "triton": 0.85, "iree": 0.5, "opencl": 0.5, "cuda": cuda}[b] * serial
        return 1.0, 1.0 / eff
    if b == "numpy" and t == "blocked":  # the chain stays in cache per block, at Python speed
        return 1.0, 2.5
    if b == "torch" and problem.device != "cpu":
        return 1.0, float(max(1, eager // 2 + 1))  # torch fuses nothing, but its kernels stream at peak
    return 1.0, float(eager)


def score_bytes(c: Candidate, problem: Problem) -> float:
    """Attention's BxSxL score matrix, when ``c`` materializes it in memory (eager templates, and
    SDPA on a CPU, which measured no faster than numpy there): written, read for the softmax,
    written again and read for the product, about four passes. numpy's eager attention makes about
    twelve, one ufunc at a time on one core (scale, causal mask, max, subtract, exp, sum, divide:
    each reads and most write): 0.37 s a call at 8 x 2048 x 2048 x 64 causal on the 2-core EPYC VM,
    where four passes had put it at 73 ms, under 2x numba's blocked kernel, so a timing run
    measured it in full first (``budget_order``'s lead). Blocked and flash kernels keep each block
    of scores on chip."""
    if problem.op != "attention":
        return 0.0
    fused = c.template in ("blocked", "flash") or (c.template == "sdpa" and problem.device != "cpu")
    if fused:
        return 0.0
    d = problem.dim
    item = 2 if problem.dtype in ("bfloat16", "float16") else 8 if problem.dtype == "float64" else 4
    passes = 12.0 if c.backend == "numpy" else 4.0
    return passes * d["B"] * d["S"] * d["L"] * item


def prior_s(c: Candidate, problem: Problem) -> float:
    """Expected seconds per call of ``c`` on ``problem`` (see the module docstring)."""
    flops_peak, bw = peaks(problem.device, problem.dtype)
    comp, passes = efficiency(c, problem)
    out_bytes = problem.bytes()
    t_mem = (out_bytes * passes + score_bytes(c, problem)) / bw
    t_comp = problem.flops() / (flops_peak * comp) if problem.flops() else 0.0
    return max(t_mem + t_comp, 1e-9)  # summed: an unfused step waits for memory, then computes


def order(problem: Problem, candidates: Sequence[Candidate]) -> list[tuple[Candidate, float]]:
    """``candidates`` by expected time, fastest first: the trained cost model's prediction where
    one exists for the op, else :func:`prior_s`. Ties keep the backends' own order (stable)."""
    try:
        from uhop.perf.model import rank

        ranked = rank(problem, list(candidates))
        if ranked and all(math.isfinite(p) for _, p in ranked):
            return [(c, float(p)) for c, p in ranked]
    except ImportError:  # no xgboost: the prior decides
        pass
    scored = [(c, prior_s(c, problem)) for c in candidates]
    return sorted(scored, key=lambda cp: cp[1])
