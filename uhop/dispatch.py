"""The runtime path: arguments -> problem key -> store -> kernel -> call.

The hot path (a cache hit) is a signature tuple of the arguments, one dict lookup and the call;
everything else (tracing, parameter inference, agreement checks, tuning, loading from the store)
happens once per new signature, in :meth:`Optimized._miss`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import itertools
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from uhop import backends as bk
from uhop import buffer as _buffer  # uhop.Buffer (issue 19)
from uhop import metrics
from uhop import ops as _ops
from uhop.backends.base import Backend, Candidate, Kernel
from uhop.config import settings
from uhop.errors import (
    EmptyInput,
    InputError,
    NoCandidateError,
    UhopWarning,
    UnsupportedDtype,
    UnsupportedInput,
)
from uhop.measure.validate import ValidationSet, agrees, check_kernel
from uhop.ops import get as get_op
from uhop.ops.base import Op, dtype_name, is_array
from uhop.ops.expr import TraceError, trace
from uhop.problem import Problem

log = logging.getLogger("uhop")


_ND = np.ndarray


#: torch tensor types seen so far (torch.Tensor, nn.Parameter...): one set lookup on the hot path
_TENSORS: set[type] = set()


def _arg_sig(a: Any) -> Any:
    t = type(a)  # numpy arrays and known torch types are keyed inline by args_sig
    if a is None:
        return None
    if hasattr(a, "is_contiguous"):  # torch.Tensor or a subclass: from now on args_sig keys it inline
        _TENSORS.add(t)
        return (a.shape, a.dtype, a.is_contiguous(), a.get_device())  # get_device(): an int, not a .device
    if hasattr(a, "__dlpack__") and hasattr(a, "shape"):  # CuPy, JAX, ... (zero-copy via DLPack)
        return (type(a), tuple(a.shape), str(a.dtype), getattr(a, "strides", None), a.__dlpack_device__())
    return (type(a), a)


def args_sig(args: Sequence[Any]) -> tuple[Any, ...]:
    """The cache key part of a call's arguments: :func:`_arg_sig` of each, with the torch tensor
    and numpy array cases inline (no call per argument: this runs on every dispatch)."""
    out = []
    for a in args:
        t = type(a)
        if t in _TENSORS:
            out.append((a.shape, a.dtype, a.is_contiguous(), a.get_device()))
        elif t is _ND:
            out.append((a.shape, a.dtype.num, a.flags.c_contiguous))
        else:
            out.append(_arg_sig(a))
    return tuple(out)


def call_sig(op_name: str, args: Sequence[Any], params: Mapping[str, Any]) -> tuple[Any, ...]:
    """The ``uhop.ops`` cache key: the op, its params, then :func:`args_sig`. Params keep the
    caller's keyword order (not sorted: a call site passes them in one order; another order is one
    more entry for the same kernel)."""
    return (op_name, tuple(params.items()) if params else (), args_sig(args))


def _foreign(a: Any) -> bool:
    """An array of another library (CuPy, JAX...) that UHOP takes through DLPack as torch."""
    return a is not None and type(a) is not _ND and not hasattr(a, "is_contiguous") and hasattr(a, "__dlpack__")


def _via_dlpack(args: Sequence[Any], torch_kernel: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a torch-in, torch-out kernel for a foreign DLPack library: inputs and the output
    cross by DLPack (zero-copy, same device), the result in the caller's library."""
    import sys

    import torch

    first = next(a for a in args if _foreign(a))
    lib = sys.modules[type(first).__module__.split(".")[0]]
    back = getattr(lib, "from_dlpack", None) or getattr(getattr(lib, "dlpack", None), "from_dlpack", None)
    if back is None:
        raise InputError(f"{type(first).__name__} supports DLPack but {lib.__name__} has no from_dlpack to return a result")
    to = torch.from_dlpack

    def kernel(*xs: Any) -> Any:
        return back(torch_kernel(*[None if x is None else to(x) for x in xs]))

    return kernel


def _array_kind(args: Sequence[Any]) -> tuple[str, str]:
    kinds = set()
    device = "cpu"
    for a in args:
        if a is None:
            continue
        if isinstance(a, np.ndarray):
            kinds.add("numpy")
        elif hasattr(a, "is_contiguous"):
            kinds.add("torch")
            if a.device.type != "cpu":
                device = f"{a.device.type}:{a.device.index or 0}"
        elif hasattr(a, "__dlpack__"):
            kinds.add("dlpack")
    if len(kinds) > 1:
        raise InputError(f"inputs mix array libraries ({', '.join(sorted(kinds))}); pass all numpy or all torch")
    return (kinds.pop() if kinds else "numpy"), device


def _is_contiguous(a: Any) -> bool:
    if hasattr(a, "is_contiguous"):
        return bool(a.is_contiguous())
    return bool(a.flags.c_contiguous)


def make_problem(spec: Op, args: Sequence[Any], params: Mapping[str, Any]) -> Problem:
    """Validate inputs (clear :class:`InputError` s) and build the problem they pose."""
    args = list(args)
    while args and args[-1] is None and not spec.variadic:
        args.pop()
    for i, a in enumerate(args):
        if a is None:
            later = next(n for n, b in zip(spec.arg_names(len(args))[i + 1 :], args[i + 1 :], strict=False) if b is not None)
            raise InputError(f"{spec.name}: {spec.arg_names(len(args))[i]} is None but {later} is given; pass both")
    p = spec.normalize_params(params)
    dims = spec.check(args, p)
    dtype = spec.check_dtypes(args)
    empty = next((i for i, a in enumerate(args) if a is not None and 0 in tuple(a.shape)), None)
    if empty is not None:  # consistent shapes, nothing to compute: no problem to tune
        name = spec.arg_names(len(args))[empty]
        raise EmptyInput(f"{spec.name}: {name} is empty (shape {tuple(args[empty].shape)})")
    array, device = _array_kind(args)
    layout = "contiguous" if all(_is_contiguous(a) for a in args) else _layout(spec.name, args)
    return Problem.make(spec.name, dims, dtype, p, len(args), layout, device, array)


