"""Optional components: what each enables and the exact install line when it is missing.

One row per optional Python package in :data:`COMPONENTS`. ``uhop info`` lists them all, and the
CLI turns a ``ModuleNotFoundError`` for one of them into a one-line message naming the extra to
install. Adding a component (a new backend's package) is one line here and one extra in
``pyproject.toml``. Nothing is imported to find out: the check reads package metadata, so
``uhop info`` stays fast and a broken package cannot take it down.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    """An optional package: ``module`` is what UHOP imports, ``dists`` the distributions that
    provide it (first installed one gives the version), ``extra`` the ``uhop[...]`` extra."""

    module: str
    dists: tuple[str, ...]
    extra: str
    enables: str

    @property
    def pip(self) -> str:
        return f"pip install 'uhop[{self.extra}]'"

    def version(self) -> str | None:
        """Installed version, or None when the module cannot be found."""
        try:
            if importlib.util.find_spec(self.module.split(".")[0]) is None:
                return None
            if "." in self.module and importlib.util.find_spec(self.module) is None:
                return None
        except (ImportError, ValueError):
            return None
        for d in self.dists:
            try:
                return md.version(d)
            except md.PackageNotFoundError:
                continue
        return "installed"


COMPONENTS: tuple[Component, ...] = (
    Component("numba", ("numba",), "cpu", "numba backend: generated fused CPU kernels (the demo's fast path)"),
    Component("scipy", ("scipy",), "cpu", "exact erf for gelu in the demo's plain numpy baseline"),
    Component("torch", ("torch",), "torch", "torch backend (eager, sdpa, compile), torch tensors, CUDA devices"),
    Component("triton", ("triton",), "gpu", "Triton GPU kernels; tool broker for sandboxed Triton files"),
    Component("pynvml", ("nvidia-ml-py",), "gpu", "GPU power and energy readings (--objectives energy)"),
    Component("iree.compiler", ("iree-base-compiler",), "mlir", "`uhop mlir` and the iree backend (compiler)"),
    Component("iree.runtime", ("iree-base-runtime",), "mlir", "the iree backend (runtime)"),
    Component("optuna", ("optuna",), "tune", "strategies evolution, nsga2, surrogate"),
    Component("cmaes", ("cmaes",), "tune", "evolution with sampler='cmaes'"),
    Component("ray", ("ray",), "distributed", "`uhop tune --executor ray` (a Ray cluster)"),
    Component("xgboost", ("xgboost-cpu", "xgboost"), "perf", "`uhop perf train | predict` (the cost model)"),
    Component("psycopg", ("psycopg",), "perf", "UHOP_STORE=postgresql://... (shared store, job queue)"),
    Component("pyarrow", ("pyarrow",), "perf", "`uhop perf export --format parquet`"),
    Component("pyseccomp", ("pyseccomp",), "sandbox", "seccomp filter for untrusted kernel files"),
    Component("pyopencl", ("pyopencl",), "opencl", "OpenCL backend"),
)


def for_module(name: str | None) -> Component | None:
    """The component providing module ``name`` (``iree.compiler.tools`` -> iree-base-compiler)."""
    if not name:
        return None
    best = None
    for c in COMPONENTS:
        if name == c.module or name.startswith(c.module + ".") or c.module.startswith(name + "."):
            if best is None or len(c.module) > len(best.module):
                best = c
    if best is None:
        top = name.split(".")[0]
        best = next((c for c in COMPONENTS if c.module.split(".")[0] == top), None)
    return best


def install_hint(name: str | None) -> str:
    """``"pip install 'uhop[perf]'"`` for a missing module of a component, else ``"pip install NAME"``."""
    c = for_module(name)
    if c is not None:
        return c.pip
    return f"pip install {name.split('.')[0]}" if name else "pip install the missing package"


def status() -> list[dict[str, str | None]]:
    """Every component: module, extra, installed version (None if missing), install line, what it enables."""
    return [
        {"component": c.module, "extra": c.extra, "version": c.version(), "install": c.pip, "enables": c.enables}
        for c in COMPONENTS
    ]
