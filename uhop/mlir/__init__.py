"""UHOP ops through MLIR and IREE: emit linalg on tensors (:mod:`.emit`), apply UHOP's fusion,
tiling and vectorization decisions (:mod:`.passes`), compile for a target with a compilation log
and a register-pressure guard (:mod:`.compile`), and run the artifact (:mod:`.runtime`).

Needs ``pip install 'uhop[mlir]'`` (iree-base-compiler and iree-base-runtime 3.13)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Built:
    """Everything one compilation produced."""

    emitted: Any  # emit.Emitted
    lowered: Any  # passes.Lowered
    vmfb: bytes
    log: Any  # compile.CompileLog


def build(
    op: str,
    dims: Mapping[str, int],
    dtype: str = "float32",
    params: Mapping[str, Any] | None = None,
    arity: int | None = None,
    config: Any = None,
    target: str = "llvm-cpu",
    keep: Path | None = None,
) -> Built:
    """emit -> passes -> compile. ``config`` is a :class:`~uhop.mlir.passes.PassConfig`."""
    from uhop.mlir.compile import compile_module
    from uhop.mlir.emit import emit
    from uhop.mlir.passes import PassConfig, run_passes

    emitted = emit(op, dims, dtype, params, arity)
    cfg = config or PassConfig()
    lowered = run_passes(emitted, cfg, target)
    vmfb, log = compile_module(
        lowered.text, target, lowered.flags, op=op, decisions=lowered.decisions,
        max_spills=lowered.max_spills, keep=keep,
    )  # fmt: skip
    return Built(emitted, lowered, vmfb, log)


__all__ = ["Built", "build"]