def _layout(op: str, args: Sequence[Any]) -> str:
    """A problem's layout when not every input is C-contiguous: ``channels_last`` for a
    convolution whose 4-D torch inputs are channels-last (what PyTorch vision models and
    Inductor run; candidates are timed on inputs in that layout, where cuDNN and oneDNN run
    their fast kernels), else ``strided``."""
    if op != "conv2d" or not all(hasattr(a, "is_contiguous") for a in args):
        return "strided"
    import torch

    nhwc = torch.channels_last
    ok = all(a.is_contiguous() or (a.dim() == 4 and a.is_contiguous(memory_format=nhwc)) for a in args)
    return "channels_last" if ok else "strided"


# ---- resolving a problem to a kernel --------------------------------------------------------
Resolved = tuple[Kernel, Backend, Candidate]
_resolved: dict[str, Resolved] = {}
_lock = threading.RLock()
#: kernels served before they are final (a baseline while the problem tunes in the background, a
#: stored entry until its re-validation ends): key -> where they were cached, so that the final
#: kernel replaces them there. Each site: (cache dict, signature, problem, fallback).
_sites: dict[str, list[tuple[dict[Any, Any], Any, Problem, Callable[..., Any]]]] = {}
_interim: dict[str, Resolved] = {}
#: kernels a ``tune()`` call in this process just built, validated and stored: key -> (content
#: hash, the kernel). The first dispatch of the key serves it when the store still holds that
#: entry, instead of building it again and re-validating it while a baseline serves (after
#: ``tune()``, the first 8 calls of a 8192 x 1024 softmax ran at 18-34 ms, the baseline's, not 2 ms).
_fresh: dict[str, tuple[str, Resolved]] = {}
#: kernels swapped in at call sites since start (a background tuning or re-validation ending, a
#: spot-check fault): what recorded launch sequences (CUDA graphs) re-record on
_swaps = [0]


def generation() -> int:
    """How many times a served kernel was swapped at its call sites in this process."""
    return _swaps[0]


_UHOP_DIR = __import__("os").path.dirname(__file__) + __import__("os").sep


def _warn(msg: str) -> None:
    """Warn at the caller's line: the first frame outside UHOP's own files (a background thread
    has none: then the warning points at UHOP)."""
    import sys

    level, f = 2, sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_UHOP_DIR):
        f, level = f.f_back, level + 1
    warnings.warn(msg, UhopWarning, stacklevel=level if f is not None else 2)


def resolve(problem: Problem, policy: str | None = None) -> tuple[Kernel, Backend, Candidate]:
    """The final kernel for ``problem`` (see :func:`resolve_interim`), tuning before it returns
    under the ``background`` policy too (scripts and tests that need what dispatch will serve)."""
    policy = policy or settings().policy
    return resolve_interim(problem, "tune" if policy == "background" else policy)[0]


def resolve_interim(problem: Problem, policy: str | None = None) -> tuple[Resolved, bool]:
    """The kernel for ``problem`` and whether it is interim (to be replaced when background work
    on the key ends): from this process; else from the store (served at once when its content
    hash matches, re-validated in the background, re-tuned if that fails); else, with the
    ``background`` policy, the library baseline while the problem tunes in the background; else
    tuned now."""
    from uhop.store import open_store

    t_call = time.monotonic()
    s = settings()
    policy = policy or s.policy
    key = problem.key(s.shape_buckets)
    hit = _resolved.get(key)
    if hit is not None:
        return hit, False
    with _lock:
        if key in _resolved:
            return _resolved[key], False
        if key in _interim:
            return _interim[key], True
        store = open_store()
        entry = store.get(key)
        metrics.store_lookup(problem.op, entry is not None)
        fresh = _fresh.pop(key, None)
        if fresh is not None and entry is not None and entry.content_hash == fresh[0] \
                and Candidate.from_json(entry.candidate) == fresh[1][2]:  # fmt: skip
            kernel, backend, cand = fresh[1]
            _resolved[key] = (_spot_checked(kernel, backend, problem, key), backend, cand)
            metrics.selection(problem.op, cand.backend, entry.policy)
            return _resolved[key], False
        if entry is not None and policy == "background" and _builds_slowly(entry):
            base = _baseline_kernel(problem)  # the stored JIT kernel is loaded off the caller's path
            if base is not None:
                _interim[key] = base
                _background().submit(key, _in(s, lambda: _load_stored(problem, key, entry, base)), persist=False)
                return base, True
        if entry is not None:
            got = _from_store(problem, key, entry)
            if got is not None and policy == "background":  # serve now, re-validate off the path
                _interim[key] = got
                _background().submit(key, _in(s, lambda: _verify(problem, key, got)), persist=False)
                return got, True
            if got is not None and _valid(problem, got):
                _resolved[key] = got
                metrics.selection(problem.op, got[2].backend, entry.policy)
                return got, False
            store.invalidate(key)  # never serve it again; the re-tuned choice replaces it
        if policy == "background":
            _prestart_worker(problem)  # a GPU worker's start (CUDA, torch, Triton) overlaps this call
            base = _baseline_kernel(problem)
            if base is not None:
                _interim[key] = base
                _background().submit(key, _in(s, lambda: _tune_in_background(problem, key, base, t_call)))
                return base, True
        from uhop.tune.tuner import tune

        res = tune(problem=problem, policy=policy, store=store)
        assert res.kernel is not None and res.backend is not None and res.served is not None
        _fresh.pop(key, None)
        _resolved[key] = (_spot_checked(res.kernel, res.backend, problem, key), res.backend, res.served)
        metrics.selection(problem.op, res.served.backend, res.policy)
        return _resolved[key], False


