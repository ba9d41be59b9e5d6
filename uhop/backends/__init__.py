"""Backend registry: name -> "module:Class", imported lazily so a missing optional dependency
costs nothing until the backend is asked for (and then reports a one-line reason).

Adding a backend is one new file and one line here.
"""

from __future__ import annotations

import importlib

from uhop.backends.base import Backend, Candidate, Kernel, convert
from uhop.problem import Problem

REGISTRY: dict[str, str] = {
    "numpy": "uhop.backends.numpy:NumpyBackend",
    "torch": "uhop.backends.torch:TorchBackend",
    "numba": "uhop.backends.numba:NumbaBackend",
    "triton": "uhop.backends.triton:TritonBackend",
    "cuda": "uhop.backends.cuda:CudaBackend",
    "iree": "uhop.backends.iree:IreeBackend",
    "opencl": "uhop.backends.opencl:OpenCLBackend",
    "user": "uhop.backends.user:UserKernelBackend",
}

_instances: dict[str, Backend] = {}


def register(name: str, target: str) -> None:
    """Add a backend defined outside UHOP: ``register("mylib", "mypkg.backend:MyBackend")``.

    The target is imported lazily like the built-in ones, and worker processes (isolated tuning)
    receive the registry, so the module must be importable there (on ``sys.path``)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    mod, sep, cls = target.partition(":")
    if not (mod and sep and cls):
        raise ValueError(f"target must look like 'package.module:Class', got {target!r}")
    REGISTRY[name] = target
    _instances.pop(name, None)


class _Missing(Backend):
    """Stands in for a backend whose module failed to import."""

    ops = ()

    def __init__(self, name: str, reason: str) -> None:
        self.name = name  # type: ignore[misc]
        self._reason = reason

    def _probe(self) -> tuple[bool, str]:
        return False, self._reason

    def candidates(self, problem):  # pragma: no cover - never available
        return []

    def compile(self, candidate, problem):  # pragma: no cover
        raise RuntimeError(self._reason)


def get(name: str) -> Backend:
    if name not in _instances:
        target = REGISTRY.get(name)
        if target is None:
            raise KeyError(f"unknown backend {name!r}; known: {', '.join(REGISTRY)}")
        mod_name, cls_name = target.split(":")
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
            _instances[name] = cls()
        except ImportError as exc:
            _instances[name] = _Missing(name, f"not importable: {exc}")
    return _instances[name]


def all_backends() -> list[Backend]:
    return [get(n) for n in REGISTRY]


def for_problem(problem: Problem, allow: tuple[str, ...] = (), *, lazy: bool = False) -> list[Backend]:
    """Available backends that support ``problem`` (restricted to ``allow`` if given); ``lazy``:
    installed ones (:attr:`Backend.installed`, no import) where the full probe has not run."""
    out = []
    for name in REGISTRY:
        if allow and name not in allow:
            continue
        b = get(name)
        try:  # supports() first: it is cheap, while availability imports the backend's library
            ok = b.supports(problem) and (b.installed if lazy else b.available)
        except Exception:  # a broken optional install must not break the others
            ok = False
        if ok:
            out.append(b)
    return out


__all__ = ["Backend", "Candidate", "Kernel", "REGISTRY", "all_backends", "convert", "for_problem", "get", "register"]
