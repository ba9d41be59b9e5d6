"""Candidate kernel files: the format (see ``docs/kernel_format.md``) and the static pre-check.

A kernel file is a Python module with module-level literals ``OP`` (required), ``PARAMS``,
``DTYPES``, ``ARRAY``, ``DEVICE`` and ``TOOLS`` (optional) and a function ``run(*inputs)``. The parent
process reads the literals from the syntax tree and never imports the file: only the sandbox
worker does (:mod:`uhop.sandbox.worker`).

The static check is a first, cheap filter (forbidden imports, calls, attributes, monkeypatching).
It is *not* the security boundary: Python offers too many ways around any such check (frame
objects, loaders, ctypes through a library). The OS-level sandbox is the boundary; this check
only turns the obvious cases into a clear ``forbidden`` verdict before a process is started.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

#: Top-level packages a kernel may import (``uhop kernel check --allow-import`` adds more).
DEFAULT_IMPORTS: frozenset[str] = frozenset(
    {
        "__future__", "numpy", "math", "cmath", "torch", "triton", "numba", "functools", "itertools",
        "operator", "typing", "dataclasses", "collections", "time",
    }
)  # fmt: skip
#: Sub-modules refused even under an allowed package: they compile/load native code or reach
#: the network or the file system.
DENIED_MODULES: frozenset[str] = frozenset(
    {
        "numpy.ctypeslib", "numpy.distutils", "numpy.f2py", "numpy.lib.format", "numpy.testing",
        "torch.utils.cpp_extension", "torch.hub", "torch.distributed", "torch.multiprocessing",
        "torch.package", "triton.runtime.build", "numba.pycc",
    }
)  # fmt: skip
#: Builtins a kernel may not call or name.
DENIED_BUILTINS: frozenset[str] = frozenset(
    {
        "eval", "exec", "compile", "__import__", "open", "input", "breakpoint", "globals", "locals",
        "vars", "getattr", "setattr", "delattr", "exit", "quit", "help", "__builtins__", "__loader__",
        "__spec__", "memoryview",
    }
)  # fmt: skip
#: Attribute names that reach files, the environment, native loaders or interpreter frames.
DENIED_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "ctypeslib", "loads", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt",
        "fromfile", "tofile", "memmap", "DataSource", "load_library", "cpp_extension", "system", "popen",
        "environ", "getenv", "hub", "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "gi_frame",
        "gi_code", "cr_frame", "ag_frame", "tb_frame", "co_code", "func_globals", "setrecursionlimit",
        # modules reachable as attributes of allowed ones (typing.sys, numpy's internals, ...)
        "sys", "os", "modules", "builtins", "importlib", "subprocess", "ctypes", "mmap", "gc", "inspect",
        "socket", "shutil", "pathlib", "signal", "threading", "multiprocessing",
    }
)  # fmt: skip
#: Attributes refused on numpy and torch (``np.load`` unpickles; ``tl.load`` is fine).
DENIED_ARRAY_ATTRIBUTES: frozenset[str] = frozenset({"load", "save"})
#: Dunder attributes that are harmless (everything else ``__x__`` is refused).
ALLOWED_DUNDERS: frozenset[str] = frozenset({"__init__", "__name__", "__doc__", "__call__", "__len__"})

ARRAYS = ("numpy", "torch")
DEVICES = ("cpu", "cuda")


class KernelFileError(ValueError):
    """The file is not a valid kernel file; ``category`` is ``bad-file`` or ``forbidden``."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(f"{category}: {reason}")
        self.category = category
        self.reason = reason


@dataclass(frozen=True)
class StaticPolicy:
    """What the static pre-check allows. ``enabled=False`` skips it (tests of the OS layer)."""

    imports: frozenset[str] = DEFAULT_IMPORTS
    denied_modules: frozenset[str] = DENIED_MODULES
    denied_builtins: frozenset[str] = DENIED_BUILTINS
    denied_attributes: frozenset[str] = DENIED_ATTRIBUTES
    enabled: bool = True

    def allowing(self, modules: Iterable[str]) -> StaticPolicy:
        return replace(self, imports=self.imports | frozenset(m.strip() for m in modules if m.strip()))


