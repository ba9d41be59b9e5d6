"""User kernels: kernel files registered with ``uhop kernel add`` (see ``docs/kernel_format.md``),
offered to the tuner as candidates for their op, and always run in the sandbox.

Registered files live under ``settings().home / "kernels"`` as ``<op>-<sha256[:16]>.py`` (the
content hash of the exact bytes; a file whose bytes no longer match its name is ignored).
``compile`` first runs the hardened validator (:func:`uhop.sandbox.check.check`) on the problem's
own shape plus a small one, then returns a :class:`SandboxedKernel`: a callable that ships the
inputs to a long-lived sandboxed worker and returns its output as a new numpy array.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from uhop.backends.base import Backend, Candidate, Kernel
from uhop.config import settings
from uhop.ops import REGISTRY as OPS
from uhop.ops import get as get_op
from uhop.problem import Problem
from uhop.sandbox.check import SHAPES, check
from uhop.sandbox.kernelfile import KernelFile, KernelFileError
from uhop.sandbox.kernelfile import load as load_file
from uhop.sandbox.worker import Limits, SandboxFault, Worker, pool, resolve_isolation


def kernels_dir() -> Path:
    return settings().home / "kernels"


def stored_name(kf: KernelFile) -> str:
    return f"{kf.op}-{kf.sha256[:16]}.py"


def add_kernel(path: str | Path) -> Path:
    """Copy a (checked) kernel file into the registry, named by its content hash. Idempotent."""
    kf = load_file(path)
    d = kernels_dir()
    d.mkdir(parents=True, exist_ok=True)
    dest = d / stored_name(kf)
    if not dest.exists():
        tmp = d / f".{dest.name}.tmp"
        tmp.write_bytes(kf.source.encode("utf-8"))
        tmp.replace(dest)  # atomic: a reader never sees half a file
    return dest


def remove_kernel(ref: str) -> list[Path]:
    """Remove registered kernels whose stored name or sha256 starts with ``ref``."""
    gone = []
    for kf in list_kernels():
        if kf.path.name.startswith(ref) or kf.sha256.startswith(ref):
            kf.path.unlink(missing_ok=True)
            gone.append(kf.path)
    return gone


def list_kernels(op: str | None = None) -> list[KernelFile]:
    """Registered kernel files (optionally of one op) whose bytes still match their name."""
    d = kernels_dir()
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.py")):
        try:
            kf = load_file(p)
        except KernelFileError:
            continue
        if p.name != stored_name(kf) or (op is not None and kf.op != op):
            continue
        out.append(kf)
    return out


class SandboxedKernel:
    """``kernel(*inputs) -> output`` running a kernel file in its own sandboxed worker.

    Inputs are numpy arrays (torch tensors are copied to numpy); the output is a fresh numpy
    array read back with ``np.load(allow_pickle=False)``. A fault (crash, timeout, forbidden
    call) raises ``RuntimeError`` naming its category and discards the worker; the next call
    starts a fresh one.
    """

    def __init__(self, kf: KernelFile, limits: Limits | None = None) -> None:
        self.kf = kf
        # A dispatch worker lives as long as the kernel is in use: RLIMIT_CPU is cumulative over
        # a process's life, so here each call is bounded by wall_s instead.
        self.limits = limits or Limits(cpu_s=7 * 24 * 3600)
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        self._finalizer: Any = None

    def _get(self) -> Worker:
        if self._worker is None or self._worker.dead:
            w = pool(limits=self.limits, gpu=self.kf.device == "cuda", tools=self.kf.needs_tools).take()
            self._worker = w
            self._finalizer = weakref.finalize(self, w.kill)
            w.load(self.kf.source, f"kernel_{self.kf.sha256[:12]}.py", array=self.kf.array, device=self.kf.device)
        return self._worker

    def __call__(self, *inputs: Any) -> np.ndarray:
        xs = [np.ascontiguousarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x) for x in inputs]
        cap = 16 * sum(x.nbytes for x in xs) + (64 << 20)
        with self._lock:
            try:
                _, out = self._get().request({"cmd": "call", "slot": 0, "repeat": 1}, xs, max_reply=cap)
            except SandboxFault as exc:
                if self._worker is not None:
                    self._worker.kill()
                raise RuntimeError(f"user kernel {self.kf.path.name}: {exc.category}: {exc.reason}") from None
        if len(out) != 1:
            raise RuntimeError(f"user kernel {self.kf.path.name}: bad-output: {len(out)} arrays returned")
        return out[0]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.kill()


class UserKernelBackend(Backend):
    name = "user"
    array = "numpy"
    trusted = False
    devices = ("cpu", "cuda")
    ops = tuple(OPS)
    dtypes = ("float32", "float64", "float16")

    def _probe(self) -> tuple[bool, str]:
        iso = resolve_isolation()  # raises SandboxUnavailable: reported as the reason
        return True, f"{len(list_kernels())} kernel file(s) in {kernels_dir()}; sandbox: {iso}"

    def candidates(self, problem: Problem) -> list[Candidate]:
        return [
            Candidate.of("user", kf.sha256[:16], file=kf.path.name)
            for kf in list_kernels(problem.op)
            if kf.matches(problem.op, problem.dtype, problem.param, problem.device)
        ]

    def kernel_sha256(self, candidate: Candidate) -> str:
        """The registered file's full sha256 (the store entry's content hash for this candidate)."""
        return load_file(kernels_dir() / str(candidate.cfg.get("file", ""))).sha256

    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        path = kernels_dir() / str(candidate.cfg.get("file", ""))
        kf = load_file(path)
        if not kf.sha256.startswith(candidate.template):
            raise RuntimeError(f"{path.name}: content changed since it was registered (sha256 mismatch)")
        # The hardened validator at the problem's own shape plus a small one (two shapes catch a
        # hard-coded size); the tuner's own validation and timing then run through the proxy.
        small = Problem.make(problem.op, get_op(problem.op).parse_shape(SHAPES[problem.op][0]), problem.dtype,
                             problem.param, problem.arity)  # fmt: skip
        res = check(kf, [small, problem], time_it=True)
        if not res.ok:
            raise RuntimeError(res.line())
        return SandboxedKernel(kf)


def sha256_of(path: str | Path) -> str:
    """The content hash the store records for a user kernel (sha256 of the file's bytes)."""
    return load_file(path).sha256


__all__ = ["SandboxedKernel", "UserKernelBackend", "add_kernel", "kernels_dir", "list_kernels", "remove_kernel",
           "sha256_of"]
