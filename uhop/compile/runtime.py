"""Running a region: UHOP's tuned kernel for the op it computes, checked on first use.

The hot path is one signature tuple, one dict lookup and the call. On a new signature the
region's UHOP problem is built, resolved through the tuner and store (``dispatch.serve``),
and the result checked against the region's aten reference in float64 with the tolerance of the
dtype; a region UHOP cannot serve, or whose result disagrees, runs its aten reference instead and
the report says why.

A region whose served kernel is the aten op itself (``torch/eager``, ``torch/sdpa``; on CPU, and on
CUDA except float32 GEMMs, :func:`_aten_is_the_candidate`: the tuner measured nothing faster) calls that op directly (:data:`ATEN`), without the adapters
between UHOP's op signature and the region's: on the 2-core CI machine they cost ~20 us a call,
a few percent of a GPT-2 block at B1 T64, and the region must not be slower than eager.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from uhop.backends.torch import _sdpa
from uhop.compile.regions import N_TENSORS, REFERENCE, activate, conform
from uhop.compile.report import REPORT, RegionRun

Kernel = Callable[..., Tensor]
log = logging.getLogger("uhop.compile")
_kernels: dict[Any, Kernel] = {}
#: (problem key (shape class), options) -> passed the check (once per class and options)
_checked: dict[tuple[str, Any], bool] = {}
_lock = threading.RLock()


@dataclass(frozen=True, eq=False)  # identity equality and hash: one object per options (of)
class RegionOptions:
    """The options of one ``torch.compile(..., backend="uhop", options=...)`` that its regions
    read when they first run: ``buckets`` (shape classes of region problems: "pow2", a generate
    loop shares one tuning per power of two, or "exact"), ``backends`` (what region problems are
    tuned over; empty: all) and ``rest`` (who runs the rest of the graph: "inductor" or "eager";
    the rules that leave ops to Inductor's layouts and fusions hold only under Inductor).
    Interned (:meth:`of`): equal options are one object, hashed by identity in a region's
    signature. The default backends are those taking torch tensors: numpy/numba kernels run on
    their own thread pools (OpenBLAS, numba's), which measured well alone but contended with
    torch's OpenMP pool between the torch ops of a model (a GPT-2 block at B1 T64 on 2 cores ran
    1.6x slower than with torch-only regions)."""

    buckets: str = "pow2"
    backends: tuple[str, ...] = ("torch", "triton")
    rest: str = "inductor"

    @classmethod
    def of(cls, buckets: str = "pow2", backends: Sequence[str] = ("torch", "triton"), rest: str = "inductor") -> RegionOptions:
        key = (buckets, tuple(backends), rest)
        with _lock:
            return _INTERNED.setdefault(key, cls(*key))


_INTERNED: dict[tuple[str, tuple[str, ...], str], RegionOptions] = {}
#: the options of the graph running on this thread (set around each call of a compiled graph
#: and while it is partitioned); outside any, those of the last graph compiled (:data:`LAST`)
_active = threading.local()
LAST: list[RegionOptions] = [RegionOptions.of()]


def current() -> RegionOptions:
    got = getattr(_active, "value", None)
    return got if got is not None else LAST[0]


class using:  # noqa: N801 - a context manager, read as one
    """``with using(options):`` regions run or partitioned on this thread read ``options``."""

    def __init__(self, options: RegionOptions) -> None:
        self.options = options

    def __enter__(self) -> RegionOptions:
        self.prev = getattr(_active, "value", None)
        _active.value = self.options
        return self.options

    def __exit__(self, *exc: Any) -> None:
        _active.value = self.prev


def running(fn: Callable[..., Any], options: RegionOptions) -> Callable[..., Any]:
    """``fn`` (a compiled graph) called with its regions reading ``options``: two models compiled
    with different options each keep their own (a module-wide setting made the last compile's
    win for every graph). Keeps ``fn``'s calling convention (Dynamo's boxed call)."""

    def run(*args: Any) -> Any:
        with using(options):
            return fn(*args)

    run._boxed_call = getattr(fn, "_boxed_call", False)  # type: ignore[attr-defined]
    return run


class Fallback(Exception):
    """UHOP does not serve this region; the message is the reason the report gives."""


def run_region(kind: str, args: Sequence[Any]) -> Tensor:
    nt = N_TENSORS[kind]
    o = getattr(_active, "value", None)
    sig = (kind, o if o is not None else LAST[0], *[(t.shape, t.dtype, t.stride(), t.device) if isinstance(t, Tensor) else t for t in args[:nt]],
           *args[nt:])
    k = _kernels.get(sig)
    if k is None:
        with _lock:
            k = _kernels.get(sig)
            if k is None:
                k, out = _first_use(kind, args)
                _kernels[sig] = k
                if out is not None:  # the checked call's result: the first call runs the kernel once
                    return conform(kind, out)
    return conform(kind, k(*args))  # the layout the fake kernel promised


def clear() -> None:
    """Forget region kernels (tests; after ``uhop cache clear``)."""
    _kernels.clear()
    _checked.clear()
    _folded.clear()


# ---- the aten op itself, for regions whose tuned kernel is it --------------------------------
_ACT_ = {"relu": torch.relu_, "gelu": torch._C._nn.gelu_, "silu": lambda y: F.silu(y, inplace=True),
         "gelu_tanh": lambda y: torch._C._nn.gelu_(y, approximate="tanh")}  # fmt: skip


def _aten_linear(x, w, b, act):
    y = F.linear(x, w, b)
    return y if act == "none" else _ACT_[act](y)  # in place on the fresh product


def _aten_matmul(a, b, act):
    y = torch.matmul(a, b)
    return y if act == "none" else _ACT_[act](y)


def _aten_attention(q, k, v, mask, is_causal, scale, enable_gqa=False):
    """SDPA as UHOP's ``torch/sdpa`` candidate runs it: a mask and ``is_causal`` joined (SDPA
    refuses both), 3-D inputs as one 4-D batch (3-D takes the math path: on the 2-core CPU 3.4x
    slower than the flash kernel at 12 x 1024 x 64 with a mask, the attention of a numpy GPT-2)."""
    return _sdpa(q, k, v, mask, is_causal, scale, enable_gqa)


def _aten_gated_mlp(x, wg, wu, act):
    return _ACT_[act](F.linear(x, wg)).mul_(F.linear(x, wu))  # in place on the fresh products


def _aten_conv2d(x, w, b, stride, padding, act):
    return _act_(F.conv2d(x, w, b, stride, padding), act)


#: kind -> (candidate id that is the aten op, the op called directly)
ATEN: dict[str, tuple[str, Kernel]] = {
    "linear": ("torch/eager", _aten_linear),
    "matmul": ("torch/eager", _aten_matmul),
    "layer_norm": ("torch/eager", REFERENCE["layer_norm"]),
    "rms_norm": ("torch/eager", REFERENCE["rms_norm"]),
    "softmax": ("torch/eager", REFERENCE["softmax"]),
    "log_softmax": ("torch/eager", REFERENCE["log_softmax"]),
    "attention": ("torch/sdpa", _aten_attention),
    "embedding": ("torch/eager", REFERENCE["embedding"]),
    "conv2d": ("torch/eager", _aten_conv2d),
    "gated_mlp": ("torch/eager", _aten_gated_mlp),
}


def _aten_is_the_candidate(kind: str, device: str, dtype: str) -> bool:
    """Whether :data:`ATEN`'s call is what UHOP's aten candidate runs for this region: on CPU;
    on CUDA except float32 GEMMs, whose torch candidates carry the caller's tf32 setting."""
    if device == "cpu":
        return True
    return device.startswith("cuda") and not (dtype == "float32" and kind in ("linear", "matmul", "conv2d"))