def _from_store(problem: Problem, key: str, entry: Any) -> Resolved | None:
    """Build a stored entry's kernel, or None (with a warning) when it cannot be served."""
    from uhop.tune.tuner import content_hash

    cand = Candidate.from_json(entry.candidate)
    try:
        backend = bk.get(cand.backend)
    except KeyError:
        backend = None
    if backend is None or not (backend.available and backend.supports(problem)):
        _warn(f"stored kernel {cand.id} for {problem.describe()} needs an unavailable backend; re-tuning")
        return None
    if entry.content_hash and entry.content_hash != content_hash(cand, key, backend):
        _warn(f"stored kernel {cand.id} for {problem.describe()} is stale (content hash changed); re-tuning")
        return None
    try:
        return _spot_checked(backend.compile(cand, problem), backend, problem, key), backend, cand
    except Exception as exc:  # a stored entry that no longer builds: re-tune
        _warn(f"stored kernel {cand.id} failed to build ({exc}); re-tuning")
        return None


def _builds_slowly(entry: Any) -> bool:
    """Whether building a stored entry's kernel costs a JIT runtime's start-up (numba, Triton,
    IREE: a second or more in a new process) or importing a library the caller has not loaded
    (torch for a numpy caller: 1-2 s), rather than a library call's."""
    import sys

    try:
        b = bk.get(Candidate.from_json(entry.candidate).backend)
    except Exception:
        return False
    return bool(b.crash_prone) or b.array not in sys.modules


def _load_stored(problem: Problem, key: str, entry: Any, base: Resolved) -> None:
    """Build a stored JIT kernel while the baseline serves, then re-validate and swap it in."""
    from uhop.tune.background import check_abandoned

    got = _from_store(problem, key, entry)
    if got is None:
        from uhop.store import open_store

        check_abandoned()  # at exit a failed build may be the shutdown's: the entry stays
        open_store().invalidate(key)
        _tune_in_background(problem, key, base)
        return
    _verify(problem, key, got)


def _baseline_kernel(problem: Problem) -> Resolved | None:
    """The library baseline for ``problem`` (the tuner's :func:`~uhop.tune.tuner.baseline`),
    compiled and checked on a small instance of the problem (a wiring fault shows there in
    milliseconds; the full-size check is the background run's first step), or None."""
    from uhop.tune.tuner import baseline

    # The backend of the caller's own library first: importing another one (torch for a numpy
    # caller) would cost the first call more than the tuning saves it.
    want = "torch" if problem.device != "cpu" or problem.array == "torch" else "numpy"
    allow = settings().backends
    vendors = [b for b in (bk.get(want),) if (not allow or b.name in allow) and b.available and b.supports(problem)]
    vendors = vendors or [b for b in bk.for_problem(problem, allow) if b.vendor]
    try:
        per = [list(b.candidates(problem))[:1] for b in vendors]
        cand = baseline(problem, vendors, per)
        if cand is None:
            return None
        backend = bk.get(cand.backend)
        small = _small_problem(problem)
        if small is not None:
            v = check_kernel(backend.compile(cand, small), ValidationSet(small, trials=1), backend.array, small.device)
            if not v.ok:
                log.warning("baseline %s failed on a small %s (%s: %s); tuning before serving",
                            cand.id, small.describe(), v.status, v.reason)  # fmt: skip
                return None
        return backend.compile(cand, problem), backend, cand
    except Exception as exc:  # no baseline: the caller tunes before returning, as policy=tune
        log.debug("no baseline for %s: %s", problem.describe(), exc)
        return None


def _small_problem(problem: Problem) -> Problem | None:
    """``problem`` with every dim capped at 16 (None when the op rejects such dims)."""
    dims = {d: min(v, 16) for d, v in problem.dims}
    try:
        small = dataclasses.replace(problem, dims=tuple(dims.items()))
        small.spec.shapes_from_dims(small.dim, small.param, small.arity)
        return small
    except Exception:
        return None


def _in(s: Any, job: Callable[[], None]) -> Callable[[], None]:
    """``job`` run under the settings in force now (budget, backends, store...), not those of
    whatever the queuing thread does later."""
    from uhop import config

    def run() -> None:
        with config.use(s):
            job()

    return run


def _background() -> Any:
    from uhop.tune.background import queue

    return queue()


def _install(key: str, final: Resolved | None) -> None:
    """Make ``final`` the key's kernel everywhere its interim one was cached (None: no valid
    kernel exists, each site falls back to its own function)."""
    with _lock:
        _interim.pop(key, None)
        _swaps[0] += 1
        if final is not None:
            _resolved[key] = final
        for cache, sig, problem, fallback, written in _sites.pop(key, []):
            cache[sig] = _site_kernel(*final[:2], problem, written) if final is not None else fallback


def _prestart_worker(problem: Problem) -> None:
    """Start the isolation worker that will evaluate ``problem``'s candidates, without waiting:
    on a GPU its start (a Python process importing torch and Triton and creating a CUDA context,
    6 s on the lent H100's host) then overlaps the baseline's first call."""
    if not settings().isolates(problem.device):  # on CPU only backends that JIT native code need it
        return
    try:
        from uhop.tune.isolated import evaluator

        evaluator(problem.device).start()
    except Exception as exc:  # the tuner starts it again and reports why it cannot
        log.debug("isolation worker not started early: %s", exc)


def _tune_in_background(problem: Problem, key: str, base: Resolved, first_call: float | None = None) -> None:
    """Tune ``problem`` and swap the winner in for ``base``. ``first_call``: when the call that
    queued this began; the budget counts from there (the baseline's build and first run are part
    of the time to the tuned kernel), at most a quarter of it, so that a job queued behind
    others' tuning still gets most of its budget."""
    from uhop.tune.background import TuningLease
    from uhop.tune.tuner import tune

    budget = settings().tune_budget_s
    if first_call is not None:
        budget -= min(max(time.monotonic() - first_call, 0.0), 0.25 * budget)
    lease = TuningLease(key)
    if not lease.acquire():  # another process on this machine is tuning it: take its result
        got = _await_other_tuning(problem, key, lease, wait_s=max(3 * settings().tune_budget_s, 30.0))
        if got is not None:
            lease.release()
            metrics.selection(problem.op, got[2].backend, "background")
            _install(key, got)
            return
    try:
        res = tune(problem=problem, policy="tune", budget_s=budget)
    except NoCandidateError as exc:
        _warn(f"no valid kernel for {problem.describe()} ({exc}); calling the reference")
        _install(key, None)
        return
    except Exception as exc:  # the baseline stays in service; the next process tunes again
        log.warning("background tuning of %s failed (%s: %s); keeping %s", problem.describe(),
                    type(exc).__name__, exc, base[2].id)  # fmt: skip
        _install(key, base)
        return
    finally:
        lease.release()
    assert res.kernel is not None and res.backend is not None and res.served is not None
    metrics.selection(problem.op, res.served.backend, "background")
    _install(key, (_spot_checked(res.kernel, res.backend, problem, key), res.backend, res.served))


