"""CPU inference: linear layers on MKL-packed weights, without freezing the graph.

Inductor's freezing (``torch._inductor.config.freezing``) speeds a float32 model up on a CPU mostly
by packing GEMM weights once for MKL (``torch.ops.mkl._mkl_reorder_linear_weight``) instead of
repacking them on every call; but it is a process-wide flag Dynamo reads while it traces, it
treats the weights as constants (a weight updated in place serves stale results), and UHOP cannot
turn it on for a user. Measured on the 2-core CI machine (float32, GPT-2's four linear shapes,
d768, each op alone): ``_mkl_linear`` on a packed weight runs 0.84-1.13x ``F.linear`` at 1 row
(MKL's GEMV path needs no packing), 1.3-1.9x at 4-32 rows, 1.2-1.35x at 64, 1.07-1.21x at 128 and
1.02-1.23x at 256-1024. Which row count MKL is told to pack for matters (``benchmarks/diagnosis/
seventeenth_pack_batch.py``): packed for 64 rows, a GPT-2 block (``compile_models.py --variants
uhop uhop-no-pack``) ran 1.07x at 64 rows and 0.95-1.0x from 128 rows up; packed for 256
(:data:`PACK_BATCH`), the block runs 1.02-1.15x eager at B1 T16-T1024 and 1.01-1.11x at B8 T8-T256
(``compile_cpu_gpt2_block_b{1,8}_seventeenth_packed.json``). From 8192 rows MKL's packed GEMM
gains nothing (compute-bound: 1.04-1.09x slower than ``F.linear`` each op alone).

So on a CPU, for an inference graph, ``backend="uhop"`` rewrites ``linear(x, w, b)`` whose weight
is a parameter of the model into ``torch.ops.uhop.packed_linear(x, w, b)`` (and ``addmm(b, x, w)``
on an (in, out) parameter, Hugging Face's ``Conv1D``, into ``packed_addmm``, packing its transpose): the weight is packed
on first use and kept with the parameter (one pack per parameter, about 2.2x its size: MKL pads
its panels); a call checks the parameter's identity, storage and version counter and repacks
after an in-place update (``load_state_dict``, an optimizer step), so it never computes with stale
weights (the op costs about 6 us over a direct MKL call on the 2-core machine, checks and
dispatcher included). Row counts outside [:data:`PACK_MIN_M`, :data:`PACK_MAX_M`], other dtypes,
inference tensors (no version counter) and anything unusual run ``F.linear``. Off with
``options={"pack_weights": False}`` or ``UHOP_COMPILE_PACK_WEIGHTS=0``.

Packs held at once are capped at :func:`budget_bytes` (an eighth of the machine's memory, at most
4 GiB): a large model compiled on a CPU does not grow by 2.2x its linear weights unasked; weights
past the cap run ``F.linear`` (one warning says so).
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

#: rows (the product of x's leading dims) for which the packed GEMM is used; outside, F.linear
PACK_MIN_M, PACK_MAX_M = 2, 4096
#: the row count MKL is told to pack for. One pack serves every row count, but MKL blocks its
#: panels for this one (d768 -> 3072 each op alone, packed / F.linear time: packed for 64, 0.76 / 1.02
#: at 256 / 1024 rows; for 256-2048, 0.70-0.73 / 0.94-0.96; for 8192, 1.3-1.9 below 8192 rows)
PACK_BATCH = 256

_LIB = torch.library.Library("uhop", "FRAGMENT")
_LIB.define("packed_linear(Tensor x, Tensor w, Tensor? b) -> Tensor")
_LIB.define("packed_addmm(Tensor b, Tensor x, Tensor w) -> Tensor")

#: (id(weight), held transposed) -> (weakref to it, data_ptr, version, packed); the entry goes
#: when the weight does
_PACKS: dict[tuple[int, bool], tuple[weakref.ref, int, int, Tensor]] = {}
_LOCK = threading.Lock()
#: packs made in this process, bytes held now, weights left unpacked by the cap
STATS = {"packs": 0, "bytes": 0, "over_budget": 0}


def budget_bytes() -> int:
    """The most bytes of packed weights held at once: an eighth of physical memory, <= 4 GiB."""
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        phys = 16 << 30
    return min(4 << 30, phys // 8)


def _nbytes(packed: Tensor) -> int:
    return packed.numel() * packed.element_size()


def available() -> bool:
    """Whether this torch has MKL's packed linear ops (x86 builds with MKL)."""
    return bool(getattr(torch._C, "has_mkl", False)) and hasattr(torch.ops.mkl, "_mkl_linear")


