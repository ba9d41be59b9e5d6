"""The backend contract: one small class per backend, one file each, registered by name.

A backend says whether it is available (and why not), yields :class:`Candidate` s for a
:class:`~uhop.problem.Problem` (a kernel template plus a config dict), and compiles a candidate
into a kernel: ``kernel(*inputs) -> output``, where ``inputs`` are ``problem.arity`` arrays of
the backend's array library (``array``) on the problem's device, and the output is a new array
of the problem's dtype and the op's output shape that aliases no input. Kernels never write to
their inputs. Compile errors are raised; the tuner turns them into ``Measurement`` values.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from uhop.problem import Problem

Kernel = Callable[..., Any]


@dataclass(frozen=True)
class Candidate:
    backend: str
    template: str
    config: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, backend: str, template: str, **config: Any) -> Candidate:
        return cls(backend, template, tuple(sorted(config.items())))

    @property
    def cfg(self) -> dict[str, Any]:
        return dict(self.config)

    @property
    def id(self) -> str:
        cfg = ",".join(f"{k}={v}" for k, v in self.config)
        return f"{self.backend}/{self.template}" + (f"{{{cfg}}}" if cfg else "")

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "template": self.template, "config": dict(self.config)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Candidate:
        return cls.of(d["backend"], d["template"], **d.get("config", {}))


def needs_elementwise_forms(problem: Problem) -> bool:
    """An elementwise problem whose inputs broadcast, are of mixed dtypes, or whose result is
    reduced (see ``Backend.elementwise_forms``)."""
    if problem.op != "elementwise":
        return False
    p = problem.param
    return bool(p.get("bcast")) or bool(p.get("dtypes")) or p.get("reduce", "none") != "none"


def input_dtypes_supported(problem: Problem, dtypes: Sequence[str]) -> bool:
    """Whether every input's dtype (:meth:`~uhop.ops.base.Op.input_dtypes`) is in ``dtypes``."""
    return all(d in dtypes for d in problem.spec.input_dtypes(problem.dtype, problem.param, problem.arity))


class Backend(ABC):
    name: ClassVar[str]
    #: array library the kernels take and return: "numpy" or "torch"
    array: ClassVar[str] = "numpy"
    #: device kinds served: "cpu", "cuda"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    #: a vendor/library path (BLAS, cuBLAS, cuDNN): the "library baseline" in benchmarks
    vendor: ClassVar[bool] = False
    #: generated code from UHOP's own templates runs in-process; untrusted code never does
    trusted: ClassVar[bool] = True
    ops: ClassVar[tuple[str, ...]] = ()
    #: its elementwise kernels take inputs that broadcast (row vectors, scalars), inputs of mixed
    #: dtypes (each loaded in its own), and reduce over the last dim (``bcast`` / ``dtypes`` /
    #: ``reduce`` params); else only same-shape, same-dtype chains
    elementwise_forms: ClassVar[bool] = False
    #: modules (besides the backend's own) whose source determines the kernels: hashed into every
    #: stored entry's content hash, so editing a kernel module invalidates what was tuned with it
    source_modules: ClassVar[tuple[str, ...]] = ()
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float64")
    #: seconds one candidate usually takes to compile, validate and time before any was measured
    #: (the tuner's budget planning: a JIT compiler's first candidate is not free)
    eval_s: ClassVar[float] = 0.3
    #: runs generated native code (JIT-compiled kernels) that can kill its process: first-use
    #: tuning measures it in the isolation worker (``UHOP_ISOLATE=auto``), GPU or not
    crash_prone: ClassVar[bool] = False
    #: ``compile`` in another process fills an on-disk cache this process then loads from (numba,
    #: IREE): tuning builds these candidates ahead in parallel (:mod:`uhop.tune.precompile`)
    precompiles: ClassVar[bool] = False

    def prebuild(self, candidate: Candidate, problem: Problem) -> None:
        """What a precompile process does for ``candidate`` (:mod:`uhop.tune.precompile`): by
        default ``compile``, which fills the backend's on-disk cache; a backend whose compile
        happens at the first launch (Triton) launches it once."""
        self.compile(candidate, problem)

    @functools.cached_property
    def availability(self) -> tuple[bool, str]:
        """(available, reason). Reason is one line: why not, or what was found."""
        try:
            return self._probe()
        except ModuleNotFoundError as exc:  # an optional package is absent: say what to install
            from uhop.components import install_hint

            return False, f"{exc.name or exc} not installed: {install_hint(exc.name)}"
        except Exception as exc:  # a broken optional install must not break UHOP
            return False, f"{type(exc).__name__}: {exc}"

    @property
    def available(self) -> bool:
        return self.availability[0]

    #: modules :attr:`installed` looks for without importing them (empty: only the full probe knows)
    requires: ClassVar[tuple[str, ...]] = ()

    @property
    def installed(self) -> bool:
        """A cheap availability answer for code that will not run this backend's kernels in this
        process (a tuning run that evaluates every candidate in the isolation worker): its
        libraries are present, found without importing them (torch takes 1-2 s and 300 MB to
        import, which a numpy caller's process should not pay for a kernel it may never serve).
        The full probe (:attr:`available`) where it ran already or the backend names no modules."""
        if "availability" in self.__dict__ or not self.requires:
            return self.available
        import importlib.util

        try:
            return all(importlib.util.find_spec(m) is not None for m in self.requires)
        except (ImportError, ValueError):
            return False

    def _probe(self) -> tuple[bool, str]:
        return True, "built in"

    def supports(self, problem: Problem) -> bool:
        return (
            problem.op in self.ops
            and problem.dtype in self.dtypes
            and problem.device.split(":")[0] in self.devices
            and (self.elementwise_forms or not needs_elementwise_forms(problem))
            and input_dtypes_supported(problem, self.dtypes)
        )

    @abstractmethod
    def candidates(self, problem: Problem) -> Sequence[Candidate]:
        """Configs worth trying for ``problem``, best guess first (the ``fast`` policy's pick)."""

    def space(self, problem: Problem) -> Any:
        """A typed :class:`uhop.space.SearchSpace` for ``problem``, or None: the search strategies
        then explore :meth:`candidates` as a flat list."""
        return None

    @abstractmethod
    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        """A kernel for ``problem`` (raise on failure; the tuner records it)."""

    def synchronize(self, device: str) -> None:  # noqa: B027 - optional hook, CPU backends need none
        """Wait for all work on ``device`` (GPU backends; timing calls it)."""

    def to_native(self, x: Any, device: str) -> Any:
        """Convert a numpy array or torch tensor to this backend's array library (zero-copy on CPU)."""
        return convert(x, self.array, device)


def convert(x: Any, array: str, device: str = "cpu") -> Any:
    if x is None:
        return None
    if array == "numpy":
        if hasattr(x, "detach") and not isinstance(x, __import__("numpy").ndarray):
            return x.detach().cpu().numpy()
        return x
    if array == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            return x if str(x.device) == device or device == "cpu" and x.device.type == "cpu" else x.to(device)
        return torch.from_numpy(x).to(device) if device != "cpu" else torch.from_numpy(x)
    raise ValueError(f"unknown array library {array!r}")
