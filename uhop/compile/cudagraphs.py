"""CUDA graphs for ``backend="uhop"`` graphs run for inference on a GPU.

A compiled graph of a transformer block launches a few dozen kernels; on the lent H100's host
the Python and dispatcher work of launching them took longer than the GPU ran them (GPT-2 block,
B8 T1024 bf16: 0.66 ms of CPU per forward through UHOP's regions, 0.32 ms of GPU). A CUDA graph
replays the whole launch sequence with one call.

:class:`GraphRunner` wraps the function a graph compiled to:

* the first call runs it as is (regions resolve and check their kernels then, which synchronizes
  and cannot be captured); a later call records it, when no background tuning is pending (a
  kernel swapped in after recording would otherwise never run), and every call after that copies
  the non-static inputs into the graph's input buffers, replays, and returns *copies* of the
  outputs: the semantics of ``torch.compile``'s default mode (an output stays valid after the
  next call; Inductor's ``reduce-overhead`` instead returns the graph's own buffers);
* static inputs (parameters and buffers, which Dynamo marks) are read in place: a call where one
  moved (``module.weight = new``) records again;
* a kernel swapped in by background tuning (``dispatch`` counts swaps) records again;
* at each recording it times replays (with the copies) against launching the kernels and keeps
  the graph only where replays are faster (:data:`PAYS`): a graph whose launches already hide
  behind its GPU work would only pay for the copies;
* it stays out of the way of what it cannot capture: grad-enabled calls, symbolic shapes, CPU
  or multi-device inputs, a graph that writes into an input (recording runs the graph more than
  once; a write into a copied input would land in the copy), and a capture that fails (one
  warning; the graph then runs uncaptured).

``torch.compile(model, backend="uhop", options={"cudagraphs": False})`` (or
``UHOP_COMPILE_CUDAGRAPHS=0``) turns it off. An Inductor mode that records CUDA graphs itself
(``reduce-overhead``, ``max-autotune``) gets no second wrapper.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, fx

from uhop.compile.partition import inplace

log = logging.getLogger("uhop.compile")
#: replays must be this much faster than launching the graph's kernels to be used
PAYS = 1.03
#: graph number in the fusion report -> its runner (tests, reports)
RUNNERS: weakref.WeakValueDictionary[int, GraphRunner] = weakref.WeakValueDictionary()


def _static(t: Any) -> bool:
    """Dynamo marks a module's parameters and buffers as static inputs (same address each call)."""
    return isinstance(t, torch.nn.Parameter) or getattr(t, "_dynamo_static_input_type", None) is not None


def _root_placeholder(n: Any) -> fx.Node | None:
    """The graph input a value is (a view of), following first arguments; None if not one."""
    seen = 0
    while isinstance(n, fx.Node) and seen < 64:
        if n.op == "placeholder":
            return n
        if not n.args:
            return None
        n, seen = n.args[0], seen + 1
    return None