def _forget(key: tuple[int, bool]) -> None:
    with _LOCK:
        got = _PACKS.pop(key, None)
        if got is not None:
            STATS["bytes"] -= _nbytes(got[3])


def packed_weight(w: Tensor, transposed: bool = False) -> Tensor | None:
    """``w`` (``linear``'s (out, in) layout; with ``transposed``, ``addmm``'s (in, out)) packed for
    MKL (one pack serves every row count), repacked when ``w`` changed in place or was replaced;
    None for a tensor without a version counter (an inference tensor)."""
    try:
        version = w._version
    except RuntimeError:  # inference tensors can change in place untracked
        return None
    key, ptr = (id(w), transposed), w.data_ptr()
    got = _PACKS.get(key)
    if got is not None and got[0]() is w and got[1] == ptr and got[2] == version:
        return got[3]
    held = _nbytes(got[3]) if got is not None and got[0]() is w else 0  # a repack replaces its own
    if STATS["bytes"] - held + 2.3 * w.numel() * w.element_size() > budget_bytes():
        with _LOCK:
            STATS["over_budget"] += 1
            first = STATS["over_budget"] == 1
        if first:
            warnings.warn(f"uhop: packed linear weights reached their cap ({budget_bytes() >> 20} MiB held at once); "
                          "further linear layers run unpacked (F.linear)", stacklevel=2)  # fmt: skip
        return None
    src = w.detach().t().contiguous() if transposed else w.detach()
    packed = torch.ops.mkl._mkl_reorder_linear_weight(src, PACK_BATCH)
    del src
    with _LOCK:
        old = _PACKS.get(key)
        if old is not None:
            STATS["bytes"] -= _nbytes(old[3])
        _PACKS[key] = (weakref.ref(w, lambda _, k=key: _forget(k)), ptr, version, packed)
        STATS["packs"] += 1
        STATS["bytes"] += _nbytes(packed)
    return packed


def _impl(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    m = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    ok = (x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and w.dim() == 2 and w.is_contiguous()
          and PACK_MIN_M <= m <= PACK_MAX_M and (b is None or (b.dtype == torch.float32 and b.dim() == 1))
          and not torch.is_grad_enabled())  # fmt: skip
    packed = packed_weight(w) if ok else None
    if packed is None:
        return F.linear(x, w, b)
    y = torch.ops.mkl._mkl_linear(x.reshape(m, x.shape[-1]).contiguous(), packed, w, b, m)
    return y.reshape(*x.shape[:-1], w.shape[0])


def _fake(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def _addmm_impl(b: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """``torch.addmm(b, x, w)`` with ``w`` held (in, out) (Hugging Face's ``Conv1D``), on ``w``'s
    transpose packed for MKL."""
    m = x.shape[0] if x.dim() == 2 else 0
    ok = (x.device.type == "cpu" and x.dtype == w.dtype == b.dtype == torch.float32 and w.dim() == 2
          and b.dim() == 1 and b.shape[0] == w.shape[1] and PACK_MIN_M <= m <= PACK_MAX_M
          and not torch.is_grad_enabled())  # fmt: skip
    packed = packed_weight(w, transposed=True) if ok else None
    if packed is None:
        return torch.addmm(b, x, w)
    return torch.ops.mkl._mkl_linear(x.contiguous(), packed, w.t(), b, m)


def _addmm_fake(b: Tensor, x: Tensor, w: Tensor) -> Tensor:
    return x.new_empty((x.shape[0], w.shape[1]))


_LIB.impl("packed_linear", _impl, "CompositeExplicitAutograd")
torch.library.register_fake("uhop::packed_linear", _fake, lib=_LIB)
_LIB.impl("packed_addmm", _addmm_impl, "CompositeExplicitAutograd")
torch.library.register_fake("uhop::packed_addmm", _addmm_fake, lib=_LIB)
OP = torch.ops.uhop.packed_linear.default
ADDMM = torch.ops.uhop.packed_addmm.default