def _await_other_tuning(problem: Problem, key: str, lease: Any, wait_s: float) -> Resolved | None:
    """Wait (polling, exit not held up) until the process tuning ``key`` ends, then serve what it
    stored, validated here at full size; None, with ``lease`` held where it could be taken, when
    it stored nothing valid (it failed or died) or ``wait_s`` passed: this process tunes then."""
    from uhop.store import open_store
    from uhop.tune.background import check_abandoned

    _background().no_exit_wait(key)
    log.info("%s is being tuned by another process; waiting for its result", problem.describe())
    deadline = time.monotonic() + wait_s
    while not lease.acquire():
        check_abandoned()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    entry = open_store().get(key)
    if entry is None or entry.median_s is None:
        return None
    got = _from_store(problem, key, entry)
    return got if got is not None and _valid(problem, got) else None


# ---- dispatch-time spot checks (uhop.sandbox.spotcheck) ----------------------------------------
def _spot_checked(kernel: Kernel, backend: Backend, problem: Problem, key: str) -> Kernel:
    """Untrusted kernels (kernel files) re-checked on a sample of calls; a failure quarantines
    the store entry and moves the key, in this process, to the next best kernel: the fastest
    other one the store measured valid, else the library baseline (else the reference serves)."""
    if backend.trusted:  # UHOP's own templates: nothing to wrap, nothing imported
        return kernel
    from uhop.sandbox.spotcheck import next_best, spot_checked
    from uhop.store import open_store

    def fallback() -> Kernel | None:  # called once, by the call that found the fault
        got = next_best(problem, key, open_store()) or _baseline_kernel(problem)
        with _lock:
            if got is None:
                _resolved.pop(key, None)
            else:
                _resolved[key] = got
            _swaps[0] += 1
        # call sites that cached the wrapper reach it with this backend's arrays
        return None if got is None else _adapt(*got[:2], dataclasses.replace(problem, array=backend.array))

    return spot_checked(kernel, problem, key, trusted=backend.trusted, store=open_store(), fallback=fallback)
# ---- end of spot checks ------------------------------------------------------------------------


def _valid(problem: Problem, got: Resolved) -> bool:
    """Full-size validation of a stored kernel (one fresh draw); warns when it fails."""
    from uhop.tune.background import check_abandoned

    kernel, backend, cand = got
    try:
        sync = (lambda: backend.synchronize(problem.device)) if problem.device != "cpu" else None
        v = check_kernel(kernel, ValidationSet(problem, trials=1), backend.array, problem.device, sync)
    except Exception as exc:
        check_abandoned()  # at exit a failure may be the shutdown's (thread pools refuse work): no verdict
        _warn(f"stored kernel {cand.id} for {problem.describe()} failed validation ({type(exc).__name__}: {exc}); re-tuning")
        return False
    if not v.ok:
        check_abandoned()
        _warn(f"stored kernel {cand.id} for {problem.describe()} failed validation ({v.status}: {v.reason}); re-tuning")
    return v.ok


def _verify(problem: Problem, key: str, got: Resolved) -> None:
    """Full-size re-validation of a stored kernel served from the store (off the caller's path):
    on failure the entry is dropped, the problem re-tuned and the sites moved to the result."""
    from uhop.store import open_store

    if _valid(problem, got):
        metrics.selection(problem.op, got[2].backend, "background")
        _install(key, got)
        return
    open_store().invalidate(key)
    base = _baseline_kernel(problem)
    with _lock:  # the caches serve the baseline (or the caller's own function) while it re-tunes
        for cache, sig, p, fallback, written in _sites.get(key, []):
            cache[sig] = _site_kernel(*base[:2], p, written) if base is not None else fallback
    _tune_in_background(problem, key, base if base is not None else got)


def serve(problem: Problem, policy: str | None, cache: dict[Any, Any], sig: Any, fallback: Callable[..., Any],
          written: Callable[..., Any] | None = None) -> Kernel:
    """Resolve ``problem``, adapt the kernel to the caller's arrays, and cache it at
    ``cache[sig]`` (``sig`` None: not cached); an interim kernel is replaced there when its
    background work ends, by ``fallback`` if no valid kernel exists. ``written``: the caller's
    own function, which serves calls that need gradients (:func:`_grad_guard`)."""
    with _lock:
        (kernel, backend, _), interim = resolve_interim(problem, policy)
        k = _site_kernel(kernel, backend, problem, written)
        if sig is not None:
            cache[sig] = k
            if interim:
                _sites.setdefault(problem.key(settings().shape_buckets), []).append((cache, sig, problem, fallback, written))
        return k


def _site_kernel(kernel: Kernel, backend: Backend, problem: Problem, written: Callable[..., Any] | None) -> Kernel:
    """What a call site caches: the kernel adapted to the caller's arrays, timed, and guarded for
    calls that need gradients."""
    return _grad_guard(metrics.timed(problem.op, _adapt(kernel, backend, problem)), backend, problem, written)


