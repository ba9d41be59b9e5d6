"""numpy functions as graphs: ``uhop.jit(fn)`` / ``@uhop.optimize()`` without an op name.

Dynamo traces numpy code (``np.*`` calls become torch ops on the arrays' data), so a numpy
function compiles through the same backend as a torch model: its matmuls, norms, softmaxes and
attention become UHOP regions, the rest Inductor's fused loops; it still takes and returns numpy
arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def jit(fn: Callable[..., Any] | None = None, *, dynamic: bool | None = None,
        options: dict[str, Any] | None = None) -> Any:
    """Compile ``fn`` (numpy or torch code) with ``backend="uhop"``; usable bare or with options."""
    if fn is None:
        return functools.partial(jit, dynamic=dynamic, options=options)
    if not callable(fn):
        raise TypeError(f"uhop.jit must decorate a function, got {type(fn).__name__}")
    import torch

    from uhop.compile.backend import uhop_backend
    from uhop.config import settings

    if settings().disable:
        return fn
    compiled = torch.compile(fn, backend=uhop_backend, dynamic=dynamic, options=options)
    return functools.wraps(fn)(compiled)
