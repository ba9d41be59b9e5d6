"""The hardened validator for untrusted kernel files (``uhop kernel check``, the ``user`` backend).

Everything that decides acceptance happens here, in the parent: the float64 reference
(``ValidationSet``), the comparison (``uhop.measure.validate.compare``), the clock. The sandboxed
worker only runs the candidate and ships outputs back as plain arrays; its own reports are used
only to reject. Per candidate:

1. static pre-check (:mod:`uhop.sandbox.kernelfile`), then a fresh worker from the warm pool;
2. at least two shapes per op, ``trials`` fresh random input sets per shape drawn from a secret
   seed (several distributions, and NaN/±inf where the op defines them: :mod:`.inputs`); each
   set is run twice (same inputs), the output memory poisoned before each call;
3. each output must be a plain array of the right shape and dtype, aliasing no input, match the
   reference, leave the inputs unmodified, equal-within-tolerance on the repeat call, and differ
   from the previous set's output (a cached or stale result fails);
4. timing: batches of back-to-back calls over rotating input sets, timed on the parent's clock
   (minus the measured empty round trip), the last output of each batch re-validated, and a
   checked call on brand-new inputs between batches.
"""

from __future__ import annotations

import functools
import math
import secrets
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uhop import metrics
from uhop.measure.validate import DISTRIBUTIONS, Trial, ValidationSet, compare, reference_on, round_inputs
from uhop.ops import get as get_op
from uhop.ops.base import as_f64
from uhop.problem import Problem, cuda_device_count
from uhop.sandbox.child import digest as child_digest
from uhop.sandbox.inputs import draw, validation_set
from uhop.sandbox.kernelfile import KernelFile, KernelFileError, StaticPolicy, load
from uhop.sandbox.worker import Limits, SandboxFault, SandboxUnavailable, Worker, WorkerPool, pool

_perf = time.perf_counter

#: Small, prime-ish validation shapes per op (``op.parse_shape`` text): two at least, so a kernel
#: that hard-codes one shape fails, and sizes that are no multiple of common tile sizes.
SHAPES: dict[str, tuple[str, ...]] = {
    "matmul": ("31x37x29", "67x53x71"),
    "softmax": ("37x61", "101x127"),
    "log_softmax": ("37x61", "101x127"),
    "layernorm": ("37x61", "101x127"),
    "rmsnorm": ("37x61", "101x127"),
    "elementwise": ("1031", "4099"),
    "attention": ("1x2x17x16", "2x3x37x32"),
    "conv2d": ("1x3x13x11x5x3x3", "2x4x17x19x7x3x3"),
    "embedding": ("97x13x31", "211x29x67"),  # V x D x N (table rows, width, indices)
    "gated_mlp": ("31x37x29", "67x53x71"),  # M x N x K
}

CATEGORIES = (
    "timeout", "memory", "crash", "forbidden", "wrong-result", "partial-write", "stale-output",
    "input-mutated", "nondeterministic", "bad-output", "disk", "bad-file", "timing-fault",
)  # fmt: skip


@dataclass(frozen=True)
class CheckResult:
    """Outcome of checking one kernel file. ``median_s`` is the per-call time on the largest
    validation shape (parent clock, inf when rejected or not timed); ``overhead_s`` is the
    sandbox cost of this evaluation beyond the kernel's own time (start, load, transfers)."""

    ok: bool
    category: str = "ok"
    reason: str = ""
    path: str = ""
    op: str = ""
    sha256: str = ""
    median_s: float = math.inf
    max_err: float = 0.0
    layers: tuple[str, ...] = ()
    overhead_s: float = math.nan
    shapes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        if not self.ok:
            return f"rejected: {self.category}: {self.reason}"
        t = f"{self.median_s * 1e6:.1f} us" if math.isfinite(self.median_s) else "not timed"
        return f"ok: {self.op} {t} per call (max err {self.max_err:.2g}; sandbox: {'+'.join(self.layers)})"

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["layers"], d["shapes"] = list(self.layers), list(self.shapes)
        for k in ("median_s", "overhead_s", "max_err"):
            d[k] = d[k] if math.isfinite(d[k]) else None
        return d


