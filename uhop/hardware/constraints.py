"""Manifest limits for kernel templates: rule out configs the device cannot launch before
compiling them.

The contract is one predicate, :func:`fits`, returning ``(ok, reason)`` where ``reason`` names the
limit that failed, its value and where that value came from; plus estimators for the common
templates. A typical pruner::

    caps = get_capabilities(device="cuda:0")
    keep = [c for c in configs
            if fits(caps, shared_mem_bytes=triton_matmul_smem(c.bm, c.bn, c.bk, c.stages, 2),
                    threads_per_block=triton_threads(caps, c.num_warps))[0]]

Why: on an H100, torch.compile's max-autotune tried a Triton matmul config for an
8192x4096x4096 bf16 product that needed 262144 bytes of shared memory against the 232448-byte
opt-in limit, and the candidate failed at launch ("out of resource: shared memory"). The limit is
in the manifest, so such configs never reach the compiler.

On a CPU manifest (no ``gpu`` section) nothing is ruled out: Triton's interpreter and CPU
backends have no per-block shared memory or thread limits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from uhop.hardware.schema import IntFigure, Manifest

T = TypeVar("T")


def _limit(fig: IntFigure | None) -> tuple[int, str] | None:
    return (fig.value, fig.source) if fig else None


def shared_mem_limit(caps: Manifest) -> int | None:
    """Most shared memory one block may use, bytes: the opt-in limit where the device has one
    (what Triton and CUTLASS request), else the default per-block limit; ``None`` on a CPU."""
    g = caps.gpu
    if g is None:
        return None
    return (g.max_shared_mem_per_block_optin or g.max_shared_mem_per_block).value


def fits(
    caps: Manifest,
    *,
    shared_mem_bytes: int = 0,
    threads_per_block: int = 0,
    registers_per_thread: int = 0,
) -> tuple[bool, str]:
    """Whether a block with these needs can launch on ``caps``' device.

    ``shared_mem_bytes``: dynamic + static shared memory per block (bytes); ``threads_per_block``:
    threads (num_warps x warp size); ``registers_per_thread``: 32-bit registers. Zero means "not
    constrained". Returns ``(True, "fits ...")`` or ``(False, reason)``, the reason naming the limit,
    e.g. ``"shared_mem_bytes=262144 exceeds gpu.max_shared_mem_per_block_optin=232448 (h100-sxm,
    datasheet)"``.
    """
    for arg, v in (("shared_mem_bytes", shared_mem_bytes), ("threads_per_block", threads_per_block),
                   ("registers_per_thread", registers_per_thread)):  # fmt: skip
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{arg}: expected a non-negative int, got {v!r}")
    g = caps.gpu
    if g is None:
        return True, f"{caps.name} is a {caps.kind}: no per-block limits"
    smem_field = "max_shared_mem_per_block_optin" if g.max_shared_mem_per_block_optin else "max_shared_mem_per_block"
    checks: list[tuple[str, int, str, tuple[int, str] | None]] = [
        ("shared_mem_bytes", shared_mem_bytes, smem_field, _limit(getattr(g, smem_field))),
        ("threads_per_block", threads_per_block, "max_threads_per_block", _limit(g.max_threads_per_block)),
        ("registers_per_thread", registers_per_thread, "max_registers_per_thread", _limit(g.max_registers_per_thread)),
    ]
    if registers_per_thread and threads_per_block:
        checks.append(("registers_per_thread*threads_per_block", registers_per_thread * threads_per_block,
                       "registers_per_sm", _limit(g.registers_per_sm)))  # fmt: skip
    for arg, need, field, limit in checks:
        if need and limit and need > limit[0]:
            return False, f"{arg}={need} exceeds gpu.{field}={limit[0]} ({caps.name}, {limit[1]})"
    return True, f"fits {caps.name}"


def triton_matmul_smem(block_m: int, block_n: int, block_k: int, num_stages: int, itemsize: int) -> int:
    """Shared memory of a pipelined Triton matmul, bytes: each of ``num_stages`` stages holds an
    A tile (BLOCK_M x BLOCK_K) and a B tile (BLOCK_K x BLOCK_N) of ``itemsize``-byte elements.
    This is the estimate Triton's and inductor's pruners use; the epilogue may reuse the buffers."""
    for arg, v in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k),
                   ("num_stages", num_stages), ("itemsize", itemsize)):  # fmt: skip
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{arg}: expected a positive int, got {v!r}")
    return num_stages * (block_m * block_k + block_k * block_n) * itemsize


def triton_threads(caps: Manifest, num_warps: int) -> int:
    """Threads per block of a Triton launch: ``num_warps`` x the warp (wavefront) width."""
    if not isinstance(num_warps, int) or num_warps < 1:
        raise ValueError(f"num_warps: expected a positive int, got {num_warps!r}")
    return num_warps * (caps.gpu.warp_size.value if caps.gpu else 32)


def prune(
    configs: Iterable[T], caps: Manifest, needs: Callable[[T], dict[str, int]]
) -> tuple[list[T], list[tuple[T, str]]]:
    """Split ``configs`` into those that fit and ``(config, reason)`` for those that do not.
    ``needs(config)`` returns keyword arguments for :func:`fits`. Unlike Triton's pruners this
    never keeps an impossible config to avoid an empty list: an empty list is the honest answer."""
    kept: list[T] = []
    dropped: list[tuple[T, str]] = []
    for c in configs:
        ok, why = fits(caps, **needs(c))
        if ok:
            kept.append(c)
        else:
            dropped.append((c, why))
    return kept, dropped
