"""Sandboxed validation of untrusted kernels (generated, contributed or searched).

* :mod:`~uhop.sandbox.kernelfile` — the kernel file format and the static (AST) pre-check;
* :mod:`~uhop.sandbox.worker` — the sandboxed worker process (bubblewrap, seccomp, rlimits);
* :mod:`~uhop.sandbox.check` — the hardened validator, run in the parent;
* :mod:`~uhop.sandbox.contain` — crash containment (fork probe) for trusted in-process kernels.

``check_file(path)`` is the one call most users need; ``uhop kernel check FILE`` wraps it.
"""

from __future__ import annotations

from uhop.sandbox.check import CATEGORIES, SHAPES, CheckResult, check, check_file
from uhop.sandbox.kernelfile import KernelFile, KernelFileError, StaticPolicy
from uhop.sandbox.kernelfile import load as load_kernel_file
from uhop.sandbox.worker import Limits, SandboxFault, SandboxUnavailable, resolve_isolation

__all__ = [
    "CATEGORIES", "SHAPES", "CheckResult", "KernelFile", "KernelFileError", "Limits", "SandboxFault",
    "SandboxUnavailable", "StaticPolicy", "check", "check_file", "load_kernel_file", "resolve_isolation",
]  # fmt: skip