def _grad_guard(k: Kernel, backend: Backend, problem: Problem, written: Callable[..., Any] | None) -> Kernel:
    """UHOP's kernels other than torch's own compute no gradients: a torch call with grad mode on
    and an input that requires grad goes to ``written`` (a decorated function: the caller's own,
    as without UHOP) or to torch's op for the problem (``uhop.ops``), so autograd records it; other
    calls go to ``k``. (Before, such a call returned a tensor without ``grad_fn`` whenever the pick
    was not torch's: ``backward()`` raised, or gradients silently stopped there.)"""
    if problem.array != "torch" or backend.name == "torch":
        return k
    import torch

    grad_on = torch.is_grad_enabled
    slow: list[Callable[..., Any]] = []

    def guarded(*args: Any) -> Any:
        if grad_on() and any(getattr(a, "requires_grad", False) for a in args):
            if not slow:
                slow.append(written or _autograd_kernel(problem))
            return slow[0](*args)
        return k(*args)

    return guarded


def _autograd_kernel(problem: Problem) -> Callable[..., Any]:
    """torch's own op for ``problem`` (the torch backend's first candidate: autograd records it),
    or, where torch has none, the float64 reference with one warning that gradients stop there.
    Not :func:`_baseline_kernel`: that one honours ``UHOP_BACKENDS`` and falls back to numpy, and
    which backends may be tuned must not decide whether gradients are right."""
    b = bk.get("torch")
    try:
        if b.available and b.supports(problem):
            cand = next(iter(b.candidates(problem)))
            return b.compile(cand, problem)
    except Exception as exc:  # noqa: BLE001 (named in the warning below)
        log.debug("no torch kernel for %s: %s", problem.describe(), exc)
    _warn(f"{problem.describe()}: inputs require grad and torch has no op for this problem; computed without "
          "autograd (gradients stop here)")  # fmt: skip
    spec = get_op(problem.op)
    return lambda *a: _reference_call(spec, a, problem.param)


def wait(timeout: float | None = None) -> bool:
    """Block until background tuning (and re-validation of stored kernels) has finished and the
    results are in service; False if ``timeout`` seconds passed first."""
    from uhop.tune.background import wait as _wait

    return _wait(timeout)


def _adapt(kernel: Kernel, backend: Backend, problem: Problem) -> Kernel:
    """Wrap a kernel so it takes and returns the caller's array library (zero-copy on CPU)."""
    if backend.array == problem.array:
        return kernel
    to = backend.to_native
    dev = problem.device
    if problem.array == "torch":
        import torch

        if dev == "cpu":

            def from_numpy_kernel(*args: Any) -> Any:
                return torch.from_numpy(kernel(*[to(a, dev) for a in args]))

            return from_numpy_kernel

        def to_device_kernel(*args: Any) -> Any:  # a sandboxed user kernel of a CUDA problem
            return torch.from_numpy(kernel(*[to(a, dev) for a in args])).to(dev)

        return to_device_kernel

    if dev == "cpu":  # the common case, kept to two C calls per argument
        from torch import from_numpy

        def from_torch_cpu_kernel(*args: Any) -> Any:
            return kernel(*[None if a is None else from_numpy(a) for a in args]).numpy()

        return from_torch_cpu_kernel

    def from_torch_kernel(*args: Any) -> Any:
        return _buffer.device_to_host(kernel(*[to(a, dev) for a in args]))

    return from_torch_kernel


def _release_at_exit() -> None:
    """Drop every kernel this process holds before the interpreter tears down extension modules:
    IREE's runtime objects alive at that point make nanobind print pages of leak reports."""
    import sys

    if "uhop.backends.iree" in sys.modules:  # a job still holding an IREE kernel: let it end
        wait(timeout=5.0)
    _resolved.clear()
    _interim.clear()
    _sites.clear()
    _direct_cache.clear()
    for o in list(_instances):
        o._kernels.clear()
    import gc

    for mod, name in (("uhop.backends.iree", "_load_cached"), ("uhop.mlir.runtime", "_device")):
        m = sys.modules.get(mod)
        if m is not None:
            getattr(m, name).cache_clear()
    gc.collect()


def clear_process_cache() -> None:
    """Forget kernels resolved in this process (tests; after ``uhop cache clear``); background
    work still running finishes first."""
    wait()
    with _lock:
        _resolved.clear()
        _interim.clear()
        _sites.clear()
        _direct_cache.clear()
        _fresh.clear()


def note_tuned(key: str, content_hash: str, got: Resolved) -> None:
    """A ``tune()`` call of this process stored ``got`` for ``key`` (see :data:`_fresh`)."""
    with _lock:
        if key not in _resolved and key not in _interim:  # not dispatch's own tuning (it serves its result)
            _fresh[key] = (content_hash, got)


# ---- uhop.ops.<op>(...) -------------------------------------------------------------------
class KernelCache(dict):
    """A signature -> kernel cache (``uhop.ops``' :func:`call_sig`, a decorated function's
    :func:`args_sig`), plus ``guarded``: per op (``""`` for a decorated function), ``(n, params,
    guard, kernel)`` entries for calls whose arguments are all torch tensors, where ``guard`` is torch's
    C++ tensor check (dtype, device, sizes, strides, dispatch keys) of the arguments that keyed
    the kernel; a passing check costs about 0.2 us against 0.8 us for the key and its lookup.
    A guard is stricter than the key (strides, not only contiguity), so a hit is always the
    kernel the key would find; any write empties ``guarded`` (interim kernels are swapped by a
    write), and :meth:`remember` rebuilds an entry on the key path's next hit."""

    __slots__ = ("guarded",)

    def __init__(self) -> None:
        super().__init__()
        self.guarded: dict[str, tuple[tuple[int, dict[str, Any], Any, Kernel], ...]] = {}

    def __setitem__(self, key: Any, value: Kernel) -> None:
        self.guarded = {}
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.guarded = {}
        super().__delitem__(key)

    def clear(self) -> None:
        self.guarded = {}
        super().clear()

    def pop(self, *a: Any) -> Any:
        self.guarded = {}
        return super().pop(*a)

    def popitem(self) -> tuple[Any, Kernel]:
        self.guarded = {}
        return super().popitem()

    def update(self, *a: Any, **kw: Any) -> None:
        self.guarded = {}
        super().update(*a, **kw)

    # setdefault is dict's own: it never replaces a kernel, so no guard goes stale

    def remember(self, name: str, args: tuple[Any, ...], params: dict[str, Any], k: Kernel) -> None:
        """After a hit on the key path: a guard for these arguments under ``name`` when they are
        all torch tensors; torch builds without the guard class keep the key."""
        global _guards
        if _guards is None:
            try:
                from torch._C._dynamo.guards import TensorGuards as _guards
            except ImportError:
                _guards = False
        entries = self.guarded.get(name, ())
        if _guards is False or len(entries) >= GUARDED_PER_OP or not _TENSORS.issuperset(map(type, args)):
            return
        try:
            g = _guards(*args, dynamic_dims_sizes=[list(a.shape) for a in args],
                        dynamic_dims_strides=[list(a.stride()) for a in args])
        except Exception:  # another torch's signature: the key path serves
            _guards = False
            return
        guarded = dict(self.guarded)  # copied: a reader may be iterating the old one
        guarded[name] = (*entries, (len(args), dict(params), g, k))
        self.guarded = guarded