def _served(kind: str, problem: Any, cell: dict[int, Kernel], adapt: Callable[[Kernel], Kernel]) -> Kernel:
    """The region's kernel: ``adapt(cell[0])`` (UHOP's kernel behind the region's signature), or
    the aten op itself when that is what the cell serves; re-chosen when background tuning swaps
    the cell's kernel (one dict lookup and one identity test a call)."""
    from uhop import dispatch, metrics

    key = problem.key(current().buckets)
    aten = ATEN.get(kind) if _aten_is_the_candidate(kind, problem.device, problem.dtype) else None
    state: list[Any] = [None, None]

    def choose(k: Kernel) -> Kernel:
        got = dispatch._resolved.get(key) or dispatch._interim.get(key)
        if aten is not None and got is not None and got[2].id == aten[0] and not metrics.enabled():
            return aten[1]
        return adapt(k)

    def run(*args: Any) -> Tensor:
        k = cell.get(0)
        if k is not state[0]:
            state[0], state[1] = k, choose(k)
        return state[1](*args)

    run.current = lambda: state[1]  # type: ignore[attr-defined] - what a call runs now (tests)
    return run


# ---- first use ---------------------------------------------------------------------------------
def _first_use(kind: str, args: Sequence[Any]) -> tuple[Kernel, Tensor | None]:
    """The region's kernel for this signature, and the output of the checked call when there
    was one (None: the caller runs the kernel)."""
    from uhop.config import override, settings

    ref = REFERENCE[kind]
    if settings().disable:
        return ref, None
    o = current()
    try:
        with override(shape_buckets=o.buckets, backends=o.backends):
            problem, kernel, kernel_id = _plan(kind, args)
            key = (problem.key(o.buckets), o)
    except Fallback as exc:
        REPORT.add_run(RegionRun(kind, _describe(args, N_TENSORS[kind]), "aten", "fallback", str(exc)))
        return ref, None
    if key in _checked:  # this shape class was checked with another signature
        return (kernel if _checked[key] else ref), None
    reason, err, out = _check(kind, args, kernel, problem)
    _checked[key] = not reason
    if reason:
        REPORT.add_run(RegionRun(kind, problem.describe(), kernel_id, "fallback", reason, err))
        return ref, None
    REPORT.add_run(RegionRun(kind, problem.describe(), kernel_id, "uhop", "", err))
    return kernel, out


