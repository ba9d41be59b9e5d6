"""Inductor's weight freezing under ``backend="uhop"``, guarded against weights that change.

With ``torch._inductor.config.freezing = True`` set before compiling (PyTorch's recipe for CPU
inference), Dynamo installs a model's parameters and buffers in the graph as attributes and
Inductor treats them as constants: it folds what depends on them alone and, on a CPU, pre-packs
GEMM weights for oneDNN. ``backend="uhop"`` compiles the rest with it the same way. Measured on
the 2-core CI machine, a GPT-2 block (d768) float32 at B1, ``compile_models.py [--freezing]``:
1.06-1.23x eager frozen, 0.99-1.00x not (docs/compile.md).

Constants are a promise that the weights do not change; Dynamo guards neither their values nor
their storage, and Inductor's frozen graph computes with the old weights after
``model.load_state_dict(...)`` (an in-place copy) or an in-place update (0.21 max error on that
block after scaling its weights by 0.9, on Inductor's own backend too). UHOP does not serve a stale
result: :class:`FrozenGuard` checks each frozen tensor's storage and version counter on every call
(a few microseconds) and, once one changed, warns once and runs the graph as written (aten ops
and UHOP's regions, reading the current weights). ``torch._dynamo.reset()`` and a new compile
freeze the new weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx


def _version(w: Tensor) -> int:
    """The version counter; -1 for an inference tensor (created under ``torch.inference_mode``),
    which has none: only its storage is checked."""
    try:
        return w._version
    except RuntimeError:
        return -1


def freezing() -> bool:
    """Whether Inductor freezes this graph's weights (its flag, for an inference graph)."""
    return bool(torch._inductor.config.freezing) and not torch.is_grad_enabled()


def snapshot(gm: fx.GraphModule) -> Callable[..., Any]:
    """``gm``'s code as it is now, on a graph of its own (Inductor's passes edit ``gm`` in place);
    its attributes are ``gm``'s, so it reads the weights as they are when it runs."""
    g = fx.Graph()
    g._codegen = gm.graph._codegen
    g.output(g.graph_copy(gm.graph, {}))
    return fx.GraphModule(gm, g).forward


class FrozenGuard:
    """``fn`` (compiled with ``weights`` frozen) while every one of them has the storage and the
    version it had at compile time; ``as_written`` from the first call where one does not."""

    def __init__(self, fn: Callable[..., Any], as_written: Callable[..., Any], weights: list[Tensor]):
        self.fn = fn
        self.as_written = as_written
        self.weights = weights
        self.state = self._state()
        self.thawed = False

    def _state(self) -> tuple[tuple[int, int], ...]:
        return tuple((w.data_ptr(), _version(w)) for w in self.weights)

    def stale(self) -> bool:
        """Whether a frozen weight changed (a CUDA graph replaying ``fn`` must stop: see
        :class:`~uhop.compile.cudagraphs.GraphRunner`)."""
        return self.thawed or self._state() != self.state

    def __call__(self, *args: Any) -> Any:
        if not self.thawed and self._state() != self.state:
            self.thawed = True
            warnings.warn("uhop: a weight of a model compiled with torch._inductor.config.freezing changed after "
                          "it was frozen; that graph runs as written from now on, with the current weights "
                          "(torch._dynamo.reset() and a new compile freeze them again)", stacklevel=2)  # fmt: skip
        if not self.thawed:
            return self.fn(*args)
        boxed = len(args) == 1 and type(args[0]) is list  # graph inputs are tensors, never lists
        xs = list(args[0]) if boxed else list(args)
        if boxed:
            args[0].clear()  # the boxed convention: the callee drops the caller's references
        return self.as_written(*xs)


def guard(gm: fx.GraphModule, compile_rest: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
    """``compile_rest()`` behind a :class:`FrozenGuard` when Inductor freezes ``gm``'s weights
    (its parameters and buffers, graph attributes under freezing), else as is."""
    weights = [t for _, t in (*gm.named_parameters(), *gm.named_buffers()) if isinstance(t, Tensor)]
    if not freezing() or not weights:
        return compile_rest()
    as_written = snapshot(gm)  # before Inductor's passes edit gm
    return FrozenGuard(compile_rest(), as_written, weights)
