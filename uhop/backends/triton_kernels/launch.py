"""Direct launches of compiled Triton kernels: the host cost of ``kernel[grid](...)`` without the
JIT's per-call binding.

``JITFunction.run`` re-derives, on every call, the specialization of each argument, the cache key,
the current device and stream, launch metadata and hooks (12.3 us of host time per launch of a
small kernel on the H100 machine, 2026-12-06, against 5.5 us for calling the compiled kernel's
launcher directly; ``benchmarks/launch_overhead.py`` times the row launchers both ways,
``launch_overhead_h100_sixteenth.json``). Memory-bound kernels of a few
microseconds are host-bound at that rate. :class:`Launcher` keeps, per specialization, the
compiled kernel the JIT returned, and calls its launcher directly, as Inductor's generated
launchers do (``torch/_inductor/runtime/triton_heuristics.py``).

The key is at least as fine as Triton's own (``native_specialize_impl`` on the CUDA backend,
Triton 3.6): a tensor's dtype and 16-byte alignment, an int's value 1 / divisibility by 16 / width
class (i32, i64, u64), bools, floats and None by type, the keyword arguments (constexprs and
options such as ``num_warps``) by value, and the current device. Launch hooks (profilers) are
read when a specialization is first launched and then called as the JIT calls them. An argument
of another type, or Triton's CPU interpreter: the plain JIT call.
"""

from __future__ import annotations

from typing import Any

from uhop.backends.nvrtc import current_stream

_I32, _I64, _U64 = 0, 1, 2


class _Plain(Exception):  # noqa: N818 - a signal, not an error
    """An argument the key does not cover: take the JIT's path."""


def _spec(a: Any) -> Any:
    t = type(a)
    if t is int:
        if a == 1:
            return 1  # a constexpr to Triton
        w = _I32 if -(2**31) <= a < 2**31 else _U64 if a >= 2**63 else _I64
        return (w, a % 16 == 0)
    if t is float:
        return 0.5
    if t is bool:
        return "b"
    if a is None:
        return None
    dt = getattr(a, "dtype", None)
    if dt is None or not hasattr(a, "data_ptr"):
        raise _Plain
    return (dt, a.data_ptr() % 16 == 0)


class Launcher:
    """``Launcher(jit_fn)(grid, *args, **kwargs)``: what ``jit_fn[grid](*args, **kwargs)`` does,
    returning the compiled kernel as the JIT call does. The first call per specialization goes
    through the JIT (compiling, or loading from Triton's cache); later ones call the compiled
    kernel's launcher directly."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self._cache: dict[Any, tuple[Any, ...]] = {}
        self._direct: bool | None = None  # decided at the first call (not at import: no CUDA then)
        self.why = ""  # why launches take the JIT's path, when they do

    def _can_direct(self) -> bool:
        from triton.runtime.jit import JITFunction

        from uhop.backends.triton_kernels import interpreting

        if interpreting() or not isinstance(self.fn, JITFunction):
            self.why = "Triton's CPU interpreter" if interpreting() else f"not a JITFunction: {type(self.fn).__name__}"
            return False
        return True

    def __call__(self, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> Any:
        direct = self._direct
        if direct is None:
            direct = self._direct = self._can_direct()
        if not direct or type(grid) is not tuple:  # (a callable grid: the JIT resolves it)
            return self.fn[grid](*args, **kwargs)
        import torch

        dev = torch.cuda.current_device()
        T = torch.Tensor
        try:  # (plain tensors inline: half the host time of a call per argument)
            key = (dev, *[(a.dtype, a.data_ptr() % 16 == 0) if type(a) is T else _spec(a) for a in args],
                   *kwargs.items())  # fmt: skip
            hit = self._cache.get(key)
        except (_Plain, TypeError):  # an argument the key does not cover, or an unhashable keyword value
            return self.fn[grid](*args, **kwargs)
        if hit is None:
            ck = self.fn[grid](*args, **kwargs)
            hit = self._entry(ck, len(args), kwargs)
            if hit is None:
                self._direct = False
                return ck
            self._cache[key] = hit
            return ck
        ck, run, function, meta, tail, enter, leave = hit
        g = grid + (1, 1) if len(grid) == 1 else grid + (1,) if len(grid) == 2 else grid
        stream = current_stream(dev)
        md = None if enter is None else ck.launch_metadata(g, stream, *args, *tail)
        run(g[0], g[1], g[2], stream, function, meta, md, enter, leave, *args, *tail)
        return ck

    def _entry(self, ck: Any, n_args: int, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
        """(compiled kernel, its launcher, function handle, packed metadata, the parameters after
        the positional ones: keyword values or defaults, constexprs included as the JIT passes them,
        the launch hooks as they are now: None, None unless a profiler installed some, as Inductor
        reads them once per launcher). None, with ``why`` set, where this Triton's compiled kernel
        does not have the launcher interface this relies on."""
        try:
            from triton import knobs

            # Triton 3.6's hooks are chains, empty unless a profiler added to them: an empty one is
            # no hook (no launch metadata built, nothing called per launch)
            enter, leave = (None if h is None or not getattr(h, "calls", True) else h
                            for h in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook))  # fmt: skip
        except ImportError:  # older Triton: no knobs module
            self.why = "no triton.knobs (Triton older than 3.4)"
            return None
        if hasattr(ck, "result"):  # an async compile's future
            ck = ck.result()
        try:
            ck._init_handles()
            run, function, meta = ck.run, ck.function, ck.packed_metadata
        except AttributeError as exc:
            self.why = f"compiled kernel without the launcher interface: {exc}"
            return None
        tail = []
        for p in self.fn.params[n_args:]:
            if p.name in kwargs:
                tail.append(kwargs[p.name])
            elif p.has_default:
                tail.append(p.default)
            else:  # (the JIT call would have refused it)
                self.why = f"parameter {p.name} given neither positionally nor by keyword"
                return None
        return ck, run, function, meta, tuple(tail), enter, leave
