"""Reductions over chains with exp or sigmoid (``rowsum`` with ``approx``): the generated GPU source
computes them as single MUFU instructions, offered first where a chain calls them. What that saves
in SASS: tests/backends/test_sass_sm90.py; numerics on a GPU: tests/gpu/test_triton_gpu.py; under
Triton's interpreter the approx candidate runs the precise forms (tests/backends/test_triton.py)."""

from __future__ import annotations

import pytest

from uhop.backends.triton_kernels import Limits
from uhop.backends.triton_kernels import elementwise as ew
from uhop.ops import expr as ex
from uhop.problem import Problem

triton = pytest.importorskip("triton", reason="Triton not installed (pip install 'uhop[gpu]')")


def _problem(expr: str, reduce: str, C: int = 4096, R: int = 32768) -> Problem:
    return Problem.make("elementwise", {"N": R * C, "C": C}, "bfloat16", {"expr": expr, "reduce": reduce},
                        arity=1, device="cuda", array="torch")  # fmt: skip


H200 = Limits(shared_mem_bytes=232448, max_threads=1024, sm_count=132, cc=(9, 0))


def test_approx_source_uses_single_instructions():
    e = ex.parse("x0*sigmoid(x0)+exp(x0)")
    src = ew.generate(e, 1, "", "sum", approx=True, interpret=False)
    assert "ex2.approx.ftz.f32" in src and "rcp.approx.ftz.f32" in src
    assert "tl.sigmoid" not in src and "tl.exp(" not in src
    plain = ew.generate(e, 1, "", "sum", interpret=False)
    assert "_ex2" not in plain and "tl.sigmoid" in plain
    # the interpreter runs no PTX: the precise forms there
    assert ew.generate(e, 1, "", "sum", approx=True, interpret=True) == ew.generate(
        e, 1, "", "sum", interpret=True
    )


@pytest.mark.parametrize(
    ("expr", "reduce", "first"),
    [("x0*sigmoid(x0)", "sum", True), ("exp(x0-1.0)", "mean", True), ("silu(x0)", "max", True),
     ("x0*x0", "sum", False), ("x0*sigmoid(x0)", "none", False)],
)  # fmt: skip
def test_approx_candidate_goes_first_where_it_applies(expr, reduce, first):
    cfgs = ew.configs(_problem(expr, reduce), H200)
    assert len(cfgs) <= 4
    approx = [c for _, c in cfgs if c.get("approx")]
    if first:
        assert cfgs[0][1].get("approx") == 1 and len(approx) == 1
        assert {k: v for k, v in cfgs[0][1].items() if k != "approx"} == cfgs[1][1]  # the same shape, precise
    else:
        assert not approx


def test_approx_refused_on_chains():
    with pytest.raises(ValueError, match="approx"):
        ew.build(
            "chain",
            {"BLOCK": 1024, "warps": 4, "grid": "full", "approx": 1},
            _problem("x0*sigmoid(x0)", "none"),
        )