_guards: Any = None  # torch's TensorGuards class (None: not looked up yet; False: unavailable)
#: signatures per op (or decorated function) served by a guard; more go through the key (a
#: failed check costs about 0.14 us)
GUARDED_PER_OP = 4


_direct_cache: KernelCache = KernelCache()


def call_op(op_name: str, args: Sequence[Any], params: Mapping[str, Any], sig: Any = False) -> Any:
    """``uhop.ops.<op>(*args, **params)``. ``sig``: the caller's :func:`call_sig` of this call,
    already looked up and missed (None: unhashable); not given, computed and looked up here."""
    if sig is False:
        try:
            sig = call_sig(op_name, args, params)
            k = _direct_cache.get(sig)
        except TypeError:  # unhashable argument: let the checks below name it
            sig, k = None, None
        if k is not None:
            return k(*args)
    # ---- uhop.Buffer (issue 19): run at the placed location, return a Buffer ----
    if any(type(a) is _buffer.Buffer for a in args):
        return _buffer.apply(args, lambda xs: call_op(op_name, xs, params), op=op_name, params=params)
    # ----
    spec = get_op(op_name)
    if settings().disable or _is_probing():
        return _reference_call(spec, args, params)
    if any(_foreign(a) for a in args):

        k = _via_dlpack(args, lambda *t: call_op(op_name, t, params))
        out = k(*args)
        if sig is not None:
            _direct_cache[sig] = k
        return out
    if not all(a is None or is_array(a) for a in args):
        spec.check_arrays(args)  # raises, naming the argument
    try:
        problem = make_problem(spec, args, params)
    except EmptyInput as exc:  # the signature's exact shapes are empty ones: cached as such
        k = functools.partial(_empty_result, spec, params=params, why=exc)
        if sig is not None:
            _direct_cache[sig] = k
        return k(*args)
    except UnsupportedInput as exc:
        k = _as_written(spec, args, params, exc)
        if sig is not None:  # later calls of this signature go straight to it
            _direct_cache[sig] = k
        return k(*args)
    with _first_call():  # from before the background job is queued to the end of this call
        k = serve(problem, None, _direct_cache, sig, lambda *a: _reference_call(spec, a, params))
        return k(*args)


def _first_call() -> Any:
    """Around a new signature's first call: background work waits for it (see
    :func:`uhop.tune.background.first_call`)."""
    from uhop.tune.background import first_call

    return first_call()


def _empty_result(spec: Op, *args: Any, params: Mapping[str, Any], why: EmptyInput) -> Any:
    """``uhop.ops`` on inputs with no elements (a batch of zero rows, an expert that got no
    tokens): what torch returns. An empty output is allocated (the caller's library, dtype and
    device); a non-empty one (a matmul with K = 0: zeros) comes from the reference. No tuning,
    nothing stored. Where the reference has no value (attention over zero keys) the call raises
    ``InputError`` naming the empty input."""
    p = spec.normalize_params(params)
    shape = tuple(spec.output_shape([tuple(a.shape) for a in args if a is not None], p))
    if 0 in shape:
        return _as_callers(np.empty(shape), args)
    try:
        with np.errstate(all="ignore"):
            return _reference_call(spec, args, params)
    except (ValueError, IndexError) as exc:
        raise InputError(f"{why}: the op has no value for it ({exc})") from None


def _as_written(spec: Op, args: Sequence[Any], params: Mapping[str, Any], why: Exception) -> Callable[..., Any]:
    """What serves inputs UHOP's kernels do not take (elementwise inputs that broadcast other than
    as a row vector along the last dim or a scalar: a column vector): torch tensors are computed
    by torch on their device, with torch's broadcasting and type promotion, as the chain written
    in torch would be (not through the float64 reference on the host: a copy of every input to the
    host and back); numpy arrays by the reference. One warning per signature says so. Inputs of
    mixed floating dtypes are a problem UHOP serves (the ``dtypes`` param), not this."""
    _warn(f"{why}; computed as written")
    array, _ = _array_kind(args)
    if array == "torch" and spec.name == "elementwise":
        from uhop.backends.torch import evaluate_expr

        e = spec.expression(spec.normalize_params(params))
        return lambda *a: evaluate_expr(e, list(a))
    return lambda *a: _reference_call(spec, a, params)


def _reference_call(spec: Op, args: Sequence[Any], params: Mapping[str, Any]) -> Any:
    """The float64 reference, returned in the dtype the inputs' library gives (UHOP_DISABLE=1, or
    inputs UHOP's kernels don't take, such as a column vector in an elementwise chain)."""
    from uhop.ops.base import as_f64

    out = spec.reference(*[as_f64(a) for a in args], **spec.normalize_params(params))
    return _as_callers(out, args)