def _describe(args: Sequence[Any], nt: int) -> str:
    return " ".join("x".join(map(str, t.shape)) for t in args[:nt] if isinstance(t, Tensor))


def _check(kind: str, args: Sequence[Any], kernel: Kernel, problem: Any) -> tuple[str, float, Tensor | None]:
    """('', max error, the kernel's output) if ``kernel`` agrees with the float64 reference
    within the op's tolerance for the dtype, else (why not, max error, None); on a sample of rows
    of a large region (:func:`_sample`)."""
    from uhop.ops import get as get_op

    def f64(t: Any) -> Any:
        return t.detach().double() if isinstance(t, Tensor) and t.is_floating_point() else t

    with torch.no_grad():
        try:
            out = kernel(*args)
        except Exception as exc:  # a kernel that raises is a fallback with the reason, not a crash
            return f"kernel raised {type(exc).__name__}: {exc}", math.inf, None
        if not isinstance(out, Tensor):
            return f"kernel returned {type(out).__name__}, expected a tensor", math.inf, None
        full = out
        shape = _out_shape(kind, args)
        if shape is not None and tuple(out.shape) != shape:
            return f"kernel returned shape {tuple(out.shape)}, expected {shape}", math.inf, None
        sampled = _sample(kind, args, out) if shape is not None else None
        if sampled is not None:
            args, out = sampled
        want = REFERENCE[kind](*map(f64, args))
    if out.shape != want.shape:
        return f"kernel returned shape {tuple(out.shape)}, expected {tuple(want.shape)}", math.inf, None
    spec = get_op(problem.op)
    rtol, atol = spec.tolerance(problem.dtype, problem.dim, problem.param)
    got = out.detach().double()
    finite = torch.isfinite(want)
    if not torch.equal(finite, torch.isfinite(got)):
        return "non-finite values where the float64 reference has finite ones (or the reverse)", math.inf, None
    diff = (got - want).abs()[finite]
    err = float(diff.max()) if diff.numel() else 0.0
    bad = diff > atol + rtol * want.abs()[finite]
    if bool(bad.any()):
        return f"differs from the float64 reference by {err:.3g} (rtol {rtol:.2g}, atol {atol:.2g})", err, None
    return "", err, full


#: rows (batch items for attention, conv and batched matmul) a first-use check compares at most
ROWS_CHECKED, BATCH_CHECKED = 256, 3


def _out_shape(kind: str, args: Sequence[Any]) -> tuple[int, ...] | None:
    """The output shape the reference gives (computed on meta tensors: no data, no arithmetic)."""
    try:
        meta = [t.to("meta") if isinstance(t, Tensor) else t for t in args]
        return tuple(REFERENCE[kind](*meta).shape)
    except Exception:  # an op without a meta kernel: the check then compares everything
        return None


