"""Triton kernel templates, one module per family (matmul, rowops, elementwise, attention,
conv2d). Each module exposes ``configs(problem, limits) -> list[dict]`` (best guess first, pruned
by the hardware manifest) and ``build(problem, cfg) -> kernel`` (torch tensors in, a new tensor
out). This package also holds what they share: the device limits used for pruning and the
interpreter fixes that let the templates run on CPU under ``TRITON_INTERPRET=1`` (CI).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class Limits:
    """What the search spaces are pruned by. Bytes, threads, counts."""

    shared_mem_bytes: int  # per block, opt-in maximum (232448 on H100)
    max_threads: int
    sm_count: int
    cc: tuple[int, int]
    caps: Any = None  # uhop.hardware capabilities, when that module is present

    @property
    def hopper(self) -> bool:
        return self.cc[0] == 9

    def fits(self, shared_mem_bytes: int, threads: int, registers_per_thread: int = 0) -> bool:
        if self.caps is not None:
            try:
                from uhop.hardware.constraints import fits

                ok = fits(self.caps, shared_mem_bytes=int(shared_mem_bytes), threads_per_block=int(threads),
                          registers_per_thread=int(registers_per_thread))  # fmt: skip
                return bool(ok[0] if isinstance(ok, tuple) else ok)
            except Exception:  # manifest API not there (yet): use the device properties below
                pass
        return shared_mem_bytes <= self.shared_mem_bytes and threads <= self.max_threads


@functools.cache
def limits(device: str) -> Limits:
    """Limits of ``device`` ("cuda:N"; "cpu" under the interpreter gets H100-like limits so the
    same configs are exercised in CI)."""
    if not device.startswith("cuda"):
        return Limits(232448, 1024, 4, (9, 0))
    import torch

    idx = int(device.split(":")[1]) if ":" in device else 0
    props = torch.cuda.get_device_properties(idx)
    smem = int(getattr(props, "shared_memory_per_block_optin", 0) or 49152)
    threads = int(getattr(props, "max_threads_per_block", 1024) or 1024)
    caps = None
    try:  # the hardware manifest, when present, is the authority on limits
        from uhop.hardware import get_capabilities

        caps = get_capabilities(device=device)
    except Exception:
        caps = None
    return Limits(smem, threads, props.multi_processor_count, (props.major, props.minor), caps)


def matmul_smem(bm: int, bn: int, bk: int, stages: int, itemsize: int, epilogue_itemsize: int = 0) -> int:
    """Shared memory of a pipelined GEMM tile: ``stages`` A and B tiles plus an epilogue tile."""
    try:
        from uhop.hardware.constraints import triton_matmul_smem

        base = int(triton_matmul_smem(bm, bn, bk, stages, itemsize))
    except Exception:
        base = (bm * bk + bk * bn) * itemsize * stages
    return base + bm * bn * epilogue_itemsize


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


# ---- interpreter fixes ------------------------------------------------------------------------
_fixed = False


def fix_interpreter() -> None:
    """Work around two bugs of Triton 3.6's CPU interpreter (CI only; no effect on GPU code):
    with numpy >= 2.4 a runtime loop bound (``range(0, K, BK)``) fails in ``int()`` of a
    1-element array, and ``tl.dot`` on bfloat16 multiplies the raw uint16 bit patterns."""
    global _fixed
    if _fixed or not interpreting():
        return
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as itp

    original_patch = itp._patch_lang_tensor

    def patch_lang_tensor(tensor: Any, scope: Any) -> None:
        original_patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    itp._patch_lang_tensor = patch_lang_tensor

    original_dot = itp.InterpreterBuilder.create_dot

    def create_dot(self: Any, a: Any, b: Any, d: Any, input_precision: Any, max_num_imprecise_acc: Any) -> Any:
        def widen(h: Any) -> Any:
            if h.dtype.scalar == tl.bfloat16:
                bits = (h.data.astype(np.uint32) << 16).view(np.float32)
                return itp.TensorHandle(bits, tl.float32)
            return h

        return original_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    itp.InterpreterBuilder.create_dot = create_dot
    _fixed = True


TORCH_DTYPES = ("float32", "float16", "bfloat16")
