"""Every ``tl.*`` call in UHOP's Triton sources, hand-written and generated, names only keywords
that the installed Triton takes. CI runs Triton's interpreter, which does not compile kernels for
a GPU; a wrong keyword (``tl.max(..., propagate_nan=True)``, in a branch only the GPU took) failed
every candidate of a template on the H100 and went unseen here."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

tl = pytest.importorskip("triton.language")

KERNELS = Path(__file__).resolve().parents[2] / "uhop" / "backends" / "triton_kernels"


def _target(func: ast.expr) -> object | None:
    """The ``triton.language`` object a call's ``tl.a.b`` names, or None if it is not one."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not (isinstance(func, ast.Name) and func.id == "tl") or not parts:
        return None
    obj: object = tl
    for name in reversed(parts):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _bad_keywords(source: str) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.keywords:
            continue
        obj = _target(node.func)
        if obj is None:
            continue
        try:
            sig = inspect.signature(getattr(obj, "fn", obj))
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            continue
        for kw in node.keywords:
            if kw.arg is not None and kw.arg not in sig.parameters:
                bad.append(f"line {node.lineno}: {ast.unparse(node.func)}(..., {kw.arg}=...)")
    return bad


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.py")), ids=lambda p: p.name)
def test_hand_written_kernels_call_triton_with_known_keywords(path):
    assert _bad_keywords(path.read_text()) == []


@pytest.mark.parametrize("reduce", ["none", "sum", "mean", "max"])
@pytest.mark.parametrize("forms", ["ff", "fr", "fs"])
def test_generated_elementwise_kernels_call_triton_with_known_keywords(monkeypatch, reduce, forms):
    """The source the GPU compiles (not the interpreter's variant)."""
    from uhop.backends.triton_kernels import elementwise as ew
    from uhop.ops import expr as ex

    monkeypatch.setattr("uhop.backends.triton_kernels.interpreting", lambda: False)
    src = ew.generate(ex.parse("sigmoid(x0*1.5)*x1+tanh(x0)-pow(x1, 2.0)"), 2, forms, reduce)
    assert _bad_keywords(src) == []


def test_the_check_finds_a_keyword_triton_does_not_take():
    assert _bad_keywords("r = tl.max(acc, axis=1, propagate_nan=True)") == [
        "line 1: tl.max(..., propagate_nan=...)"
    ]