def _pick(n: int, most: int, device: Any) -> Tensor | None:
    """Indices of at most ``most`` of ``n`` rows: the first and last quarter of the sample (a
    tile tail or a missed edge shows there) and fresh random ones between; None: all of them."""
    if n <= most:
        return None
    edge = most // 4
    mid = torch.randint(edge, n - edge, (most - 2 * edge,), device=device)
    ends = torch.cat([torch.arange(edge, device=device), torch.arange(n - edge, n, device=device)])
    return torch.cat([ends, mid])


def _sample(kind: str, args: Sequence[Any], out: Tensor) -> tuple[list[Any], Tensor] | None:
    """The region's arguments and its output restricted to a sample of independent rows (or
    batch items), so that the float64 check costs a fraction of the region when the region is
    large: a GPT-2 block at B8 T1024 spent 16 of its 22 s first call in full-size float64 checks
    on 2 cores. The kernel itself was validated at full size against float64 on fresh inputs by
    the tuner before the store kept it; this check catches wiring faults (layouts, strides,
    parameters) of the region, and those show on every row. None: check everything."""
    a = list(args)
    if kind in ("linear", "layer_norm", "rms_norm", "softmax", "log_softmax") or (kind == "matmul" and args[1].dim() == 2):
        x = args[0]
        rows = x.reshape(-1, x.shape[-1])
        idx = _pick(rows.shape[0], ROWS_CHECKED, x.device)
        if idx is None:
            return None
        a[0] = rows[idx]
        return a, out.reshape(-1, out.shape[-1])[idx]
    if kind == "embedding":
        w, ids = args
        flat = ids.reshape(-1)
        idx = _pick(flat.numel(), ROWS_CHECKED, ids.device)
        if idx is None:
            return None
        a[1] = flat[idx]
        return a, out.reshape(-1, w.shape[-1])[idx]
    if kind == "matmul":  # same batch dims on both sides (_plan falls back on broadcasting)
        x, y = args[0], args[1]
        xs, ys = x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])
        idx = _pick(xs.shape[0], BATCH_CHECKED, x.device)
        if idx is None:
            return None
        a[0], a[1] = xs[idx], ys[idx]
        return a, out.reshape(-1, *out.shape[-2:])[idx]
    if kind in ("attention", "conv2d", "conv_bn"):
        x = args[0]
        if x.dim() < 3 or kind == "attention" and args[1].shape[0] != x.shape[0]:
            return None  # (3-D grouped-query attention: k and v have fewer batch-heads than q)
        idx = _pick(x.shape[0], BATCH_CHECKED, x.device)
        if idx is None:
            return None
        a[0] = x[idx]
        if kind == "attention":
            a[1], a[2] = args[1][idx], args[2][idx]
            mask = args[3]
            if mask is not None and mask.dim() == x.dim() and mask.shape[0] == x.shape[0]:
                a[3] = mask[idx]  # a per-batch mask; one of batch 1 or fewer dims broadcasts as is
        return a, out[idx]
    return None


# ---- plans: the UHOP problem a region poses, and how to call its kernel -------------------------
def _resolve(kind: str, op: str, args: Sequence[Any], params: dict[str, Any],
             adapt: Callable[[Kernel], Kernel]) -> tuple[Any, Kernel, str]:
    """The op's problem and the region's kernel through ``dispatch.serve`` (the ``uhop.ops``
    path: with the background policy the library baseline serves at once and the tuned winner is
    swapped into the cell when its tuning ends). ``adapt`` puts a kernel of UHOP's op behind the
    region's signature."""
    from uhop.dispatch import _reference_call, make_problem, resolve_interim, serve
    from uhop.errors import InputError, NoCandidateError, UnknownOpError
    from uhop.ops import get as get_op

    try:
        spec = get_op(op)
        problem = make_problem(spec, args, params)
        (_, _, cand), interim = resolve_interim(problem)
        cell: dict[int, Kernel] = {}
        serve(problem, None, cell, 0, lambda *a: _reference_call(spec, a, params))
    except (InputError, NoCandidateError, UnknownOpError) as exc:
        raise Fallback(f"{op}: {exc}") from None
    kid = cand.id + (" (interim; tuning in the background)" if interim else "")
    return problem, _served(kind, problem, cell, adapt), kid


