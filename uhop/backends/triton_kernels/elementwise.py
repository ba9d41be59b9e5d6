"""Fused elementwise chains: Triton source generated from the expr IR (:mod:`uhop.ops.expr`).

Every input is read once and the output written once; intermediates stay in registers, computed
in fp32 (the IR's constants are float64, rounded to fp32 like any fp32 kernel). The generated
module is written to ``$UHOP_HOME/triton_gen/ew_<hash>.py`` and imported (Triton JIT needs a
source file); the hash covers the expression and this generator, so a change in either makes a
new file.

Config keys: BLOCK (elements per program), warps, and ``grid``: "full" (one program per block)
or programs per SM for a persistent grid.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from typing import Any

from uhop.backends.triton_kernels import Limits
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


def generate(e: ex.Expr, n_inputs: int) -> str:
    """Triton source of a kernel ``ew(x0, ..., out, n, BLOCK, EVEN, WIDE)`` computing ``e``."""
    from uhop.backends.triton_kernels import interpreting

    templates = {**TEMPLATES, **INTERPRETER_TEMPLATES} if interpreting() else TEMPLATES
    args = ", ".join(f"x{i}_ptr" for i in range(n_inputs))
    lines = [
        "import triton",
        "import triton.language as tl",
        "from triton.language.extra import libdevice  # noqa: F401",
        "",
        "",
        "@triton.jit",
        f"def ew({args}, out_ptr, n, BLOCK: tl.constexpr, EVEN: tl.constexpr, WIDE: tl.constexpr):",
        "    pid = tl.program_id(0)",
        "    nprog = tl.num_programs(0)",
        "    for blk in tl.range(pid, tl.cdiv(n, BLOCK), nprog):",
        "        if WIDE:",
        "            offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "        else:",
        "            offs = blk * BLOCK + tl.arange(0, BLOCK)",
        "        mask = offs < n",
    ]
    names: dict[ex.Expr, str] = {}
    body: list[str] = []
    for i, node in enumerate(ex.nodes(e)):
        if isinstance(node, ex.Var):
            v = f"x{node.index}"
            body.append(
                f"if EVEN:\n            {v} = tl.load(x{node.index}_ptr + offs, eviction_policy='evict_first').to(tl.float32)\n"
                f"        else:\n            {v} = tl.load(x{node.index}_ptr + offs, mask=mask, other=0.0, "
                "eviction_policy='evict_first').to(tl.float32)"
            )
            names[node] = v
        elif isinstance(node, ex.Const):
            names[node] = _const(node.value)
        else:
            assert isinstance(node, ex.Call)
            t = f"t{i}"
            body.append(f"{t} = {templates[node.fn].format(*(names[a] for a in node.args))}")
            names[node] = t
    lines += ["        " + b for b in body]
    result = names[e]
    if isinstance(e, ex.Var):  # identity chain: still a new tensor
        result = f"({result} + 0.0)"
    lines += [
        "        if EVEN:",
        f"            tl.store(out_ptr + offs, {result}.to(out_ptr.dtype.element_ty))",
        "        else:",
        f"            tl.store(out_ptr + offs, {result}.to(out_ptr.dtype.element_ty), mask=mask)",
        "",
    ]
    return "\n".join(lines)


_modules: dict[str, Any] = {}


def _gen_dir() -> str:
    try:
        from uhop.config import settings

        base = str(settings().home)
    except Exception:
        base = os.path.join(os.path.expanduser("~"), ".cache", "uhop")
    return os.path.join(base, "triton_gen")


def load_kernel(e: ex.Expr, n_inputs: int) -> Any:
    """The generated ``ew`` JIT function for ``e`` (written once, then imported from disk)."""
    src = generate(e, n_inputs)
    digest = hashlib.sha256((src + inspect.getsource(generate)).encode()).hexdigest()[:20]
    if digest in _modules:
        return _modules[digest].ew
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
    return mod.ew


def configs(problem: Any, lim: Limits) -> list[tuple[str, dict[str, Any]]]:
    """At most 4 block shapes, the expected best first. On the H200 (64M bf16 elements, 1, 2 and 4
    inputs, benchmarks/width_sweep.py) 1024-2048 elements per 4-warp program beat larger blocks
    and a persistent grid by 1-10%: more programs in flight hide the loads' latency better."""
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

    if template != "chain":
        raise ValueError(f"unknown elementwise template {template!r}")
    e = ex.parse(problem.param["expr"])
    n_in = problem.arity
    kern = load_kernel(e, n_in)
    block, warps = cfg["BLOCK"], cfg["warps"]
    sm = limits(problem.device).sm_count

    def run(*xs):
        flat = [x.reshape(-1) for x in xs]  # a view for contiguous inputs, a copy otherwise
        n = flat[0].numel()
        out = torch.empty_like(xs[0], memory_format=torch.contiguous_format)
        blocks = triton.cdiv(n, block)
        grid = blocks if cfg["grid"] == "full" else min(blocks, int(cfg["grid"]) * sm)
        kern[(grid,)](*flat, out, n, BLOCK=block, EVEN=n % block == 0, WIDE=n + block >= 2**31, num_warps=warps)
        return out

    return run