def _as_callers(out: np.ndarray, args: Sequence[Any]) -> Any:
    """A numpy result in the inputs' library, result dtype and device."""
    from uhop.ops.base import result_dtype

    first = next(a for a in args if a is not None)
    dt = result_dtype(args) or dtype_name(first)
    if _array_kind(args)[0] == "torch":
        import torch

        return torch.from_numpy(out).to(dtype=getattr(torch, dt), device=first.device)
    return out.astype(dt)


# ---- @uhop.optimize ---------------------------------------------------------------------------
#: set while a decorated function is probed at small shapes: nested decorated functions and
#: uhop.ops calls inside it run as written (no tuning, no store entries at the probe's shapes)
_probing = threading.local()


def _is_probing() -> bool:
    return getattr(_probing, "depth", 0) > 0


@contextlib.contextmanager
def _probe() -> Any:
    """Calls of the user's function on the probe's small inputs (see :data:`_probing`)."""
    _probing.depth = getattr(_probing, "depth", 0) + 1
    try:
        yield
    finally:
        _probing.depth -= 1


def _input_error(spec: Any, args: Sequence[Any], params: Mapping[str, Any]) -> InputError | None:
    """The op's error for the caller's own inputs (the probe's are smaller: its message would
    name shapes the caller never passed), or None if they pass."""
    try:
        make_problem(spec, args, dict(params))
    except InputError as exc:
        return exc
    except Exception:
        return None
    return None


def _runs_as_written(fn: Callable[..., Any], small: Sequence[Any]) -> bool:
    """Whether ``fn`` returns on the probe's small inputs (nested decorated functions run as
    written while probing)."""
    try:
        with _probe():
            fn(*small)
        return True
    except Exception:
        return False


def _small_like(args: Sequence[Any], rng: np.random.Generator) -> list[Any]:
    """Random inputs shaped like ``args`` with every dim capped at 8 (equal dims stay equal, so
    shape relations such as a shared K survive)."""
    out = []
    for a in args:
        if not is_array(a):
            out.append(a)
            continue
        shape = tuple(min(int(d), 8) for d in a.shape)
        x = rng.uniform(-1, 1, size=shape)
        if isinstance(a, np.ndarray):
            out.append(x.astype(a.dtype))
        else:
            import torch

            out.append(torch.from_numpy(x).to(dtype=a.dtype, device=a.device))
    return out


_instances: weakref.WeakSet[Optimized] = weakref.WeakSet()


def _probe_choices(name: str, choices: Sequence[Any], args: Sequence[Any]) -> Sequence[Any]:
    """Values of a discrete param that probing may infer. Precision is never loosened by
    inference: ``tf32`` only where the caller's framework enables it (torch's ``allow_tf32`` on a
    CUDA device that has tf32), since its looser tolerance would also admit kernels that differ in
    other ways (an erf-GELU passing for a tanh-GELU)."""
    if name != "precision":
        return choices
    t = next((a for a in args if hasattr(a, "is_contiguous")), None)
    tf32 = False
    if t is not None and t.device.type == "cuda":
        import torch

        tf32 = bool(torch.backends.cuda.matmul.allow_tf32) and torch.cuda.get_device_capability(t.device)[0] >= 8
    return [c for c in choices if c != "tf32" or tf32]