def _op_args(kind: str, args: Sequence[Any]) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The UHOP op a region computes, its tensors and its parameters (regions other than
    ``conv_bn``, whose folded weights need the values)."""
    if kind == "linear":
        x, w, b, act = args
        return "matmul", (x.reshape(-1, x.shape[-1]), w, b), {"activation": act, "trans_b": True}
    if kind == "matmul":
        a, b, act = args
        if a.dim() != b.dim() and b.dim() != 2:
            raise Fallback(f"matmul: broadcast batch dims {tuple(a.shape)} @ {tuple(b.shape)}")
        if a.dim() > 2 and b.dim() > 2 and a.shape[:-2] != b.shape[:-2]:
            raise Fallback(f"matmul: broadcast batch dims {tuple(a.shape)} @ {tuple(b.shape)}")
        return "matmul", (a, b), {"activation": act}
    if kind == "layer_norm":
        x, w, b, eps = args
        return "layernorm", (x, w, b), {"eps": eps}
    if kind == "rms_norm":
        x, w, eps = args
        return "rmsnorm", (x, w), {"eps": eps}
    if kind in ("softmax", "log_softmax"):
        return kind, tuple(args), {}
    if kind == "attention":
        q, kk, v, mask, causal, scale, *gqa = args
        from uhop.errors import InputError
        from uhop.ops.attention import explicit_scale, kv_groups_of

        params = {"causal": bool(causal)}
        if (s := explicit_scale(scale, q.shape[-1])) is not None:
            params["scale"] = s  # (T5's 1)
        try:
            g = kv_groups_of(q.shape, kk.shape) if gqa and gqa[0] else None
        except InputError as exc:
            raise Fallback(str(exc)) from None
        if g is not None:
            params["kv_groups"] = g  # (Llama 3, Mistral, Qwen: grouped-query attention)
        return "attention", ((q, kk, v) if mask is None else (q, kk, v, mask)), params
    if kind == "embedding":
        w, idx = args
        return "embedding", (w, idx), {}
    if kind == "conv2d":
        x, w, b, stride, padding, act = args
        return "conv2d", (x, w, b), {"stride": stride, "padding": padding}
    if kind == "gated_mlp":
        x, wg, wu, act = args
        return "gated_mlp", (x.reshape(-1, x.shape[-1]), wg, wu), {"activation": act}
    if kind == "conv_bn":  # the folded conv's problem: batchnorm's shift always gives it a bias
        x, w, b, *_, stride, padding, act = args
        return "conv2d", (x, w, w.new_empty(w.shape[0]) if b is None else b), {"stride": stride, "padding": padding}
    raise Fallback(f"no UHOP op for region kind {kind!r}")


#: kind -> UHOP's kernel (of the op's signature) behind the region's signature
_ADAPT: dict[str, Callable[[Kernel], Kernel]] = {
    "linear": lambda k: lambda x, w, b, act: k(x.reshape(-1, x.shape[-1]), w, b).reshape(*x.shape[:-1], w.shape[0]),
    "matmul": lambda k: lambda a, b, act: k(a, b),
    "layer_norm": lambda k: lambda x, w, b, eps: k(x, w, b),
    "rms_norm": lambda k: lambda x, w, eps: k(x, w),
    "softmax": lambda k: k,
    "log_softmax": lambda k: k,
    "attention": lambda k: lambda q, kk, v, mask, causal, scale, *_: k(q, kk, v) if mask is None else k(q, kk, v, mask),
    "embedding": lambda k: k,
    "conv2d": lambda k: lambda x, w, b, s, p, a: _act_(k(x, w, b), a),
    "gated_mlp": lambda k: lambda x, wg, wu, act: k(x.reshape(-1, x.shape[-1]), wg, wu).reshape(
        *x.shape[:-1], wg.shape[0]),
}


#: region kinds a vendor library (cuBLAS, cuDNN) usually serves best on a GPU: with nothing
#: measured for the problem yet, their ops stay as written for Inductor (which fuses around them
#: and, for convolutions, picks the memory layout) while UHOP tunes the problem in the background;
#: a later compile forms the region only if UHOP measured a faster kernel than the aten op.
#: (H100, bf16, first compile with an empty store: a ResNet-style net at B64 ran 1.30 ms with
#: every conv a UHOP region served by cuDNN, against 0.70 ms for Inductor's default.)
VENDOR_FIRST = {"linear", "matmul", "conv2d", "conv_bn", "attention", "embedding", "gated_mlp"}
#: the same on a CPU for convolutions: Inductor carries the activations channels-last from conv
#: to conv (oneDNN's fast layout), a region takes and returns NCHW. 2-core AVX2 VM, 3x3 convs at
#: 56x56: 64 channels 1.25 ms channels-last against 2.41 ms NCHW (2.74 ms converting in and out
#: around one conv); a ResNet-style net at B1 ran 15.3 ms with its convs as regions (warm store),
#: 12.6 ms under Inductor's default.
VENDOR_FIRST_CPU = {"conv2d", "conv_bn"}
#: convolutions are never regions when Inductor compiles the rest (nor tuned for the graph): every
#: measured conv region lost to Inductor's own conv in context. H100, bf16, the ResNet-style net at
#: B64 (2026-12-06, three runs in fresh processes): 0.66-0.69 ms with its convs as written, 1.01-1.22
#: ms once a warm store formed them as regions served by the tuner's winner, a Triton implicit-GEMM
#: conv that measured fastest on the tuner's NCHW inputs and took 116 us per conv in the model
#: against cuDNN's 54 us channels-last; cuDNN as a region (its NCHW conversions) 1.30 ms. The CPU:
#: 15.3 ms as regions against 12.6 ms (see VENDOR_FIRST_CPU). With ``rest="eager"`` nothing keeps
#: a layout between convs, and the measured winner is a region.
CONVS = {"conv2d", "conv_bn"}


def vendor_first(kind: str, device: str) -> bool:
    """Whether a region of ``kind`` on ``device`` with nothing measured stays as written."""
    if device.startswith("cuda"):
        return kind in VENDOR_FIRST
    return kind in VENDOR_FIRST_CPU


def leave_as_written(kind: str, args: Sequence[Any]) -> str | None:
    """At compile time: why a region's ops should stay in the graph as written (for Inductor),
    or None to make them a UHOP region.

    * ``"served <aten candidate>"``: the kernel this process or the store serves for the
      region's problem is the aten op itself (:data:`ATEN`): a region op would run the same aten
      call plus a dispatcher call (~20-50 us on CPU);
    * convolutions (:data:`CONVS`) whenever Inductor compiles the rest, whatever was measured:
      Inductor's conv in the layout it keeps from conv to conv;
    * on CUDA for :data:`VENDOR_FIRST` kinds, on a CPU for :data:`VENDOR_FIRST_CPU` (convolutions,
      under ``rest="eager"``), with nothing stored for the problem: the vendor
      kernel while the problem tunes in the background.

    ``args``: the region's arguments, tensors as example (fake) values. Symbolic shapes or
    metrics on (regions count their calls) give None."""
    from uhop import dispatch, metrics
    from uhop.backends.base import Candidate
    from uhop.config import override
    from uhop.errors import UhopError
    from uhop.ops import get as get_op
    from uhop.store import open_store

    if metrics.enabled() or (kind not in ATEN and kind not in VENDOR_FIRST):
        return None
    o = current()
    if kind in CONVS and o.rest == "inductor":
        return "Inductor's convolution, in the layout it keeps from conv to conv (a region converts around each)"
    real: list[Any] = []
    for a in args:
        if isinstance(a, Tensor):
            if any(not isinstance(d, int) for d in (*a.shape, *a.stride())):
                return None
            shape, stride = tuple(a.shape), tuple(a.stride())  # uninitialized: only shapes are read
            real.append(torch.empty_strided(shape, stride, dtype=a.dtype, device=a.device) if a.is_floating_point()
                        else torch.zeros(shape, dtype=a.dtype, device=a.device))  # indices: in range
        else:
            real.append(a)
    device = next((str(a.device) for a in real if isinstance(a, Tensor)), "cpu")
    dtype = next((str(a.dtype).removeprefix("torch.") for a in real if isinstance(a, Tensor)), "")
    kind_ = "conv2d" if kind == "conv_bn" else kind  # conv_bn's problem is the folded conv's (_op_args)
    aten = ATEN.get(kind_)  # conv_bn: the folded conv's aten candidate (Inductor runs conv, then bn)
    try:
        with override(shape_buckets=o.buckets, backends=o.backends):
            op, tensors, params = _op_args(kind, real)
            problem = dispatch.make_problem(get_op(op), tensors, params)
        if aten is not None and _aten_is_the_candidate(kind_, device, dtype) and _aten_only(problem, aten[0]):
            return f"the aten op is UHOP's only candidate here ({aten[0]})"
        key = problem.key(o.buckets)
        got = dispatch._resolved.get(key)
        if got is not None:
            cid = got[2].id
        else:
            entry = open_store().get(key)
            cid = Candidate.from_json(entry.candidate).id if entry is not None else None
        if cid is None and vendor_first(kind, device) and not _epilogue_to_win(kind, real):
            try:
                with override(shape_buckets=o.buckets, backends=o.backends):
                    dispatch.resolve_interim(problem, "background")  # queues the tuning
            except Exception as exc:  # noqa: BLE001 - the ops stay as written all the same
                log.debug("no background tuning for %s: %s", problem.describe(), exc)
            return "vendor kernel until UHOP measures a faster one (tuning in the background)"
    except (Fallback, UhopError, ValueError, TypeError, KeyError):
        return None
    if aten is None or cid != aten[0] or not _aten_is_the_candidate(kind_, device, dtype):
        return None
    return f"served {cid}"


def _epilogue_to_win(kind: str, args: Sequence[Any]) -> bool:
    """A GEMM region with an activation is formed even with nothing measured: until its tuning
    ends it runs the aten GEMM and the activation in place (the passes Inductor would make), and
    afterwards a kernel that fuses the activation (cuBLASLt's bias+GELU epilogue, a Triton
    epilogue) is swapped in, in this process. Left as written, the win would wait for a new
    compile. (The activation is in the region only when no elementwise op follows it for
    Inductor to fuse it into: :meth:`~uhop.compile.partition.Partitioner._with_activation`.)"""
    return kind in ("linear", "matmul") and args[-1] != "none"


def _aten_only(problem: Any, aten_id: str) -> bool:
    """Whether the region backends (:func:`current`) offer nothing for ``problem`` but the aten
    op itself (on a CPU with the default ``torch,triton``: GEMMs, norms, softmax, embedding). Such
    a region could only ever run that op, behind a dispatcher call and outside Inductor's fusions:
    a GPT-2 block at B1 T64 on the 2-core VM ran 4% slower than eager with them as regions until
    background tuning had stored the aten pick and a new process compiled them as written."""
    from uhop import backends as bk

    ids: set[str] = set()
    for b in bk.for_problem(problem, current().backends):
        try:
            ids.update(c.id for c in b.candidates(problem))
        except Exception:  # noqa: BLE001 - a backend that cannot enumerate offers nothing
            continue
    return ids == {aten_id}


def _plan(kind: str, args: Sequence[Any]) -> tuple[Any, Kernel, str]:
    if kind != "conv_bn":
        op, tensors, params = _op_args(kind, args)
        return _resolve(kind, op, tensors, params, _ADAPT[kind])
    x, w, b, mean, var, gamma, beta, eps, stride, padding, act = args
    wf, bf = _fold(w, b, mean, var, gamma, beta, eps)

    def conv_bn(k: Kernel) -> Kernel:
        def run(x, w, b, mean, var, gamma, beta, eps, s, p, a):
            return _act_(k(x, *_fold(w, b, mean, var, gamma, beta, eps)), a)

        return run

    op, _, params = _op_args(kind, args)  # the folded conv's problem, as the compile step looks it up
    problem, kernel, kid = _resolve(kind, op, (x, wf, bf), params, conv_bn)
    return problem, kernel, kid + "+folded-bn"


def _act_(y: Tensor, activation: str) -> Tensor:
    """The activation applied in place on a fresh conv output (no extra tensor)."""
    if activation == "relu":
        return y.relu_()
    return activate(y, activation)


_folded: dict[Any, tuple[tuple, Tensor, Tensor]] = {}


def _fold(w, b, mean, var, gamma, beta, eps) -> tuple[Tensor, Tensor]:
    """Folded conv weight and bias, cached until any input tensor changes: its version counter,
    its address, or the tensor itself (a new model's parameters often land at a freed one's
    addresses, version 0 again, so the address alone would serve the old model's fold)."""
    from uhop.compile.regions import _fold_bn

    ts = (w, b, mean, var, gamma, beta)
    key = (tuple((id(t), t.data_ptr(), t._version) if t is not None else None for t in ts), eps)
    hit = _folded.get(key)
    if hit is None or any(r() is not t for r, t in zip(hit[0], ts, strict=True) if t is not None):
        if len(_folded) > 4096:
            _folded.clear()
        with torch.no_grad():
            wf, bf = _fold_bn(w, b, mean, var, gamma, beta, eps)
        refs = tuple(weakref.ref(t) if t is not None else None for t in ts)
        hit = _folded[key] = (refs, wf.contiguous(), bf.contiguous())
    return hit[1], hit[2]