def problems_for(kf: KernelFile, dtype: str | None = None, params: Mapping[str, Any] | None = None,
                 shapes: Sequence[str] | None = None) -> list[Problem]:  # fmt: skip
    """The validation problems for a kernel file: its op at each shape, dtype and params."""
    spec = get_op(kf.op)
    dtype = dtype or ("float32" if "float32" in kf.dtypes else kf.dtypes[0])
    if dtype not in kf.dtypes:
        raise KernelFileError("bad-file", f"the file declares DTYPES={list(kf.dtypes)}; {dtype} was asked for")
    p = {**kf.params, **(params or {})}
    device = "cuda:0" if kf.device == "cuda" else "cpu"  # inputs still travel as numpy
    out = []
    for s in shapes or SHAPES[kf.op]:
        dims = spec.parse_shape(s)
        g = (p.get("kv_groups") or 1) if kf.op == "attention" else 1
        if g > 1 and shapes is None:  # grouped-query attention: whole groups of query heads, two
            dims["B"] = g * max(2, dims["B"] // g)  # k/v heads at least (one hides a wrong group index)
        out.append(Problem.make(kf.op, dims, dtype, p, device=device))
    return out


def _fresh_trial(problem: Problem) -> Trial:
    return ValidationSet(problem, trials=1).trials[0]


def _wrong_mask(out: np.ndarray, ref: np.ndarray, problem: Problem) -> np.ndarray:
    rtol, atol = problem.spec.tolerance(problem.dtype, problem.dim, problem.param)
    got = out.astype(np.float64)
    with np.errstate(invalid="ignore"):
        ok = (np.abs(got - ref) <= atol + rtol * np.abs(ref)) | (np.isnan(ref) & np.isnan(got)) | (got == ref)
    return ~ok


def _is_partial(out: np.ndarray, ref: np.ndarray, problem: Problem, prev: np.ndarray | None) -> bool:
    """Part of the output right, the rest never written. Unwritten memory is poison (all-0xFF
    bytes), zero, the previous output, or allocator garbage; garbage has no value pattern, so the
    shape of the wrong region decides: whole rows, whole columns, or a few contiguous runs."""
    wrong = _wrong_mask(out, ref, problem)
    n_wrong = int(wrong.sum())
    if n_wrong == 0 or n_wrong > 0.99 * wrong.size:  # a few right by chance is not a partial write
        return False
    raw = np.ascontiguousarray(out).view(np.uint8).reshape(*out.shape, out.dtype.itemsize)
    untouched = np.all(raw == 0xFF, axis=-1) | (out == 0)
    if prev is not None and prev.shape == out.shape:
        untouched |= out == prev
    if np.all(untouched):  # nothing written at all (all zeros, say): right only where ~0 by chance
        return False
    if np.all(untouched[wrong]):
        return True
    w2 = wrong.reshape(-1, wrong.shape[-1]) if wrong.ndim else wrong.reshape(1, 1)
    # whole rows (a skipped block of rows) or whole columns (a missed tail tile); garbage that
    # lands within tolerance of the reference by chance (near-zero reference values) leaves a
    # few right elements inside the region, so a row or column counts when 90% of it is wrong.
    # The region must leave some rows (columns) out: wrong everywhere but at a few near-zero
    # values (a result off by 1%) is a wrong result, not a partial write (a CI run saw it
    # classified so when 98.7% of a 1147-element output was wrong)
    for region in (np.broadcast_to((w2.mean(axis=1) > 0.9)[:, None], w2.shape),
                   np.broadcast_to(w2.mean(axis=0) > 0.9, w2.shape)):  # fmt: skip
        if region.any() and not region.all() and not (w2 & ~region).any():
            return True
    flat = wrong.reshape(-1).astype(np.int8)
    runs = int(np.count_nonzero(np.diff(flat) == 1)) + int(flat[0])
    return runs <= 4


class Evaluation:
    """One candidate in one worker: checked calls and timed batches (raises ``SandboxFault``)."""

    def __init__(self, worker: Worker, problem: Problem) -> None:
        self.w = worker
        self.problem = problem
        self.prev: tuple[np.ndarray, np.ndarray] | None = None  # (output, reference) of the last set
        self.max_err = 0.0

    def set_problem(self, problem: Problem) -> None:
        self.problem, self.prev = problem, None

    def _reply_cap(self, trial: Trial) -> int:
        out = trial.reference.size * 8
        return 4 * (out + sum(x.nbytes for x in trial.inputs)) + (1 << 20)

    def put(self, slot: int, trial: Trial) -> None:
        self.w.request({"cmd": "put", "slot": slot}, trial.inputs)

    def check(self, trial: Trial, slot: int = 0, *, when: str = "") -> None:
        """Run ``trial`` twice in the worker and judge both outputs here."""
        p = self.problem
        out_nbytes = trial.reference.size * np.dtype(p.dtype if p.dtype != "bfloat16" else "float32").itemsize
        reply, arrays = self.w.request(  # the inputs travel with the call: one round trip
            {"cmd": "call", "slot": slot, "repeat": 2, "return_inputs": True, "out_nbytes": out_nbytes,
             "max_out_bytes": 2 * trial.reference.size * 8},
            trial.inputs, max_reply=self._reply_cap(trial),
        )
        n_out = 2
        if len(arrays) != n_out + len(trial.inputs):
            raise SandboxFault("bad-output", f"worker returned {len(arrays)} arrays, expected {n_out + len(trial.inputs)}")
        o1, o2, after = arrays[0], arrays[1], arrays[n_out:]
        self.judge(o1, trial, when=when, repeat=o2)
        names = p.spec.arg_names(len(trial.inputs))
        for name, x, y in zip(names[: len(after)], trial.inputs, after, strict=True):
            if x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
                raise SandboxFault("input-mutated", f"input {name} was modified by run(){when}")

    def judge(self, out: np.ndarray, trial: Trial, *, when: str = "", repeat: np.ndarray | None = None) -> None:
        p, ref = self.problem, trial.reference
        v = compare(out, ref, p)
        if v.status == "bad-output":
            raise SandboxFault("bad-output", v.reason + when)
        prev_out, prev_ref = self.prev if self.prev is not None else (None, None)
        if v.ok:
            if repeat is not None:
                r = compare(repeat, ref, p)
                if not r.ok:
                    raise SandboxFault("nondeterministic", f"same inputs, second call wrong: {r.reason}{when}")
            if (prev_out is not None and prev_out.shape == out.shape and np.array_equal(prev_out, out)
                    and not np.array_equal(prev_ref, ref)):  # fmt: skip
                raise SandboxFault("stale-output", f"new inputs gave the previous call's output{when}")
            self.max_err = max(self.max_err, v.max_err)
            self.prev = (out, ref)
            return
        if prev_ref is not None and prev_ref.shape == ref.shape and compare(out, prev_ref, p).ok:
            raise SandboxFault("stale-output", f"returned the previous inputs' result for new inputs{when}")
        # wrong where the reference is NaN or inf: the special values were mishandled (finite
        # there), which no shape of the wrong region makes a partial write
        special = bool((~np.isfinite(ref) & _wrong_mask(out, ref, p)).any())
        if not special and _is_partial(out, ref, p, prev_out):
            n = int(_wrong_mask(out, ref, p).sum())
            raise SandboxFault("partial-write", f"{n} of {out.size} output elements never written{when}")
        if repeat is not None:
            r = compare(repeat, ref, p)
            if r.ok or not np.allclose(out, repeat, equal_nan=True, rtol=1e-6, atol=0):
                raise SandboxFault("nondeterministic", f"two calls on the same inputs differ ({v.reason}){when}")
        raise SandboxFault("wrong-result", v.reason + when)

    def calibrate(self, shape: tuple[int, ...], dtype: str, reps: int = 3) -> tuple[float, float]:
        """Before any candidate code runs in the worker (so its own clock is still trusted): the
        cost of ending a timing batch of ``n`` calls, ``a + b * n`` seconds. ``b`` (copying and
        hashing one output) is timed by the worker itself, ``a`` (the request, the side-effect
        check, the reply) is the parent's round trip less that; minimum of ``reps`` each, so
        only what a trusted worker needs at least is later subtracted from a candidate's time."""
        dt = "float32" if dtype == "bfloat16" else dtype
        a = b = math.inf
        for _ in range(reps):
            t0 = _perf()
            reply, _ = self.w.request({"cmd": "emit", "n": 1, "shape": list(shape), "dtype": dt})
            a = min(a, _perf() - t0 - float(reply.get("child_s", 0.0)))
            reply, _ = self.w.request({"cmd": "emit", "n": 16, "shape": list(shape), "dtype": dt})
            b = min(b, float(reply.get("child_s", 0.0)) / 16)
        self.transport = (max(a, 0.0), max(b, 0.0))
        return self.transport

    def _fresh_inputs(self, n: int) -> list[list[np.ndarray]]:
        rng = np.random.default_rng(secrets.randbits(63))
        sets = []
        for _ in range(n):
            xs = draw(self.problem, rng, DISTRIBUTIONS[int(rng.integers(len(DISTRIBUTIONS)))])
            sets.append(round_inputs(self.problem, xs))
        return sets

    def time(self, *, repeat: int = 5, min_time_s: float = 0.05, sample: int = 3,
             set_budget_bytes: int = 8 << 20) -> dict[str, float]:  # fmt: skip
        """Per-call time on the parent's clock. Each batch runs the candidate once on each of
        ``calls`` brand-new input sets (no repeats: a result cache cannot hit), gets every output
        back, and ``sample`` of them, picked here after the reply, are checked against the
        float64 reference (computing only some calls, or the last, fails): the worker commits to
        every output by its digest in the timed reply and reveals the sample afterwards. The cost
        of the commitment, calibrated before load (:meth:`calibrate`), is subtracted, down to no
        less than the worker's own time for the calls; a median below the roofline floor of the
        problem on this hardware is a ``timing-fault``."""
        p = self.problem
        a, b = getattr(self, "transport", (0.0, 0.0))
        out_bytes = int(np.prod(self._out_shape())) * 8
        shapes = p.spec.shapes_from_dims(p.dim, p.param, p.arity or len(p.spec.inputs))
        set_bytes = sum(int(np.prod(sh)) for sh in shapes) * 8 + out_bytes
        max_calls = max(1, min(10_000, set_budget_bytes // max(set_bytes, 1)))
        rng = np.random.default_rng(secrets.randbits(63))
        if p.flops() > 1e9:  # a float64 reference costs seconds here: one per batch is the sample
            sample = 1

        def batch(calls: int) -> float:
            sets = self._fresh_inputs(calls)
            self.w.request({"cmd": "put", "slot": 0, "n_sets": calls}, [x for xs in sets for x in xs], raw=True)
            t0 = _perf()
            reply, _ = self.w.request({"cmd": "bench", "slots": list(range(calls)), "max_out_bytes": out_bytes * 2},
                                      max_reply=calls * 64 + (1 << 20))  # fmt: skip
            wall = _perf() - t0
            digests = reply.get("digests")
            if not isinstance(digests, list) or len(digests) != calls:
                raise SandboxFault("bad-output", f"timing batch committed to no output for some of its {calls} calls")
            # which outputs are checked is decided now, after the worker committed to all of them
            idx = sorted(int(i) for i in rng.choice(calls, size=min(sample, calls), replace=False))
            _, outs = self.w.request({"cmd": "reveal", "idx": idx}, max_reply=len(idx) * (out_bytes * 2 + 256) + (1 << 20))
            if len(outs) != len(idx):
                raise SandboxFault("bad-output", "the timing batch's outputs were not revealed")
            for i, out in zip(idx, outs, strict=True):
                if child_digest(np.ascontiguousarray(out)) != digests[i]:
                    raise SandboxFault("wrong-result", f"call {i + 1} of {calls} while timing: the output revealed "
                                       "is not the one committed to when the batch ended")  # fmt: skip
                ref = reference_on(p, sets[i], p.device) if p.device.startswith("cuda") else None
                ref = ref if ref is not None else p.spec.reference(*[as_f64(x) for x in sets[i]], **p.param)
                self.prev = None
                self.judge(out, Trial(sets[i], ref), when=f" (call {i + 1} of {calls} while timing)")
            child = reply.get("child_s")
            if not isinstance(child, (int, float)) or not (child <= wall * 1.05 + 1e-3):  # claims more time than passed
                raise SandboxFault("crash", f"worker reported {child!r} s for a {wall:.3g} s batch")
            # never below the worker's own time for the calls: the calibrated transport is an
            # estimate, and where it overshoots (committing to a 2 MB output costs 3 ms here,
            # three times a 512 x 1000 softmax) the subtraction left 0 and an honest kernel was a
            # timing-fault. A worker can only slow itself down with this claim (it is checked
            # against the wall time above), so a cheater gains nothing from it.
            return max(wall - a - b * calls, min(float(child), wall)) / calls

        first = min(batch(1), batch(2))  # the first call of a fresh worker is slow: not the estimate
        # batches long enough that the subtracted fixed cost is at most 5% of one (noise in its
        # calibration then moves a time by a few percent, never to zero)
        per = max(min_time_s / repeat, min(20 * a, 0.1), 1e-6)
        calls = max(1, min(max_calls, int(per / max(first, 1e-7))))
        samples = []
        for r in range(repeat):
            samples.append(batch(calls))
            if samples[-1] * calls < per / 2:  # batches too short for the parent's clock: lengthen
                calls = min(max_calls, calls * 2)
            if r % 2 == 1:  # interleave a checked call on brand-new inputs
                self.prev = None
                self.check(_fresh_trial(p), slot=calls, when=" (between timing batches)")
        median = statistics.median(samples)
        floor = roofline_floor_s(p)
        if median < floor:
            raise SandboxFault("timing-fault", f"{median * 1e6:.3g} us per call is below the roofline floor "
                               f"{floor * 1e6:.3g} us of this problem on this hardware")  # fmt: skip
        return {"median_s": median, "min_s": min(samples), "calls": calls, "rtt_s": a, "per_output_s": b,
                "floor_s": floor}  # fmt: skip

    def _out_shape(self) -> tuple[int, ...]:
        p = self.problem
        shapes = p.spec.shapes_from_dims(p.dim, p.param, p.arity or len(p.spec.inputs))
        return tuple(p.spec.output_shape(shapes, p.param))


#: a measured time may undercut the manifest's roofline by this factor before it is a fault
#: (datasheet peaks are estimates, and small problems run from cache)
FLOOR_MARGIN = 0.5


@functools.lru_cache(maxsize=8)
def _manifest(device: str) -> Any:
    from uhop.hardware import get_capabilities

    try:
        return get_capabilities(device="cpu" if device == "cpu" else device)
    except Exception:
        return None


def roofline_floor_s(problem: Problem) -> float:
    """The least time one call of ``problem`` can take on this machine's manifest (``uhop/hardware``):
    FLOPs / peak compute, and bytes / peak bandwidth when the problem's bytes exceed the last-level
    cache (below that, caches outrun the memory bandwidth), times :data:`FLOOR_MARGIN`. 0 when
    the manifest has no figure."""
    caps = _manifest(problem.device.split(":")[0] if problem.device == "cpu" else problem.device)
    if caps is None:
        return 0.0
    floor = 0.0
    flops = caps.peak_flops(problem.dtype)
    if flops:
        floor = problem.flops() / flops
    bw = caps.peak_bandwidth()
    llc = max((f.value for f in (caps.caches.l3_bytes, caps.caches.l2_bytes) if f is not None), default=0)
    if bw and problem.bytes() > llc:
        floor = max(floor, problem.bytes() / bw)
    return floor * FLOOR_MARGIN


def check_file(
    path: str | Path,
    op: str | None = None,
    *,
    dtype: str | None = None,
    params: Mapping[str, Any] | None = None,
    shapes: Sequence[str] | None = None,
    trials: int = 3,
    time_it: bool = True,
    limits: Limits | None = None,
    policy: StaticPolicy | None = None,
    isolation: str = "auto",
    tools: bool | None = None,
) -> CheckResult:
    """Validate (and time) an untrusted kernel file in the sandbox at :data:`SHAPES` (or
    ``shapes``, ``op.parse_shape`` strings). Never raises for a candidate fault: every rejection
    is a ``CheckResult`` with a category and a reason. ``tools`` (default: the file's
    ``needs_tools``) starts the tool broker that runs Triton's ptxas and C compiler."""
    try:
        kf = load(path, policy)
    except KernelFileError as exc:
        return CheckResult(False, exc.category, exc.reason, str(path))
    base = dict(path=str(path), op=kf.op, sha256=kf.sha256)
    if op is not None and op != kf.op:
        return CheckResult(False, "bad-file", f"the file declares OP = {kf.op!r}, expected {op!r}", **base)
    try:
        probs = problems_for(kf, dtype, params, shapes)
    except KernelFileError as exc:
        return CheckResult(False, exc.category, exc.reason, **base)
    except Exception as exc:
        return CheckResult(False, "bad-file", f"{type(exc).__name__}: {exc}", **base)
    return check(kf, probs, trials=trials, time_it=time_it, limits=limits, isolation=isolation, tools=tools)


@metrics.observe_sandbox
def check(
    kf: KernelFile,
    problems: Sequence[Problem],
    *,
    trials: int = 3,
    time_it: bool = True,
    limits: Limits | None = None,
    isolation: str = "auto",
    workers: WorkerPool | None = None,
    tools: bool | None = None,
) -> CheckResult:
    """Validate ``kf`` on each problem (two at least, so a hard-coded shape fails) in a fresh
    worker, then time it on the last one. Never raises for a candidate fault. A candidate that
    asked the tool broker for anything outside its allowlist is ``forbidden``, whatever it did
    with the refusal (the broker reports it to this process directly)."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not problems:
        raise ValueError("problems must hold at least one Problem")
    base = dict(path=str(kf.path), op=kf.op, sha256=kf.sha256, shapes=tuple(p.describe() for p in problems))
    if kf.device == "cuda" and not cuda_device_count():  # the machine's limit, not the candidate's fault
        raise SandboxUnavailable(f"{kf.path.name} runs on CUDA (DEVICE = 'cuda'); torch sees no CUDA device on this "
                                 "machine: check it where there is a GPU")  # fmt: skip
    # the references: computed here, before any candidate code runs anywhere; several
    # distributions and scales with secret parameters (right only on [-1, 1) fails) and special
    # values where the op defines them (right only for finite inputs fails)
    rng = np.random.default_rng(secrets.randbits(63))
    vsets = [validation_set(p, trials, rng) for p in problems]
    t_start = _perf()
    tools = kf.needs_tools if tools is None else tools
    w = (workers or pool(isolation, limits, gpu=kf.device == "cuda", tools=tools)).take()
    timing: dict[str, float] = {}
    try:
        ev = Evaluation(w, problems[-1])
        if time_it:  # the transport of outputs, measured while the worker is still trusted
            ev.calibrate(ev._out_shape(), problems[-1].dtype)
        w.load(kf.source, f"kernel_{kf.sha256[:12]}.py", array=kf.array, device=kf.device, tools=tools)
        t_loaded = _perf()
        for p, vs in zip(problems, vsets, strict=True):
            ev.set_problem(p)
            for t in vs.trials:
                ev.check(t)
        if time_it:
            repeat, min_s = settings_bench()
            ev.prev = None
            ev.set_problem(problems[-1])
            timing = ev.time(repeat=repeat, min_time_s=min_s)
        w.request({"cmd": "ping"})
        refused = w.tool_refusals()
        if refused:
            raise SandboxFault("forbidden", f"asked the tool broker for more than it allows: {refused[0]}")
    except SandboxFault as exc:
        refused = w.tool_refusals()
        if refused and exc.category != "forbidden":
            exc = SandboxFault("forbidden", f"asked the tool broker for more than it allows: {refused[0]}")
        return CheckResult(False, exc.category, exc.reason, layers=tuple(w.layers), **base)  # type: ignore[arg-type]
    except Exception as exc:  # a reply the validator could not judge: still the candidate's fault
        reason = f"unjudgeable reply ({type(exc).__name__}: {exc})".splitlines()[0][:300]
        return CheckResult(False, "crash", reason, layers=tuple(w.layers), **base)  # type: ignore[arg-type]
    finally:
        w.kill()
    total = _perf() - t_start
    details = {"timing": timing, "total_s": total, "start_load_s": t_loaded - t_start, "isolation": w.isolation}
    return CheckResult(
        True, "ok", "", median_s=timing.get("median_s", math.inf), max_err=ev.max_err,
        overhead_s=t_loaded - t_start + timing.get("rtt_s", 0.0), layers=tuple(w.layers), details=details, **base,  # type: ignore[arg-type]
    )  # fmt: skip


def settings_bench() -> tuple[int, float]:
    from uhop.config import settings

    s = settings()
    return max(3, min(s.bench_repeat, 7)), s.bench_min_s
