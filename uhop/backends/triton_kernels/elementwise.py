"""Fused elementwise chains: Triton source generated from the expr IR (:mod:`uhop.ops.expr`).

Every input is read once, each in its own dtype (inputs of mixed dtypes: a bfloat16 activation
and a float32 scale), and the output written once in the problem's dtype (with mixed inputs the
promoted one, not x0's); intermediates stay in registers, computed in fp32 (the IR's constants
are float64, rounded to fp32 like any fp32 kernel). The generated module is written to
``$UHOP_HOME/triton_gen/ew_<hash>.py`` and imported (Triton JIT needs a source file); the hash
covers the expression and this generator, so a change in either makes a new file.

Config keys: ``chain``: BLOCK (elements per program), warps, and ``grid``: "full" (one program
per block) or programs per SM for a persistent grid. ``rowsum`` (a chain reduced over the last
dim): ROWS, BLOCK (columns per step), warps, and ``split`` (column ranges per row, for a few long
rows; their fp32 partials are combined by the launcher).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import os
import re
import sys
from typing import Any

from uhop.backends.triton_kernels import Limits
from uhop.backends.triton_kernels.launch import Launcher
from uhop.ops import expr as ex

#: expr function -> Triton expression template over its arguments ({0}, {1})
TEMPLATES = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "pow": "libdevice.pow({0}, {1})",
    "maximum": "tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
    "minimum": "tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)",
    "neg": "(-{0})", "abs": "tl.abs({0})", "exp": "tl.exp({0})", "log": "tl.log({0})",
    "sqrt": "tl.sqrt_rn({0})", "rsqrt": "(1.0 / tl.sqrt_rn({0}))", "tanh": "libdevice.tanh({0})",
    "sin": "tl.sin({0})", "cos": "tl.cos({0})", "sigmoid": "tl.sigmoid({0})",
    "relu": "tl.where({0} > 0.0, {0}, tl.where({0} != {0}, {0}, 0.0))",
    "silu": "({0} * tl.sigmoid({0}))",
    "gelu": "(0.5 * {0} * (1.0 + tl.math.erf({0} * 0.7071067811865476)))",
    "erf": "tl.math.erf({0})", "square": "({0} * {0})", "reciprocal": "(1.0 / {0})",
}  # fmt: skip


#: ``approx`` kernels (reductions, whose one read per element leaves an SM about 16 instruction
#: issues per element at the H200's copy rate): exp and sigmoid as one MUFU instruction each
#: (``ex2.approx.ftz``, ``rcp.approx.ftz``: 2 ulp like Triton's ``exp`` and ``/``, subnormal
#: results flushed to 0). In the loop of an unmasked ``x * sigmoid(x)`` sum on sm_90, Triton's own
#: forms take 16.5 instructions per element (the non-ftz ex2's and the full-range division's
#: scaling), these 7.6 (``tests/backends/test_sass_sm90.py`` counts them in the SASS).
APPROX_TEMPLATES = {
    "exp": "_ex2({0} * 1.4426950408889634)",
    "sigmoid": "_rcp(1.0 + _ex2({0} * -1.4426950408889634))",
    "silu": "({0} * _rcp(1.0 + _ex2({0} * -1.4426950408889634)))",
}

#: the functions APPROX_TEMPLATES makes cheaper: a reduction over a chain with one of them gets an
#: ``approx`` candidate
APPROX_FNS = frozenset(APPROX_TEMPLATES)

APPROX_HELPERS = [
    "@triton.jit",
    "def _ex2(x):",
    '    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)',
    "", "",
    "@triton.jit",
    "def _rcp(x):",
    '    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)',
    "", "",
]  # fmt: skip

#: Triton's CPU interpreter has no libdevice: CI runs these stand-ins (the GPU code uses libdevice).
INTERPRETER_TEMPLATES = {
    "pow": "tl.exp({1} * tl.log({0}))",
    "tanh": "(2.0 * tl.sigmoid(2.0 * {0}) - 1.0)",
}


def _const(v: float) -> str:
    if v != v:
        return 'float("nan")'
    if v in (float("inf"), float("-inf")):
        return f'float("{v}")'
    return repr(float(v))


def _body(e: ex.Expr, templates: dict[str, str], load: Any) -> tuple[list[str], str]:
    """Lines computing ``e`` (fp32) with ``load(i)`` the line loading input i, and its result."""
    names: dict[ex.Expr, str] = {}
    body: list[str] = []
    for i, node in enumerate(ex.nodes(e)):
        if isinstance(node, ex.Var):
            v = f"x{node.index}"
            body.append(load(node.index))
            names[node] = v
        elif isinstance(node, ex.Const):
            names[node] = _const(node.value)
        else:
            assert isinstance(node, ex.Call)
            t = f"t{i}"
            body.append(f"{t} = {templates[node.fn].format(*(names[a] for a in node.args))}")
            names[node] = t
    result = names[e]
    if isinstance(e, ex.Var):  # identity chain: still a new tensor
        result = f"({result} + 0.0)"
    return body, result


def generate(e: ex.Expr, n_inputs: int, forms: str = "", reduce: str = "none", approx: bool = False,
             interpret: bool | None = None) -> str:
    """Triton source of ``ew(x0, ..., out, n, C, BLOCK, EVEN, WIDE, LOOP)`` computing ``e`` over n
    elements (``forms``: per input ``f`` full, ``r`` a row vector of C read at ``offs % C``, ``s``
    a scalar; "" all full), or, with a ``reduce``, of ``ewr(x0, ..., out, R, C, ROWS, BLOCK)``:
    ROWS rows per program, the chain over BLOCK columns at a time accumulated in fp32 registers,
    one value per row stored. ``approx``: exp and sigmoid as single MUFU instructions
    (APPROX_TEMPLATES; GPU code only: under Triton's interpreter, which runs no PTX, the precise
    forms). ``interpret``: generate for the interpreter (default: whether Triton interprets)."""
    from uhop.backends.triton_kernels import interpreting

    interpret = interpreting() if interpret is None else interpret
    templates = {**TEMPLATES, **INTERPRETER_TEMPLATES} if interpret else TEMPLATES
    approx = approx and not interpret
    if approx:
        templates = {**templates, **APPROX_TEMPLATES}
    forms = forms or "f" * n_inputs
    args = ", ".join(f"x{i}_ptr" for i in range(n_inputs))
    head_lines = ["import triton", "import triton.language as tl",
                  "from triton.language.extra import libdevice  # noqa: F401", "", ""]  # fmt: skip
    if approx:
        head_lines += APPROX_HELPERS
    if reduce != "none":
        def load(i: int) -> str:  # @OFF@ / @COL@ / @MSK@ / @RMSK@: the region's offsets, row columns, masks
            if forms[i] == "s":
                return f"x{i} = tl.load(x{i}_ptr).to(tl.float32)"
            if forms[i] == "r":
                return f"x{i} = tl.load(x{i}_ptr + @COL@, mask=@RMSK@, other=0.0, eviction_policy='evict_last').to(tl.float32)"
            return f"x{i} = tl.load(x{i}_ptr + @OFF@, mask=@MSK@, other=0.0, eviction_policy='evict_first').to(tl.float32)"

        body, result = _body(e, templates, load)

        def region(off: str, col: str, msk: str, sfx: str = "", rmsk: str = "", even: bool = False) -> tuple[list[str], str]:
            """The chain's lines for one region (body tile, head or tail), its names suffixed;
            ``even``: loads without masks."""
            def rename(t: str) -> str:
                if even:
                    t = re.sub(r", mask=@R?MSK@, other=0\.0", "", t)
                t = t.replace("@OFF@", off).replace("@COL@", col).replace("@RMSK@", rmsk or msk).replace("@MSK@", msk)
                return re.sub(r"\b([xt]\d+)\b", rf"\g<1>{sfx}", t) if sfx else t
            return [rename(b) for b in body], rename(result)

        if reduce == "max":
            init = 'tl.full((ROWS, BLOCK), -float("inf"), tl.float32)'
            fold = lambda m, v: f'tl.where({m}, {v}, -float("inf"))'  # noqa: E731
            acc = f"acc = tl.maximum(acc, {fold('m', '{}')}, propagate_nan=tl.PropagateNan.ALL)"
            acc_even = "acc = tl.maximum(acc, {}, propagate_nan=tl.PropagateNan.ALL)"
            # tl.max takes no propagate_nan (Triton 3.6: a compile error on the GPU, which the
            # interpreter never hit): a reduce whose combine keeps NaN, as numpy's max does
            final = "r = tl.reduce(acc, 1, _max_nan)"
            edges = ("er = tl.maximum(tl.reduce({}, 1, _max_nan), tl.reduce({}, 1, _max_nan), "
                     "propagate_nan=tl.PropagateNan.ALL)")
            join = "r = tl.maximum(r, er, propagate_nan=tl.PropagateNan.ALL)"
        else:
            init = "tl.zeros((ROWS, BLOCK), tl.float32)"
            fold = lambda m, v: f"tl.where({m}, {v}, 0.0)"  # noqa: E731
            acc = f"acc += {fold('m', '{}')}"
            acc_even = "acc += {}"
            final = "r = tl.sum(acc, axis=1)"
            edges = "er = tl.sum({}, axis=1) + tl.sum({}, axis=1)"
            join = "r += er"
        # aligned rows: one column mask for every row (a broadcast row vector loads under it)
        main, res = region("a[:, None] + cols[None, :]", "cols[None, :]", "m", rmsk="cmask[None, :]")
        even, eres = region("a[:, None] + cols[None, :]", "cols[None, :]", "", even=True)
        main_edges = region("a[:, None] + cols[None, :]", "(a - start)[:, None] + cols[None, :]", "m")[0]
        head, hres = region("start[:, None] + hidx[None, :]", "hidx[None, :]", "hm", "_h")
        tail, tres = region("b[:, None] + hidx[None, :]", "(b - start)[:, None] + hidx[None, :]", "tm", "_t")
        combine = ["@triton.jit", "def _max_nan(a, b):", "    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)",
                   "", ""]  # fmt: skip
        lines = head_lines + (combine if reduce == "max" else []) + [
            "@triton.jit",
            f"def ewr({args}, out_ptr, R, C, SPAN, ROWS: tl.constexpr, BLOCK: tl.constexpr, PARTIAL: tl.constexpr,",
            "        VEC: tl.constexpr, EDGES: tl.constexpr, EVEN: tl.constexpr):",
            "    # program (i, p): rows [i*ROWS, (i+1)*ROWS), body columns [p*SPAN, (p+1)*SPAN); PARTIAL: an fp32",
            "    # partial per (row, p) for the launcher to combine (a few long rows over many programs).",
            "    # EDGES (C not a multiple of 16): a row's body starts at its first VEC-aligned element, so",
            "    # its loads are 16-byte vectors; the head before it and the tail after it go element-wise",
            "    # in program (i, 0). Otherwise every row starts aligned (Triton sees C % 16 == 0). EVEN: no",
            "    # edges, R % ROWS == 0 and C % BLOCK == 0 (so SPAN too): every tile whole, loaded unmasked.",
            "    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)",
            "    part = tl.program_id(1)",
            "    rmask = rows < R",
            "    start = rows.to(tl.int64) * C",
            "    if EDGES:",
            "        end = start + C",
            "        a = (start + (VEC - 1)) // VEC * VEC",
            "        b = tl.maximum(end // VEC * VEC, a)",
            "        nb = b - a",
            "    else:",
            "        a = start",
            "    lo = part * SPAN",
            "    hi = tl.minimum(lo + SPAN, C)",
            "    if EDGES:  # the edges first: their loads in flight while the body streams",
            "        hidx = tl.arange(0, VEC)",
            "        first = part == 0",
            "        hm = rmask[:, None] & (start[:, None] + hidx[None, :] < tl.minimum(a, end)[:, None]) & first",
            "        tm = rmask[:, None] & (hidx[None, :] < (end - b)[:, None]) & first",
            *("        " + b for b in head),
            *("        " + b for b in tail),
            f"        {edges.format(fold('hm', hres), fold('tm', tres))}",
            f"    acc = {init}",
            "    for i in tl.range(0, tl.cdiv(hi - lo, BLOCK)):",
            "        cols = lo + i * BLOCK + tl.arange(0, BLOCK)",
            "        if EDGES:",
            "            m = rmask[:, None] & (cols[None, :] < tl.minimum(lo + SPAN, nb)[:, None])",
            *("            " + b for b in main_edges),
            f"            {acc.format(res)}",
            "        elif EVEN:  # whole tiles of whole rows: no masks, no selects",
            *("            " + b for b in even),
            f"            {acc_even.format(eres)}",
            "        else:",
            "            cmask = cols < hi",
            "            m = rmask[:, None] & cmask[None, :]",
            *("            " + b for b in main),
            f"            {acc.format(res)}",
            f"    {final}",
            "    if EDGES:",
            f"        {join}",
            "    if PARTIAL:",
            "        tl.store(out_ptr + rows.to(tl.int64) * tl.num_programs(1) + part, r, mask=rmask)",
            "    else:",
            *(["        r = r / C"] if reduce == "mean" else []),
            "        tl.store(out_ptr + rows, r.to(out_ptr.dtype.element_ty), mask=rmask)",
            "",
        ]
        return "\n".join(lines)

    def load(i: int) -> str:
        # streamed inputs take the default cache policy: an evict_first hint cost 1-2% on the H100
        # (64M bf16 gelu chain, 2026-12-06: 2883 vs 2942 GB/s, Inductor 2948); a broadcast row
        # vector is re-read by every block and is kept
        if forms[i] == "s":
            return f"x{i} = tl.load(x{i}_ptr).to(tl.float32)"
        at = "offs % C" if forms[i] == "r" else "offs"
        hint = ", eviction_policy='evict_last'" if forms[i] == "r" else ""
        return (f"if EVEN:\n        x{i} = tl.load(x{i}_ptr + {at}{hint}).to(tl.float32)\n"
                f"    else:\n        x{i} = tl.load(x{i}_ptr + {at}, mask=mask, other=0.0{hint}).to(tl.float32)")

    body, result = _body(e, templates, load)
    lines = head_lines + [
        "@triton.jit",
        f"def _block({args}, out_ptr, blk, n, C, BLOCK: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr):",
        "    if WIDE:",
        "        offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "    else:",
        "        offs = blk * BLOCK + tl.arange(0, BLOCK)",
        "    mask = offs < n",
        *("    " + b for b in body),
        "    if EVEN:",
        f"        tl.store(out_ptr + offs, {result}.to(out_ptr.dtype.element_ty))",
        "    else:",
        f"        tl.store(out_ptr + offs, {result}.to(out_ptr.dtype.element_ty), mask=mask)",
        "",
        "",
        "@triton.jit",
        f"def ew({args}, out_ptr, n, C, BLOCK: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr,",
        "       LOOP: tl.constexpr):",
        "    # LOOP: a persistent grid strides over the blocks; otherwise one block per program, straight-line",
        "    # code (the loop's bookkeeping cost 0.3-2% at 64M elements on the H100)",
        "    pid = tl.program_id(0)",
        "    if LOOP:",
        "        nprog = tl.num_programs(0)",
        "        for blk in tl.range(pid, tl.cdiv(n, BLOCK), nprog):",
        f"            _block({args}, out_ptr, blk, n, C, BLOCK, EVEN, WIDE)",
        "    else:",
        f"        _block({args}, out_ptr, pid, n, C, BLOCK, EVEN, WIDE)",
        "",
    ]
    return "\n".join(lines)


#: the fewest columns one program of a split-row reduction covers
SPLIT_MIN = 4096
#: programs per SM a split-row reduction aims for (8: 32-64 warps streaming; not yet measured)
SPLIT_PER_SM = 8

_modules: dict[str, Any] = {}


def _gen_dir() -> str:
    try:
        from uhop.config import settings

        base = str(settings().home)
    except Exception:
        base = os.path.join(os.path.expanduser("~"), ".cache", "uhop")
    return os.path.join(base, "triton_gen")


def load_kernel(e: ex.Expr, n_inputs: int, forms: str = "", reduce: str = "none", approx: bool = False) -> Any:
    """The generated JIT function for ``e`` (written once, then imported from disk): ``ew``, or
    ``ewr`` with a reduction; ``approx``: see APPROX_TEMPLATES."""
    src = generate(e, n_inputs, forms, reduce, approx)
    digest = hashlib.sha256((src + inspect.getsource(generate) + inspect.getsource(_body)).encode()).hexdigest()[:20]
    if digest not in _modules:
        d = _gen_dir()
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"ew_{digest}.py")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(src)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        name = f"uhop_triton_gen_ew_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        _modules[digest] = mod
    mod = _modules[digest]
    return mod.ewr if reduce != "none" else mod.ew


def uses_approx(expr: str) -> bool:
    """Whether a chain calls a function APPROX_TEMPLATES computes more cheaply."""
    try:
        e = ex.parse(expr)
    except Exception:
        return False
    return any(isinstance(n, ex.Call) and n.fn in APPROX_FNS for n in ex.nodes(e))


def configs(problem: Any, lim: Limits) -> list[tuple[str, dict[str, Any]]]:
    """At most 4 block shapes, the expected best first. On the H200 (64M bf16 elements, 1, 2 and 4
    inputs, benchmarks/width_sweep.py) 1024-2048 elements per 4-warp program beat larger blocks
    and a persistent grid by 1-10%: more programs in flight hide the loads' latency better.
    Reductions (``rowsum``): a program reduces ROWS rows, BLOCK columns at a time, 1024-4096
    elements per pass, 1024 first: on the H100 (``diagnosis_nineteenth_rowsum_h100*.json``) it led
    2048 by 7% on an aligned sum over 4096 and by 1-3% on the other 4096-4100 cases, trailed it by
    2% on rows of 50257 in one run of two, and the product
    path's budget often times only the first (``width_sweep_h100_nineteenth_rowsum_softmax.json``);
    short rows take several rows per program."""
    from uhop.backends.triton_kernels import next_pow2

    if problem.param.get("reduce", "none") != "none":
        c = problem.dim["C"]
        r = problem.dim["N"] // c
        found: list[tuple[str, dict[str, Any]]] = []
        for elems, warps in ((1024, 4), (2048, 4), (4096, 8)):
            block = min(next_pow2(c), elems)
            rows = max(1, elems // block)
            # fewer row blocks than SPLIT_PER_SM programs per SM, long rows: the columns split over
            # programs (at two per SM, a silu sum over 32 rows of 2M bf16 read 922-1046 GB/s on the
            # H200, 24% of copy: too few loads in flight; diagnosis_twentyeighth_rowsum_h200.json)
            split = (min(-(-SPLIT_PER_SM * lim.sm_count // -(-r // rows)), -(-c // SPLIT_MIN))
                     if c >= 2 * SPLIT_MIN else 1)  # fmt: skip
            cfg = {"ROWS": rows, "BLOCK": block, "warps": warps, **({"split": split} if split > 1 else {})}
            if ("rowsum", cfg) not in found:
                found.append(("rowsum", cfg))
        first = found[0][1]
        if "split" in first:  # the unsplit form too, for the tuner to weigh against
            found.append(("rowsum", {k: v for k, v in first.items() if k != "split"}))
        if uses_approx(problem.param.get("expr", "")):  # the first shape with single-instruction exp/sigmoid
            found = [("rowsum", {**first, "approx": 1}), *found[:3]]
        return found
    n = problem.dim["N"]
    out = []
    for block, warps in ((2048, 4), (1024, 4), (4096, 8), (8192, 8)):
        if block > 4 * max(n, 256) and block != 1024:
            continue
        out.append(("chain", {"BLOCK": block, "warps": warps, "grid": "full"}))
    return out


def build(template: str, cfg: dict[str, Any], problem: Any) -> Any:
    import torch
    import triton

    from uhop.backends.triton_kernels import limits

    if template not in ("chain", "rowsum"):
        raise ValueError(f"unknown elementwise template {template!r}")
    e = ex.parse(problem.param["expr"])
    n_in = problem.arity
    forms = problem.param.get("bcast") or ""
    reduce = problem.param.get("reduce", "none")
    if (template == "rowsum") != (reduce != "none"):
        raise ValueError(f"template {template!r} does not serve reduce={reduce!r}")
    approx = bool(cfg.get("approx", 0))
    if approx and template != "rowsum":
        raise ValueError("approx: only the rowsum template takes it (a chain that writes every element is not issue-bound)")
    kern = Launcher(load_kernel(e, n_in, forms, reduce, approx))  # direct launches once compiled
    warps = cfg["warps"]
    out_dtype = getattr(torch, problem.dtype)  # the result's: with mixed inputs, not x0's

    if template == "rowsum":
        rows, block, split = cfg["ROWS"], cfg["BLOCK"], int(cfg.get("split", 1))

        def run_reduce(*xs):
            shape = torch.broadcast_shapes(*[x.shape for x in xs])
            c = shape[-1]
            r = math.prod(shape[:-1])
            flat = [x.reshape(-1) for x in xs]  # a view for contiguous inputs, a copy otherwise
            span = triton.cdiv(triton.cdiv(c, split), block) * block
            parts = triton.cdiv(c, span)
            grid = (triton.cdiv(r, rows), parts)
            # rows of a width off the 16-byte grid: a vector-aligned body and element-wise edges (on
            # the H100, a mean over 8192 x 50257 bf16 read with 2-byte loads ran at 84% of copy)
            vec = 16 // min([x.element_size() for x, f in zip(xs, forms or "f" * len(xs), strict=True)
                              if f == "f"] or [16])
            edges = c % 16 != 0 and vec > 1
            even = not edges and c % block == 0 and r % rows == 0  # whole tiles: the unmasked loop
            if parts == 1:
                out = torch.empty(shape[:-1], device=xs[0].device, dtype=out_dtype)
                kern(grid, *flat, out, r, c, span, ROWS=rows, BLOCK=block, PARTIAL=False, VEC=max(vec, 1), EDGES=edges, EVEN=even,
                     num_warps=warps)  # fmt: skip
                return out
            ws = torch.empty((r, parts), device=xs[0].device, dtype=torch.float32)
            kern(grid, *flat, ws, r, c, span, ROWS=rows, BLOCK=block, PARTIAL=True, VEC=max(vec, 1), EDGES=edges, EVEN=even,
                 num_warps=warps)  # fmt: skip
            if reduce == "max":
                y = ws.amax(dim=1)
            else:
                y = ws.sum(dim=1)
                if reduce == "mean":
                    y = y / c
            return y.to(out_dtype).reshape(shape[:-1])

        return run_reduce

    block = cfg["BLOCK"]
    sm = limits(problem.device).sm_count

    def run(*xs):
        shape = torch.broadcast_shapes(*[x.shape for x in xs]) if forms else xs[0].shape
        flat = [x.reshape(-1) for x in xs]  # a view for contiguous inputs, a copy otherwise
        n = math.prod(shape)
        out = torch.empty(shape, device=xs[0].device, dtype=out_dtype)
        blocks = triton.cdiv(n, block)
        grid = blocks if cfg["grid"] == "full" else min(blocks, int(cfg["grid"]) * sm)
        c = shape[-1] if shape else 1
        kern((grid,), *flat, out, n, c, BLOCK=block, EVEN=n % block == 0, WIDE=n + block >= 2**31, LOOP=grid < blocks,
                      num_warps=warps)  # fmt: skip
        return out

    return run