@dataclass(frozen=True)
class KernelFile:
    """A parsed kernel file. ``sha256`` is the hex digest of the exact bytes (the store's
    content hash for a user kernel; the same bytes give the same hash on every machine)."""

    path: Path
    source: str
    sha256: str
    op: str
    params: dict[str, Any] = field(default_factory=dict)
    dtypes: tuple[str, ...] = ("float32", "float64")
    array: str = "numpy"
    device: str = "cpu"
    tools: bool = False

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def needs_tools(self) -> bool:
        """Does its worker need the tool broker (Triton's ptxas and C compiler)? CUDA files
        always (Triton compiles for the GPU with them); CPU files that declare ``TOOLS = True``."""
        return self.tools or self.device == "cuda"

    def matches(self, op: str, dtype: str, params: dict[str, Any], device: str = "cpu") -> bool:
        """Does this file implement ``op`` for ``dtype``, ``params`` and the device kind?"""
        if op != self.op or dtype not in self.dtypes or device.split(":")[0] != self.device:
            return False
        return all(params.get(k) == v for k, v in self.params.items())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(path: str | Path, policy: StaticPolicy | None = None) -> KernelFile:
    """Read, parse and statically check a kernel file. Raises :class:`KernelFileError`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KernelFileError("bad-file", f"cannot read {p}: {exc.strerror or exc}") from None
    return parse(data, p, policy)


def parse(data: bytes, path: Path, policy: StaticPolicy | None = None) -> KernelFile:
    policy = policy or StaticPolicy()
    try:
        source = data.decode("utf-8")
        tree = ast.parse(source, filename=str(path))
    except (UnicodeDecodeError, SyntaxError, ValueError) as exc:
        raise KernelFileError("bad-file", f"{path.name} is not valid Python: {exc}") from None
    consts = _module_literals(tree)
    op = consts.get("OP")
    if not isinstance(op, str):
        raise KernelFileError("bad-file", 'the file must declare the op it implements, e.g. OP = "matmul"')
    from uhop.ops import REGISTRY

    if op not in REGISTRY:
        raise KernelFileError("bad-file", f"OP = {op!r} is not a known op; known: {', '.join(sorted(REGISTRY))}")
    if not any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body):
        raise KernelFileError("bad-file", "the file must define a module-level function run(*inputs)")
    params = consts.get("PARAMS", {})
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise KernelFileError("bad-file", f"PARAMS must be a dict literal of str keys, got {params!r}")
    try:
        params = REGISTRY[op].normalize_params(params) if params else {}
        params = {k: v for k, v in params.items() if k in consts.get("PARAMS", {})}
    except Exception as exc:
        raise KernelFileError("bad-file", f"PARAMS: {exc}") from None
    dtypes = consts.get("DTYPES", ("float32", "float64"))
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    # bfloat16 is not offered: validation data crosses the boundary as numpy, which has no bfloat16.
    allowed = [d for d in REGISTRY[op].dtypes if d != "bfloat16"]
    if not isinstance(dtypes, (tuple, list)) or not dtypes or not set(dtypes) <= set(allowed):
        raise KernelFileError("bad-file", f"DTYPES must be a tuple of {allowed}, got {dtypes!r}")
    array = consts.get("ARRAY", "numpy")
    if array not in ARRAYS:
        raise KernelFileError("bad-file", f"ARRAY must be one of {list(ARRAYS)}, got {array!r}")
    device = consts.get("DEVICE", "cpu")
    if device not in DEVICES:
        raise KernelFileError("bad-file", f"DEVICE must be one of {list(DEVICES)}, got {device!r}")
    tools = consts.get("TOOLS", False)
    if not isinstance(tools, bool):
        raise KernelFileError("bad-file", f"TOOLS must be True or False, got {tools!r}")
    if policy.enabled:
        problem = _first_violation(tree, policy)
        if problem:
            raise KernelFileError("forbidden", problem)
    return KernelFile(path, source, sha256_bytes(data), op, params, tuple(dtypes), array, device, tools)


def _module_literals(tree: ast.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("OP", "PARAMS", "DTYPES", "ARRAY", "DEVICE", "TOOLS"):
                try:
                    out[name] = ast.literal_eval(node.value)
                except ValueError:
                    raise KernelFileError("bad-file", f"{name} must be a literal, line {node.lineno}") from None
    return out


def _first_violation(tree: ast.Module, policy: StaticPolicy) -> str | None:
    """One line naming the first forbidden construct (with its line), or None."""
    modules: dict[str, str] = {}  # local name -> imported module
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    return f"relative import on line {node.lineno}"
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                names = [a.name for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top not in policy.imports:
                    return f"import of {top!r} on line {node.lineno} (allowed: {', '.join(sorted(policy.imports))})"
                denied = [d for d in policy.denied_modules if name == d or name.startswith(d + ".")]
                if denied:
                    return f"import of {name!r} on line {node.lineno}"
            for a in node.names:
                if isinstance(node, ast.ImportFrom) and (
                    a.name in policy.denied_attributes
                    or a.name in policy.denied_builtins
                    or a.name.startswith("_")
                    or (a.name in DENIED_ARRAY_ATTRIBUTES and (node.module or "").split(".")[0] in ("numpy", "torch"))
                ):
                    return f"import of {node.module}.{a.name} on line {node.lineno}"
                full = a.name if isinstance(node, ast.Import) else f"{node.module}.{a.name}"
                modules[(a.asname or a.name).split(".")[0]] = full if a.asname else full.split(".")[0]
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Name) and node.id in policy.denied_builtins:
            return f"use of {node.id!r} on line {line}"
        if isinstance(node, ast.Attribute):
            a = node.attr
            if a in policy.denied_attributes:
                return f"attribute {a!r} on line {line}"
            root = modules.get(_root_name(node) or "", "")
            if a in DENIED_ARRAY_ATTRIBUTES and root.split(".")[0] in ("numpy", "torch"):
                return f"attribute {a!r} of {root} on line {line}"
            if a.startswith("__") and a.endswith("__") and a not in ALLOWED_DUNDERS:
                return f"dunder attribute {a!r} on line {line}"
            if a.startswith("_") and not a.startswith("__"):
                return f"private attribute {a!r} on line {line}"
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                root = _root_name(t)
                if isinstance(t, (ast.Attribute, ast.Subscript)) and root in modules:
                    return f"assignment to an attribute of module {root!r} on line {line} (monkeypatching)"
        if isinstance(node, (ast.Global, ast.Nonlocal)) and any(n in modules for n in node.names):
            return f"rebinding module name on line {line}"
    return None


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None
