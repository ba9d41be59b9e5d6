"""Validation: no candidate is chosen unless it matches the float64 reference on fresh random
inputs, several draws, with its output checked for shape, dtype, aliasing and untouched inputs."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from uhop.backends.base import convert
from uhop.ops.base import ITEMSIZE, as_f64, dtype_name
from uhop.problem import Problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    status: str = "ok"  # ok | wrong-result | bad-output | input-mutated | stale-output | crash
    reason: str = ""
    max_err: float = 0.0


@dataclass
class Trial:
    inputs: list[np.ndarray]  # numpy, each in its input's dtype (float32 stands in for bfloat16)
    reference: np.ndarray  # float64, computed from the inputs as rounded to their dtypes
    #: (rtol, atol) when the reference is all finite (a passing output is then compared in
    #: cache-sized steps, the bound computed per step), else None
    bound: tuple[float, float] | None = None


class ValidationSet:
    """Fresh random trials for one problem, drawn from a secret seed, reference computed once
    (in this process, never by the candidate) and reused for every candidate of a tuning run."""

    def __init__(self, problem: Problem, trials: int = 3, seed: int | None = None,
                 distributions: Sequence[str] | None = None, references: bool = True) -> None:  # fmt: skip
        """``distributions`` (names from :data:`DISTRIBUTIONS`): trial ``i`` draws from
        ``distributions[i % len]``, each with its own secret scale and offset; default: the op's
        own uniform [-1, 1) inputs for every trial. ``references=False`` draws inputs only (for
        timing: the float64 references, seconds on a host for large problems, are left out and
        each trial's ``reference`` is None)."""
        self.problem = problem
        spec = problem.spec
        rng = np.random.default_rng(secrets.randbits(63) if seed is None else seed)
        self.trials: list[Trial] = []
        on_device = _device_trials_possible(problem)
        for i in range(trials):
            if on_device:
                dt = DeviceTrial.draw(problem, rng, distributions[i % len(distributions)] if distributions else "uniform",
                                      reference=references)  # fmt: skip
                if dt is not None:
                    self.trials.append(dt)  # type: ignore[arg-type] - a Trial to every reader
                    continue
            if distributions:
                xs = draw_inputs(problem, rng, distributions[i % len(distributions)])
            else:
                xs = spec.make_inputs(problem.dim, problem.param, rng, problem.dtype, problem.arity)
            xs = round_inputs(problem, xs)
            if not references:
                self.trials.append(Trial(xs, None))  # type: ignore[arg-type] - inputs only
                continue
            ref = reference_on(problem, xs, problem.device) if problem.device.startswith("cuda") else None
            if ref is None:
                ref = spec.reference(*(xs if spec.reference_upcasts else [as_f64(x) for x in xs]), **problem.param)
            self.trials.append(Trial(xs, ref, _bound(ref, problem)))

    def device_reference(self, index: int, device: str) -> Any:
        """Trial ``index``'s reference as a float64 torch tensor on ``device`` (cached)."""
        trial = self.trials[index]
        if isinstance(trial, DeviceTrial) and trial.device == device:
            return trial.dev_reference
        cache = self.__dict__.setdefault("_dev_refs", {})
        if (index, device) not in cache:
            import torch

            cache[(index, device)] = torch.from_numpy(self.trials[index].reference).to(device)
        return cache[(index, device)]

    def native_inputs(self, trial: Trial, array: str, device: str) -> list[Any]:
        """Trial inputs in ``array`` on ``device``: copies a kernel may overwrite; torch tensors
        in the problem's memory layout (``channels_last``: 4-D inputs channels-last, so candidates
        are timed on what the caller passes)."""
        if isinstance(trial, DeviceTrial) and array == "torch" and device == trial.device:
            return _in_layout([x.clone() for x in trial.dev_inputs], self.problem.layout)  # no host round trip
        out = []
        for x, dt in zip(trial.inputs, input_dtypes(self.problem, len(trial.inputs)), strict=True):
            y = convert(x.copy(), array, device)
            if array == "torch" and dt == "bfloat16" and x.dtype.kind == "f":  # held as float32 on the host
                import torch

                y = y.to(torch.bfloat16)
            out.append(y)
        return _in_layout(out, self.problem.layout) if array == "torch" else out


def _in_layout(xs: list[Any], layout: str) -> list[Any]:
    if layout != "channels_last":
        return xs
    import torch

    return [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xs]


def input_dtypes(problem: Problem, n: int) -> list[str]:
    """The dtype of each of ``problem``'s ``n`` inputs (:meth:`~uhop.ops.base.Op.input_dtypes`)."""
    return problem.spec.input_dtypes(problem.dtype, problem.param, n)


def round_inputs(problem: Problem, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Host inputs as their dtypes hold them: the float32 arrays standing in for bfloat16 inputs
    rounded to bfloat16 (the reference is computed from what the kernels read)."""
    return [_round_bf16(x) if dt == "bfloat16" and x.dtype.kind == "f" else x
            for x, dt in zip(xs, input_dtypes(problem, len(xs)), strict=True)]  # fmt: skip


def _device_trials_possible(problem: Problem) -> bool:
    """Whether ``problem``'s trials can live on its GPU: a CUDA problem whose op has a float64
    torch reference, with torch able to reach the device."""
    if not problem.device.startswith("cuda") or problem.spec.reference_torch is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


class DeviceTrial:
    """A trial drawn, rounded and referenced on the problem's GPU (a :class:`Trial` to every
    reader): the inputs in their dtypes and the float64 reference stay there, so building
    a validation set and handing a torch kernel its inputs are device work (milliseconds), not
    host RNG, host float64 math and gigabytes over PCIe (seconds at 100M elements, per trial and
    per candidate: on the H200 a softmax of 32768 x 4096 spent its whole 10 s budget on that).
    Host copies (``inputs``, ``reference``, ``bound``) are made on first use, for host readers
    such as the sandbox. Inputs come from the op's own generator on the host when the op defines
    one (``Op.uniform_inputs`` False: index ranges, domains) or a distribution other than uniform
    is asked for; the uniform
    [-1, 1) inputs of the default generator are drawn on the device from a secret seed."""

    def __init__(self, problem: Problem, dev_inputs: list[Any], dev_reference: Any) -> None:
        self.problem = problem
        self.device = problem.device
        self.dev_inputs = dev_inputs
        self.dev_reference = dev_reference
        self._host: dict[str, Any] = {}

    @classmethod
    def draw(cls, problem: Problem, rng: np.random.Generator, distribution: str,
             reference: bool = True) -> DeviceTrial | None:  # fmt: skip
        """A fresh trial on the device, or None (the host path is then used) when the device or
        the torch reference fails; without its ``reference`` (None) when that is False."""
        try:
            import torch

            spec, dev = problem.spec, problem.device
            if distribution == "uniform" and spec.uniform_inputs:
                g = torch.Generator(device=dev)
                g.manual_seed(int(rng.integers(0, 2**63 - 1)))
                f32 = uniform_on_device(problem, torch.float32, g)
            else:
                host = draw_inputs(problem, rng, distribution)
                f32 = [torch.from_numpy(np.ascontiguousarray(x)).to(dev) for x in host]
            # each input's dtype (bfloat16: round to nearest even, as _round_bf16 on the host)
            dts = [getattr(torch, d) for d in input_dtypes(problem, len(f32))]
            xs = [x.to(dt) if x.is_floating_point() else x for x, dt in zip(f32, dts, strict=True)]
            if not reference:
                return cls(problem, xs, None)
            ref = spec.reference_torch(*[x.double() if x.is_floating_point() else x for x in xs], **problem.param)
            if not isinstance(ref, torch.Tensor) or ref.dtype != torch.float64:
                log.info("no device trial for %s: its torch reference returned %s", problem.describe(), type(ref))
                return None
            return cls(problem, xs, ref)
        except Exception as exc:  # out of device memory, say: the host path still validates
            log.info("no device trial for %s (%s: %s); drawing on the host", problem.describe(),
                     type(exc).__name__, str(exc)[:200])  # fmt: skip
            return None

    @property
    def inputs(self) -> list[np.ndarray]:
        """Host copies in each input's dtype (float32 holding bfloat16 values)."""
        if "inputs" not in self._host:
            import torch

            self._host["inputs"] = [
                (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy() for x in self.dev_inputs
            ]
        return self._host["inputs"]

    @property
    def reference(self) -> np.ndarray:
        if "reference" not in self._host:
            self._host["reference"] = self.dev_reference.cpu().numpy()
        return self._host["reference"]

    @property
    def bound(self) -> tuple[float, float] | None:
        if "bound" not in self._host:
            self._host["bound"] = _bound(self.reference, self.problem)
        return self._host["bound"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dev_reference.shape)


def uniform_on_device(problem: Problem, dtype: Any = None, generator: Any = None) -> list[Any]:
    """The problem's inputs as uniform [-1, 1) torch tensors on its device (the default
    generator's distribution, drawn where the kernels run), of torch dtype ``dtype``, or None:
    each of its input's dtype."""
    import torch

    spec = problem.spec
    shapes = spec.shapes_from_dims(problem.dim, problem.param, spec.input_count(problem.param, problem.arity))
    names = input_dtypes(problem, len(shapes))
    dts = [dtype or getattr(torch, d) for d in names]
    return [torch.empty(s, device=problem.device, dtype=dt).uniform_(-1.0, 1.0, generator=generator)
            for s, dt in zip(shapes, dts, strict=True)]  # fmt: skip


def reference_shape(trial: Any) -> tuple[int, ...]:
    """A trial's output shape, without copying a device trial's reference to the host."""
    return trial.shape if isinstance(trial, DeviceTrial) else tuple(trial.reference.shape)


#: input distributions a validator can ask for (:func:`draw_inputs`); "uniform" is the op's own
DISTRIBUTIONS = ("uniform", "scaled", "offset", "normal")
#: the largest magnitude per op (default 16): where float32 rounding of large inputs is amplified
#: beyond the op's tolerance (attention's scores, chained elementwise math), less
MAX_SCALE = {"attention": 4.0, "elementwise": 2.0}


def draw_inputs(problem: Problem, rng: np.random.Generator, distribution: str = "uniform") -> list[np.ndarray]:
    """Inputs for ``problem`` from ``distribution``, with parameters drawn from ``rng`` (a secret
    seed makes them secret): ``uniform`` [-1, 1) (the op's own generator); ``scaled``: that times
    s in [2, smax]; ``offset``: a [-1, 1) spread times a in [0.5, 2] plus a negative offset c in
    [-smax/2, -0.5]; ``normal``: N(0, sigma), sigma in [1, smax/2]. ``smax`` is
    :data:`MAX_SCALE` for the op (16 by default). A kernel right only on the validator's old
    [-1, 1) range fails the others."""
    spec = problem.spec
    xs = spec.make_inputs(problem.dim, problem.param, rng, problem.dtype, problem.arity)
    if distribution == "uniform":
        return xs
    smax = MAX_SCALE.get(problem.op, 16.0)
    out = []
    for x in xs:
        if not np.issubdtype(x.dtype, np.floating):  # indices (embedding): the op's own draw is the valid range
            out.append(x)
            continue
        x64 = x.astype(np.float64)
        if distribution == "scaled":
            y = x64 * rng.uniform(2.0, smax)
        elif distribution == "offset":
            y = x64 * rng.uniform(0.5, 2.0) + rng.uniform(-smax / 2, -0.5)
        elif distribution == "normal":
            y = rng.normal(0.0, rng.uniform(1.0, max(smax / 2, 1.0)), size=x.shape)
        else:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        out.append(y.astype(x.dtype))
    return out


def reference_on(problem: Problem, xs: list[np.ndarray], device: str) -> np.ndarray | None:
    """The float64 reference computed by the op's torch implementation on ``device`` (the
    problem's GPU: seconds of host BLAS become milliseconds), or None where the op has none or
    that fails (the numpy reference is then used)."""
    fn = problem.spec.reference_torch
    if fn is None:
        return None
    try:
        import torch

        ts = [torch.from_numpy(np.ascontiguousarray(as_f64(x))).to(device) for x in xs]
        out = fn(*ts, **problem.param)
        if out.dtype != torch.float64:
            return None
        return out.cpu().numpy()
    except Exception:
        return None


def _bound(ref: np.ndarray, problem: Problem) -> tuple[float, float] | None:
    """(rtol, atol) of ``problem`` when ``ref`` is all finite (a passing output is then checked
    in cache-sized steps, :func:`_within`), else None (the NaN/inf-aware comparison)."""
    if not np.isfinite(ref).all():
        return None
    rtol, atol = problem.spec.tolerance(problem.dtype, problem.dim, problem.param)
    return float(rtol), float(atol)


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (kept in float32), ties to even."""
    u = x.astype(np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return r.view(np.float32)


#: elements per step of :func:`_within`: its float64 temporaries (512 KB) stay in cache
WITHIN_CHUNK = 1 << 16


def _within(out: Any, ref: np.ndarray, rtol: float, atol: float) -> float | None:
    """The largest ``|out - ref|`` when every element is within ``atol + rtol * |ref|``, else
    None (NaN too). In steps of :data:`WITHIN_CHUNK` elements, the bound computed per step: on the
    2-core VM a 96 x 1024 x 1024 float32 output took 5.2 s with whole-array float64 temporaries
    (800 MB each) and 0.26 s this way, and each trial's stored bound array had cost 0.4 s more;
    together most of a batched matmul's tuning budget (nineteenth session)."""
    src = out
    if hasattr(src, "detach"):  # torch: one copy to the host, converted per step
        src = src.detach()
        if src.device.type != "cpu":
            src = src.cpu()
    src, r = src.reshape(-1), ref.reshape(-1)
    n = r.size
    buf, lim = np.empty(min(n, WITHIN_CHUNK)), np.empty(min(n, WITHIN_CHUNK))
    worst = 0.0
    for i in range(0, n, WITHIN_CHUNK):
        j = min(n, i + WITHIN_CHUNK)
        e, b = buf[: j - i], lim[: j - i]
        np.subtract(src[i:j] if isinstance(src, np.ndarray) else as_f64(src[i:j]), r[i:j], out=e)
        np.abs(e, out=e)
        np.abs(r[i:j], out=b)
        b *= rtol
        b += atol
        if not bool(np.all(e <= b)):  # NaN compares False: the full comparison says where
            return None
        worst = max(worst, float(e.max()))
    return worst


def compare(out: Any, ref: np.ndarray, problem: Problem, bound: tuple[float, float] | None = None) -> Verdict:
    """Compare a kernel output with the float64 reference under the op's tolerance. ``bound``
    (:attr:`Trial.bound`, for an all-finite reference) compares a passing output in cache-sized steps."""
    expected_shape = tuple(ref.shape)
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
        return Verdict(False, "bad-output", f"returned {type(out).__name__}, expected an array")
    if tuple(out.shape) != expected_shape:
        return Verdict(False, "bad-output", f"shape {tuple(out.shape)}, expected {expected_shape}")
    if dtype_name(out) != problem.dtype:
        return Verdict(False, "bad-output", f"dtype {dtype_name(out)}, expected {problem.dtype}")
    if bound is not None:
        worst = _within(out, ref, *bound)
        if worst is not None:
            return Verdict(True, "ok", "", worst)
    got = as_f64(out)
    rtol, atol = problem.spec.tolerance(problem.dtype, problem.dim, problem.param)
    ref_nan, got_nan = np.isnan(ref), np.isnan(got)
    if np.any(ref_nan != got_nan):
        n = int(np.sum(ref_nan != got_nan))
        return Verdict(False, "wrong-result", f"{n} element(s) NaN where the reference is not (or vice versa)", np.inf)
    fin = np.isfinite(ref)
    if np.any(~fin & ~ref_nan) and not np.array_equal(got[~fin & ~ref_nan], ref[~fin & ~ref_nan]):
        return Verdict(False, "wrong-result", "infinities differ from the reference", np.inf)
    err = np.abs(got[fin] - ref[fin])
    bound = atol + rtol * np.abs(ref[fin])
    max_err = float(err.max()) if err.size else 0.0
    if not np.all(err <= bound):  # also false when got has NaN/inf where ref is finite
        i = int(np.argmax(np.where(np.isfinite(err), err / bound, np.inf)))
        return Verdict(
            False, "wrong-result",
            f"max abs error {max_err:.3g} (at flat index {i}: got {got[fin][i]:.6g}, expected {ref[fin][i]:.6g}; "
            f"rtol={rtol:.1g}, atol={atol:.1g})", max_err,
        )  # fmt: skip
    return Verdict(True, "ok", "", max_err)


def compare_torch(out: Any, ref: Any, problem: Problem) -> Verdict:
    """:func:`compare` on the device: ``ref`` is the float64 reference as a torch tensor on the
    output's device, so checking a GPU kernel's 100M-element output costs milliseconds, not a
    host round trip and seconds of numpy."""
    import torch

    if not isinstance(out, torch.Tensor):
        return Verdict(False, "bad-output", f"returned {type(out).__name__}, expected a torch tensor")
    if tuple(out.shape) != tuple(ref.shape):
        return Verdict(False, "bad-output", f"shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    if dtype_name(out) != problem.dtype:
        return Verdict(False, "bad-output", f"dtype {dtype_name(out)}, expected {problem.dtype}")
    got = out.detach().to(device=ref.device, dtype=torch.float64)
    rtol, atol = problem.spec.tolerance(problem.dtype, problem.dim, problem.param)
    ref_nan, got_nan = torch.isnan(ref), torch.isnan(got)
    if not torch.equal(ref_nan, got_nan):
        n = int((ref_nan != got_nan).sum())
        return Verdict(False, "wrong-result", f"{n} element(s) NaN where the reference is not (or vice versa)", np.inf)
    fin = torch.isfinite(ref)
    inf = ~fin & ~ref_nan
    if bool(inf.any()) and not torch.equal(got[inf], ref[inf]):
        return Verdict(False, "wrong-result", "infinities differ from the reference", np.inf)
    g, r = got[fin], ref[fin]
    err = (g - r).abs()
    bound = atol + rtol * r.abs()
    max_err = float(err.max()) if err.numel() else 0.0
    if not bool((err <= bound).all()):
        ratio = torch.where(torch.isfinite(err), err / bound, torch.full_like(err, float("inf")))
        i = int(torch.argmax(ratio))
        return Verdict(
            False, "wrong-result",
            f"max abs error {max_err:.3g} (at flat index {i}: got {float(g[i]):.6g}, expected {float(r[i]):.6g}; "
            f"rtol={rtol:.1g}, atol={atol:.1g})", max_err,
        )  # fmt: skip
    return Verdict(True, "ok", "", max_err)


def _shares_memory(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.shares_memory(a, b)
    if hasattr(a, "untyped_storage") and hasattr(b, "untyped_storage"):
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    return False


#: glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): larger allocations are
#: always fresh mappings
MMAP_THRESHOLD_MAX = 32 * 2**20


def _poison(problem: Problem, shape: tuple[int, ...], array: str, device: str) -> None:
    """Fill, then free, an output-sized NaN buffer right before the kernel runs: allocators hand
    the same memory to the kernel's next allocation of that size (torch's caching allocator always
    does; glibc does below its mmap threshold), so a kernel that leaves part of its output
    unwritten returns NaN there instead of plausible stale values, and fails the comparison.
    Host outputs above glibc's largest mmap threshold are not poisoned: glibc maps every such
    allocation afresh and unmaps it on free, so the kernel's output gets new zeroed pages whatever
    was filled before (a 400 MB fill cost 0.73 s per trial on the 2-core VM, for nothing)."""
    if array == "torch":
        import torch

        dt = getattr(torch, problem.dtype)
        if device == "cpu" and math.prod(shape) * ITEMSIZE.get(problem.dtype, 8) > MMAP_THRESHOLD_MAX:
            return
        buf = torch.full(shape, float("nan"), dtype=dt, device=device)
    else:
        if math.prod(shape) * np.dtype(problem.dtype).itemsize > MMAP_THRESHOLD_MAX:
            return
        buf = np.full(shape, np.nan, dtype=problem.dtype)
    del buf


def _snapshot(x: Any) -> Any:
    """A copy of an input in its own dtype (a float64 copy cost twice the memory traffic)."""
    return x.copy() if isinstance(x, np.ndarray) else x.clone() if hasattr(x, "clone") else as_f64(x)


#: the unsigned integer type of each item size: an input is unchanged when its bits are
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _unchanged(x: Any, before: Any) -> bool:
    """Whether input ``x`` still holds the bits of its snapshot ``before`` (NaN payloads and the
    sign of zero included: a kernel that wrote them wrote its input). Compared as unsigned
    integers: NaN-aware float comparison of a 16M-element float32 input took 0.19 s on the 2-core
    VM, three times per candidate (a sixth of a large elementwise problem's budget), the bit
    comparison 13 ms."""
    if isinstance(x, np.ndarray) and isinstance(before, np.ndarray):
        if x.dtype != before.dtype or x.shape != before.shape:
            return False
        bits = _BITS.get(x.dtype.itemsize) if x.dtype.kind in "fciub" else None
        if bits is not None:  # same item size: a view of any strides
            return bool(np.array_equal(x.view(bits), before.view(bits)))
        return bool(np.array_equal(x, before, equal_nan=x.dtype.kind in "fc"))
    if hasattr(x, "clone") and hasattr(before, "clone"):  # torch, any device
        return _torch_same_bits(x, before)
    return bool(np.array_equal(as_f64(x), as_f64(before), equal_nan=True))


def _torch_same_bits(x: Any, before: Any) -> bool:
    import torch

    if x.dtype != before.dtype or x.shape != before.shape:
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(x.element_size())
    if ints is not None and x.dtype != torch.bool:
        try:
            return bool(x.view(ints).equal(before.view(ints)))
        except RuntimeError:  # a dtype torch will not view as integers: compared by value
            pass
    if x.is_floating_point() or x.is_complex():
        return bool(((x == before) | (x.isnan() & before.isnan())).all())
    return bool(x.equal(before))


def check_kernel(
    kernel: Callable[..., Any],
    vset: ValidationSet,
    array: str,
    device: str,
    sync: Callable[[], None] | None = None,
) -> Verdict:
    """Run ``kernel`` on every trial and compare. Exceptions become ``crash`` verdicts."""
    problem = vset.problem
    prev_out = None
    worst = 0.0
    on_device = array == "torch" and device != "cpu"
    for t, trial in enumerate(vset.trials):
        xs = vset.native_inputs(trial, array, device)
        before = [x.clone() if on_device else _snapshot(x) for x in xs]
        try:
            _poison(problem, reference_shape(trial), array, device)
            out = kernel(*xs)
            if sync:
                sync()
        except Exception as exc:
            return Verdict(False, "crash", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        if any(_shares_memory(out, x) for x in xs):
            return Verdict(False, "bad-output", "output aliases an input (return a new array)")
        if prev_out is not None and _shares_memory(out, prev_out):
            return Verdict(False, "stale-output", "returned the same buffer as the previous call")
        for i, (x, b) in enumerate(zip(xs, before, strict=True)):
            same = _unchanged(x, b)
            if not same:
                return Verdict(False, "input-mutated", f"input {problem.spec.arg_names(len(xs))[i]} was modified")
        if on_device:
            v = compare_torch(out, vset.device_reference(t, device), problem)
        else:
            v = compare(out, trial.reference, problem, trial.bound)
        if not v.ok:
            prev_ok = (
                compare_torch(out, vset.device_reference(t - 1, device), problem).ok
                if on_device and t > 0 else t > 0 and compare(out, vset.trials[t - 1].reference, problem).ok
            )  # fmt: skip
            if t > 0 and prev_out is not None and prev_ok:
                return Verdict(False, "stale-output", "returned the previous call's result for new inputs")
            return v
        worst = max(worst, v.max_err)
        prev_out = out
    return Verdict(True, "ok", "", worst)


def agrees(fn: Callable[..., Any], reference: Callable[..., np.ndarray], args: Sequence[Any], problem: Problem) -> Verdict:
    """Does ``fn(*args)`` match the reference on ``args`` (used to check a decorated function)?"""
    try:
        out = fn(*args)
    except Exception as exc:
        return Verdict(False, "crash", f"{type(exc).__name__}: {exc}")
    ref = reference(*[as_f64(a) for a in args], **problem.param)
    return compare(out, ref, problem)