def mutated_inputs(gm: fx.GraphModule) -> set[int]:
    """Indices of the graph's inputs that an in-place op writes into (directly or via a view)."""
    index = {n: i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")}
    out = set()
    for n in gm.graph.nodes:
        if inplace(n):
            root = _root_placeholder(n.args[0] if n.args else n.kwargs.get("out"))
            if root is not None:
                out.add(index[root])
    return out


def why_not(gm: fx.GraphModule, example_inputs: Sequence[Any], training: bool, dynamic: bool = False) -> str | None:
    """Why this graph cannot be run as a CUDA graph (None: it can). ``dynamic``: it has symbolic
    shapes (the backend knows: ``backend._is_dynamic``)."""
    if training:
        return "autograd"
    if dynamic:
        return "dynamic shapes"
    devices = {t.device for t in example_inputs if isinstance(t, Tensor)}
    if not any(d.type == "cuda" for d in devices):
        return "not on CUDA"
    if len(devices) > 1:
        return "inputs on several devices"
    written = sorted(mutated_inputs(gm))  # recording runs the graph more than once: a write
    if written:  # into a buffer (an accumulation) would be applied twice; into a copied input, lost
        return f"writes into input {written[0]}"
    return None


def _generation() -> int:
    from uhop import dispatch

    return dispatch.generation()


def _background_pending() -> bool:
    from uhop.tune.background import queue

    return queue().pending() > 0


class GraphRunner:
    """``fn`` (what Inductor or eager made of one graph) replayed as a CUDA graph; see the module
    docstring. Called as ``fn`` is (Dynamo's boxed call, one list argument, or unboxed)."""

    def __init__(self, fn: Callable[..., Any], example_inputs: Sequence[Any]):
        self.fn = fn
        #: the calling convention of the current call: one list of inputs ("boxed", when Dynamo
        #: flattens them) or the inputs as arguments. ``fn._boxed_call`` cannot tell:
        #: aot_autograd's unboxed ``forward`` copies it from the boxed function it wraps.
        self.boxed = False
        self.static = [_static(t) for t in example_inputs]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.disabled = False
        self.calls = 0
        self.records = 0
        self._gen = -1
        self._ptrs: tuple[int, ...] = ()
        self._inputs: list[Any] = []
        self._outputs: Any = None
        self._lock = threading.RLock()
        self._done: torch.cuda.Event | None = None  # recorded after the last replay's copies out
        #: (swap generation, static addresses) for which replays measured no faster than launches
        self._declined: tuple[int, tuple[int, ...]] | None = None
        #: launches' time / replays' time, measured at the last recording
        self.speedup = math.nan
        #: the fusion report's entry for this graph: its ``cudagraphs`` field follows each decision
        self.report: Any = None

    def _run(self, args: list[Any]) -> Any:
        return self.fn(list(args)) if self.boxed else self.fn(*args)

    def __call__(self, *args: Any) -> Any:
        self.boxed = len(args) == 1 and type(args[0]) is list  # graph inputs are tensors, never lists
        a = list(args[0]) if self.boxed else list(args)
        if self.boxed:
            args[0].clear()  # the boxed convention: the callee drops the caller's references
        self.calls += 1
        stale = getattr(self.fn, "stale", None)  # frozen weights that changed (uhop.compile.frozen)
        if stale is not None and not self.disabled and stale():
            self.disabled, self.graph = True, None  # replays would keep computing with the old weights
        if self.disabled or torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in a):
            return self._run(a)
        ptrs = tuple(t.data_ptr() for t, s in zip(a, self.static, strict=True) if s)
        with self._lock:  # one recording at a time, none while another caller replays
            gen = _generation()
            ready = self.graph is not None and ptrs == self._ptrs and self._gen == gen
            if not ready:
                self.graph = None
                # first use resolves the regions; replays that did not pay, or a failed capture: launch
                ready = (self.calls >= 2 and not _background_pending() and self._declined != (gen, ptrs)
                         and self._record(a, ptrs, gen))  # fmt: skip
            if ready:
                return self._replay(a)
        return self._run(a)

    def _replay(self, a: list[Any]) -> Any:
        """Copy in, replay, copy out. The graph's buffers are shared by every caller: one at a
        time, and a caller on another stream first waits for the previous replay's copies out."""
        with self._lock:
            stream = torch.cuda.current_stream()
            if self._done is not None:
                stream.wait_event(self._done)
            for i, t in enumerate(a):
                if not self.static[i] and isinstance(t, Tensor):
                    self._inputs[i].copy_(t)
            self.graph.replay()
            out = _clone(self._outputs)
            self._done = self._done or torch.cuda.Event()
            self._done.record(stream)
            return out

    def _pays(self, a: list[Any]) -> bool:
        """Whether replaying (with the input copies and output clones) beats launching: a graph
        whose launches already hide behind its GPU work gains nothing and pays for the copies.
        Best of three rounds of three calls each way (the graph mutates nothing: see why_not)."""
        best = {"launch": math.inf, "replay": math.inf}
        for _ in range(3):
            for name, f in (("launch", self._run), ("replay", self._replay)):
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(3):
                    f(a)
                torch.cuda.synchronize()
                best[name] = min(best[name], time.perf_counter() - t)
        self.speedup = best["launch"] / best["replay"]
        pays = self.speedup > PAYS
        if self.report is not None:
            from uhop.compile.report import REPORT

            self.report.cudagraphs = (f"{'on' if pays else 'declined'}: replays ran {self.speedup:.2f}x "
                                      f"the launches' speed (record {self.records})")
            REPORT.save()
        return pays

    def _record(self, a: list[Any], ptrs: tuple[int, ...], gen: int) -> bool:
        self._inputs = [t if s or not isinstance(t, Tensor) else torch.empty_strided(
            t.shape, t.stride(), dtype=t.dtype, device=t.device) for t, s in zip(a, self.static, strict=True)]
        for mine, t in zip(self._inputs, a, strict=True):
            if mine is not t and isinstance(t, Tensor):
                mine.copy_(t)
        device = next(t.device for t in a if isinstance(t, Tensor))
        try:
            with torch.cuda.device(device):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up on the capture stream (lazy inits)
                    self._run(self._inputs)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # a fresh pool per recording: the previous graph's pool was freed with it (the
                # allocator asserts on capturing into a pool no graph holds any more)
                with torch.cuda.graph(graph, pool=torch.cuda.graph_pool_handle(), stream=side,
                                      capture_error_mode="thread_local"):
                    self._outputs = self._run(self._inputs)
        except Exception as exc:  # noqa: BLE001 - anything capture refuses: run uncaptured from now on
            self.disabled, self._outputs, self._inputs = True, None, []
            if self.report is not None:
                self.report.cudagraphs = f"off: capture failed ({type(exc).__name__})"
            warnings.warn(f"uhop: this graph runs without CUDA graphs: capture failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''})", stacklevel=3)  # fmt: skip
            return False
        self.graph, self._ptrs, self._gen = graph, ptrs, gen
        self.records += 1
        if not self._pays(a):
            self.graph, self._outputs, self._inputs, self._declined = None, None, [], (gen, ptrs)
            log.debug("CUDA graph not used: replay %.2fx the launches' speed", self.speedup)
            return False
        log.debug("recorded a CUDA graph (%d inputs, record %d, %.2fx)", len(a), self.records, self.speedup)
        return True


def _clone(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_clone(o) for o in out)
    return out


def wrap(fn: Callable[..., Any], gm: fx.GraphModule, example_inputs: Sequence[Any], training: bool,
         dynamic: bool, enabled: bool, number: int) -> tuple[Callable[..., Any], str]:
    """(what Dynamo should call, why CUDA graphs are off: "" when the runner wraps ``fn``);
    ``number``: the graph's number in the fusion report."""
    if not enabled:
        return fn, "off"
    reason = why_not(gm, example_inputs, training, dynamic)
    if reason:
        return fn, reason
    runner = GraphRunner(fn, example_inputs)
    RUNNERS[number] = runner
    return runner, ""
