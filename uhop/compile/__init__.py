"""Whole models through UHOP: ``torch.compile(model, backend="uhop")`` and :func:`jit` for numpy
functions. See docs/compile.md.

Importing this package registers the ``uhop`` Dynamo backend (an installed UHOP also registers
it through the ``torch_dynamo_backends`` entry point, so ``backend="uhop"`` needs no import).
"""

from __future__ import annotations

from uhop.compile.backend import CompileOptions, register, uhop_backend
from uhop.compile.jit import jit
from uhop.compile.report import REPORT

register()

__all__ = ["REPORT", "CompileOptions", "jit", "uhop_backend"]
