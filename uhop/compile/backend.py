"""``torch.compile(model, backend="uhop")``: the Dynamo backend.

Dynamo hands over each captured FX graph; :mod:`uhop.compile.partition` replaces the regions UHOP
serves with ``torch.ops.uhop.*`` calls (custom ops with fake kernels and backward), and the rest
goes to Inductor (default) or runs eagerly. Options come from ``torch.compile(...,
options={...})`` or the environment:

* ``rest``: ``"inductor"`` or ``"eager"`` (``UHOP_COMPILE_REST``) — who runs what UHOP does not;
* ``mode``: an Inductor mode for the rest (``"max-autotune-no-cudagraphs"``...);
* ``buckets``: ``"pow2"`` (default) or ``"exact"`` (``UHOP_COMPILE_BUCKETS``) — region problems
  share one tuning per power-of-two shape class, so a generate loop does not tune per token;
* ``backends``: the backends region problems are tuned over (``UHOP_COMPILE_BACKENDS``, comma
  separated; ``all`` for every backend). Default ``torch,triton``: kernels that take torch tensors
  and share torch's thread pool (see ``runtime.RegionOptions``);
* ``cudagraphs``: ``True`` (default) or ``False`` (``UHOP_COMPILE_CUDAGRAPHS``) — a graph run for
  inference on one GPU is recorded and replayed as a CUDA graph (:mod:`uhop.compile.cudagraphs`);
* ``tune_rest``: ``False`` (default) or ``True`` (``UHOP_COMPILE_TUNE_REST``) — Inductor
  coordinate-descent-tunes the Triton kernels it generates for the rest (``max-autotune``'s tuning
  of pointwise and reduction kernels, without its GEMM/conv templates); a longer first compile,
  cached by Inductor for the next process;
* ``pack_weights``: ``True`` (default) or ``False`` (``UHOP_COMPILE_PACK_WEIGHTS``) — on a CPU, an
  inference graph's float32 linear layers run on MKL-packed weights, packed once per parameter and
  repacked after an in-place update (:mod:`uhop.compile.packed`).

With ``torch._inductor.config.freezing = True`` (PyTorch's CPU-inference recipe) the rest is
compiled with frozen weights, and a weight changed afterwards makes the graph run as written
instead of serving stale results (:mod:`uhop.compile.frozen`).

Dynamic shapes are Dynamo's: a dim that changes between calls is made symbolic on the first
recompile (``torch._dynamo.config.automatic_dynamic_shapes``), or up front with
``torch.compile(dynamic=True)`` / ``torch._dynamo.mark_dynamic``; the fusion report counts the
graphs, recompiles and graph breaks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

import uhop.compile.regions  # noqa: F401 - registers torch.ops.uhop.*
from uhop.compile import cudagraphs, frozen, packed, runtime
from uhop.compile.partition import partition
from uhop.compile.report import REPORT, GraphCompiled


@dataclass(frozen=True)
class CompileOptions:
    rest: str = "inductor"
    mode: str | None = None
    buckets: str = "pow2"
    backends: tuple[str, ...] = ("torch", "triton")
    cudagraphs: bool = True
    tune_rest: bool = False
    pack_weights: bool = True

    @classmethod
    def make(cls, options: dict[str, Any] | None = None, mode: str | None = None) -> CompileOptions:
        o = dict(options or {})
        known = ("rest", "mode", "buckets", "backends", "cudagraphs", "tune_rest", "pack_weights")
        unknown = set(o) - set(known)
        if unknown:
            raise ValueError(f"backend='uhop' options: unknown {sorted(unknown)}; known: {', '.join(known)}")
        from uhop.config import read

        names = o.get("backends", read("compile_backends"))
        if isinstance(names, str):
            names = () if names.strip() == "all" else tuple(n.strip() for n in names.split(",") if n.strip())
        from uhop.backends import REGISTRY

        bad = [n for n in names if n not in REGISTRY]
        if bad:
            raise ValueError(f"backend='uhop' option backends: unknown {bad}; known: {', '.join(REGISTRY)}, or 'all'")
        rest = o.get("rest", read("compile_rest"))
        buckets = o.get("buckets", read("compile_buckets"))
        if rest not in ("inductor", "eager"):
            raise ValueError(f"backend='uhop' option rest must be 'inductor' or 'eager', got {rest!r}")
        if buckets not in ("pow2", "exact"):
            raise ValueError(f"backend='uhop' option buckets must be 'pow2' or 'exact', got {buckets!r}")
        graphs = o.get("cudagraphs", read("compile_cudagraphs"))
        if not isinstance(graphs, bool):
            raise ValueError(f"backend='uhop' option cudagraphs must be True or False, got {graphs!r}")
        tune = o.get("tune_rest", read("compile_tune_rest"))
        if not isinstance(tune, bool):
            raise ValueError(f"backend='uhop' option tune_rest must be True or False, got {tune!r}")
        pack = o.get("pack_weights", read("compile_pack_weights"))
        if not isinstance(pack, bool):
            raise ValueError(f"backend='uhop' option pack_weights must be True or False, got {pack!r}")
        return cls(rest, o.get("mode", mode), buckets, tuple(names), graphs, tune, pack)


def _cache_salt() -> Any:
    """A no-op Inductor pass whose uuid hashes uhop/compile's sources: Inductor's on-disk cache
    keys a graph by its ops, not by the fake kernels of custom ops, so without it code compiled
    against an older ``torch.ops.uhop`` (other output strides) would be reused."""
    global _SALT
    if _SALT is None:
        from pathlib import Path

        from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

        files = tuple(sorted(str(p) for p in Path(__file__).parent.glob("*.py")))

        class UhopCacheSalt(CustomGraphPass):
            def __call__(self, graph: fx.Graph) -> None:
                return None

            def uuid(self) -> Any:
                return get_hash_for_files(files)

        _SALT = UhopCacheSalt()
    return _SALT


_SALT = None


def _compile_id() -> tuple[str, bool]:
    """(frame name, whether this graph recompiles a frame Dynamo compiled before)."""
    try:
        from torch._guards import CompileContext

        cid = CompileContext.current_compile_id()
        return str(cid), bool(cid is not None and cid.frame_compile_id)
    except Exception:  # private API moved: report without recompile detection
        return "?", False


def _is_dynamic(example_inputs: list[Any]) -> bool:
    for t in example_inputs:
        if isinstance(t, torch.SymInt):
            return True
        if isinstance(t, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in t.shape):
            return True
    return False


def uhop_backend(gm: fx.GraphModule, example_inputs: list[Any], mode: str | None = None,
                 options: dict[str, Any] | None = None) -> Any:
    """A Dynamo backend (``torch.compile(model, backend="uhop")``); see the module docstring."""
    opts = CompileOptions.make(options, mode)
    t0 = time.perf_counter()
    # this graph's regions read its own options when they run (runtime.running); LAST serves
    # region ops called outside a compiled graph
    region_opts = runtime.RegionOptions.of(opts.buckets, opts.backends, opts.rest)
    runtime.LAST[0] = region_opts
    # inference-only fusions (batchnorm folded into conv) only when autograd cannot need them
    training = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs)
    nodes = sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module"))
    rewrites: list[str] = []
    # parameters (graph inputs bound to nn.Parameter) whose linear layers may run on packed weights
    weights: set[str] = set()
    if opts.pack_weights and not training and not frozen.freezing() and packed.available():
        phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        weights = {n.name for n, t in zip(phs, example_inputs, strict=False) if isinstance(t, torch.nn.Parameter)}
    with runtime.using(region_opts):
        regions = partition(gm, inference=not training, leave=runtime.leave_as_written, rewrites=rewrites,
                            fusing_rest=opts.rest != "eager", weights=weights)
    from torch._inductor import list_mode_options

    if opts.rest == "eager":
        compiled = gm.forward
    else:
        from torch._inductor.compile_fx import compile_fx

        patches = dict(list_mode_options(opts.mode)) if opts.mode else {}
        patches["post_grad_custom_post_pass"] = _cache_salt()
        if opts.tune_rest:
            patches["coordinate_descent_tuning"] = True
        # under torch._inductor.config.freezing: guarded against weights that change (frozen.py)
        compiled = frozen.guard(gm, lambda: compile_fx(gm, example_inputs, config_patches=patches))
    # Inductor modes that record CUDA graphs themselves (reduce-overhead, max-autotune) get no second wrapper
    own = opts.rest == "inductor" and bool(opts.mode) and list_mode_options(opts.mode).get("triton.cudagraphs")
    dynamic = _is_dynamic(example_inputs)
    compiled, off = cudagraphs.wrap(compiled, gm, example_inputs, training, dynamic, opts.cudagraphs and not own,
                                    len(REPORT.graphs))
    name, recompile = _compile_id()
    record = GraphCompiled(len(REPORT.graphs), name, nodes, regions, opts.rest, opts.mode or "default",
                           dynamic, recompile, time.perf_counter() - t0, "inductor's" if own else off or "on", rewrites)
    if isinstance(compiled, cudagraphs.GraphRunner):
        compiled.report = record  # its decision (replays timed against launches) shows in the report
    REPORT.add_graph(record)
    return runtime.running(compiled, region_opts)


def register() -> None:
    """Register ``backend="uhop"`` in this process (the package's entry point does it for an
    installed UHOP; this covers a source checkout on ``PYTHONPATH``)."""
    from torch._dynamo.backends.registry import _BACKENDS, _COMPILER_FNS, register_backend

    # When torch's lookup found the entry point first, it is importing this module to register
    # the function itself: registering here too made ``torch.compile(backend="uhop")`` fail with
    # "duplicate name: uhop" in a process that had not imported uhop.
    if "uhop" not in _COMPILER_FNS and _BACKENDS.get("uhop") is None:
        register_backend(name="uhop")(uhop_backend)