class Optimized:
    """A user function bound to an op; calls dispatch to UHOP's kernel for each new signature."""

    def __init__(self, fn: Callable[..., Any], op: str, params: Mapping[str, Any], policy: str | None) -> None:
        self.fn = fn
        self.spec = get_op(op)
        self.params = dict(params)
        self.policy = policy
        self._kernels = KernelCache()
        self._semantics: dict[Any, dict[str, Any] | None] = {}
        self._sig = inspect.signature(fn)
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)
        _instances.add(self)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        """A decorated method binds like a function: ``ln.forward(x)`` calls ``fn(ln, x)``."""
        if obj is None:
            return self
        return functools.partial(self.__call__, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _ops._compiling():  # Dynamo traces it (torch.compile): compiled as written, by that compiler
            return self.fn(*args, **kwargs)
        if kwargs:
            args = self._bind(args, kwargs)
        cache = self._kernels
        for n, _, g, k in cache.guarded.get("", ()):  # torch signatures seen before (KernelCache)
            if n == len(args) and g.check(*args):
                return k(*args)
        try:
            k = cache.get(args_sig(args))
        except TypeError:  # unhashable (a list, say): the user's function decides what it means
            return self.fn(*args)
        if k is None:
            return self._miss(args)
        if args and type(args[0]) in _TENSORS:
            cache.remember("", args, {}, k)
        return k(*args)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        bound = self._sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return tuple(bound.arguments.values())

    # ---- first call with a new signature ----------------------------------------------------
    def _miss(self, args: tuple[Any, ...]) -> Any:
        # ---- uhop.Buffer (issue 19): run where the inputs are, return a Buffer ----
        if any(type(a) is _buffer.Buffer for a in args):
            return _buffer.apply(args, lambda xs: self(*xs))
        # ----
        if settings().disable or _is_probing():
            return self.fn(*args)  # not cached: lifting UHOP_DISABLE takes effect at once
        with _first_call():  # from before the background job is queued to the end of this call
            if all(a is None or is_array(a) for a in args):
                kernel = self._kernel_for(args)
            else:
                kernel = self._kernel_with_call_params(args)
            self._kernels.setdefault(args_sig(args), kernel)  # serve() may have cached it already
            return kernel(*args)

    def _kernel_with_call_params(self, args: tuple[Any, ...]) -> Callable[..., Any]:
        """Non-array arguments named as op params (``layer_norm(x, w, b, eps=1e-5)``, or
        ``**params``) become op params for this signature; the kernel gets the arrays. Any other
        non-array argument (a module, a list): the function runs as written."""
        names = list(self._sig.parameters)
        known = {p.name for p in self.spec.params}
        arrays = [i for i, a in enumerate(args) if a is None or is_array(a)]
        call_params = {}
        for i, a in enumerate(args):
            if i in arrays:
                continue
            if i >= len(names) or names[i] not in known or not isinstance(a, (bool, int, float, str)):
                return self.fn
            call_params[names[i]] = a
        if not arrays:
            return self.fn
        fixed = {i: a for i, a in enumerate(args) if i not in arrays}

        def fn_of_arrays(*xs: Any) -> Any:
            full, it = [], iter(xs)
            for i in range(len(args)):
                full.append(fixed[i] if i in fixed else next(it))
            return self.fn(*full)

        inner = Optimized(fn_of_arrays, self.spec.name, {**self.params, **call_params}, self.policy)
        inner.__qualname__ = getattr(self.fn, "__qualname__", "function")
        if inner._kernel_for(tuple(args[i] for i in arrays)) is fn_of_arrays:
            return self.fn
        # through inner's own cache: a background-tuned winner swapped in there is seen here
        return lambda *a: inner(*[a[i] for i in arrays])

    def _kernel_for(self, args: Sequence[Any]) -> Callable[..., Any]:
        """What to call for arguments like ``args``: UHOP's kernel, or the function itself when it
        is not this op or the inputs are ones UHOP's kernels don't take (broadcasting chains)."""
        if any(_foreign(a) for a in args):
            import torch

            inner = self._kernel_for([None if a is None else torch.from_dlpack(a) for a in args])
            # through self(), so the torch signature's cache entry (swapped when tuning ends) serves it
            return self.fn if inner is self.fn else _via_dlpack(args, lambda *t: self(*t))
        try:
            params = self._semantics_for(args)
            if params is None:  # the function is not this op: keep calling it
                return self.fn
            problem = make_problem(self.spec, args, params)
        except UnsupportedInput:
            return self.fn
        try:
            sig = None if any(_foreign(a) for a in args) else args_sig(args)
            return serve(problem, self.policy, self._kernels, sig, self.fn, written=self.fn)
        except NoCandidateError as exc:
            _warn(f"{self.fn.__qualname__}: {exc}; calling the function as written")
            return self.fn

    def _semantics_for(self, args: Sequence[Any]) -> dict[str, Any] | None:
        """The op params the function implements for inputs of this arity, ranks and library
        (traced for elementwise, probed for unstated discrete params), or None if it matches no
        setting of the op's reference."""
        skey = tuple((type(a), getattr(a, "ndim", None), dtype_name(a)) for a in args)
        if skey in self._semantics:
            return self._semantics[skey]
        with self._lock:
            params = self._infer(args)
            self._semantics[skey] = params
        return params

    def _infer(self, args: Sequence[Any]) -> dict[str, Any] | None:
        name = self.fn.__qualname__
        given = dict(self.params)
        if self.spec.name == "elementwise" and "expr" not in given:
            try:
                given["expr"] = trace(self.fn, len(args)).text()
            except TraceError as exc:
                _warn(f"{name} is not an elementwise chain UHOP can fuse ({exc}); calling it as written")
                return None
        probe_names = [p for p in self.spec.params if p.choices is not None and p.name not in given]
        choices = [_probe_choices(p.name, p.choices, args) for p in probe_names]
        options = [dict(zip([p.name for p in probe_names], combo, strict=True))
                   for combo in itertools.product(*choices)] or [{}]  # fmt: skip
        rng = np.random.default_rng()
        small = _small_like(args, rng)
        last = None
        for opt in options:
            params = {**given, **opt}
            try:
                problem = make_problem(self.spec, small, params)
            except UnsupportedInput:
                raise
            except UnsupportedDtype as exc:  # the function's own code defines these (integer matmul works undecorated)
                _warn(f"{name}: {exc}; UHOP calls the function as written for inputs of these dtypes")
                return None
            except InputError as exc:
                # Inputs the op cannot take. Where the function itself takes them (numpy's ``a @ b``
                # with a vector b, batch dims that broadcast), it runs as written for them, as an
                # undecorated function would; where it fails too, or where the decorator's own
                # params are what the inputs contradict, UHOP's error names the argument.
                real = _input_error(self.spec, args, params) or exc
                own = {k: v for k, v in params.items() if k not in self.params}
                if _input_error(self.spec, small, own) is not None and _runs_as_written(self.fn, small):
                    _warn(f"{name}: UHOP's {self.spec.name} does not take these inputs ({real}); calling the "
                          "function as written for them")  # fmt: skip
                    raise UnsupportedInput(str(real)) from None
                raise InputError(f"{name}: {real}") from None
            with _probe():
                v = agrees(self.fn, self.spec.reference, small, problem)
            if v.ok:
                log.debug("%s implements %s with %s", name, self.spec.name, params)
                return params
            last = v
        detail = f"{last.status}: {last.reason}" if last else "no candidate params"
        _warn(
            f"{name} does not compute {self.spec.name}{' ' + str(given) if given else ''} "
            f"({detail}); UHOP keeps calling it as written"
        )
        return None



def optimize(op: str | None = None, *, policy: str | None = None, **params: Any) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a plain function whose semantics are ``op``; without ``op``, the whole function
    is compiled as a graph (:func:`uhop.jit`: numpy or torch code, regions served by UHOP).

    ``params`` fix op parameters (``activation="gelu"``, ``causal=True``, ``eps=1e-6``);
    discrete ones left out are inferred by probing the function. ``policy`` overrides
    ``UHOP_POLICY`` for this function. With ``UHOP_DISABLE=1`` the function is returned as is.
    """
    if op is None:
        from uhop.compile.jit import jit

        return jit(**params)
    spec = get_op(op)  # unknown op: fail at decoration time, not at first call
    spec.normalize_params({k: v for k, v in params.items()})
    from uhop.config import POLICIES

    if policy is not None and policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")

    def wrap(fn: Callable[..., Any]) -> Any:
        if not callable(fn):
            raise TypeError(f"@uhop.optimize({op!r}) must decorate a function, got {type(fn).__name__}")
        if settings().disable:
            return fn
        return Optimized(fn, op, params, policy)

    return wrap


import atexit  # noqa: E402

atexit.register(_release_at_exit)
