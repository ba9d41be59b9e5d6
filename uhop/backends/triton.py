"""Triton backend: UHOP's own GPU kernel templates (``uhop.backends.triton_kernels``), each with
a search space pruned by the device's limits (the hardware manifest when present, else torch's
device properties).

Kernels take and return torch tensors on the problem's CUDA device. Under
``TRITON_INTERPRET=1`` the same templates also serve device "cpu" through Triton's interpreter
(slow; that is how CI checks them without a GPU); normal CPU runs never see this backend.
Compile and launch errors surface as Python exceptions, which the tuner records.
"""

from __future__ import annotations

import importlib
from typing import Any

from uhop.backends.base import Backend, Candidate, Kernel, input_dtypes_supported
from uhop.problem import Problem

#: op -> template module (in uhop.backends.triton_kernels)
FAMILIES = {
    "matmul": "matmul",
    "softmax": "rowops",
    "log_softmax": "rowops",
    "layernorm": "rowops",
    "rmsnorm": "rowops",
    "elementwise": "elementwise",
    "attention": "attention",
    "conv2d": "conv2d",
    "gated_mlp": "swiglu",
}


def _family(op: str) -> Any:
    from uhop.backends.triton_kernels import fix_interpreter

    fix_interpreter()  # no-op on GPU
    return importlib.import_module(f"uhop.backends.triton_kernels.{FAMILIES[op]}")


class TritonBackend(Backend):
    name = "triton"
    crash_prone = True
    eval_s = 2.0  # a JIT compile per candidate
    array = "torch"
    source_modules = (
        "uhop.backends.triton_kernels", "uhop.backends.triton_kernels.matmul", "uhop.backends.triton_kernels.rowops",
        "uhop.backends.triton_kernels.rows_long", "uhop.backends.triton_kernels.elementwise",
        "uhop.backends.triton_kernels.attention",
        "uhop.backends.triton_kernels.conv2d", "uhop.backends.triton_kernels.swiglu",
    )  # fmt: skip
    devices = ("cuda",)
    ops = tuple(FAMILIES)
    dtypes = ("float32", "float16", "bfloat16")

    def _probe(self) -> tuple[bool, str]:
        import triton

        from uhop.backends.triton_kernels import interpreting

        if interpreting():
            return True, f"triton {triton.__version__} (CPU interpreter)"
        import torch

        if not torch.cuda.is_available():
            return False, f"triton {triton.__version__} installed, but torch sees no CUDA device"
        return True, f"triton {triton.__version__} on {torch.cuda.get_device_name(0)}"

    #: the chain template reads row vectors and scalars and loads each input in its own dtype;
    #: rowsum reduces
    elementwise_forms = True

    def supports(self, problem: Problem) -> bool:
        from uhop.backends.triton_kernels import interpreting

        if problem.op not in self.ops or problem.dtype not in self.dtypes or problem.array != "torch":
            return False
        if not input_dtypes_supported(problem, self.dtypes):
            return False
        if problem.param.get("trans_b", False):  # its matmul kernels read b as (K, N)
            return False
        kind = problem.device.split(":")[0]
        return kind == "cuda" or (kind == "cpu" and interpreting())

    def synchronize(self, device: str) -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def candidates(self, problem: Problem) -> list[Candidate]:
        from uhop.backends.triton_kernels import limits

        lim = limits(problem.device)
        fam = _family(problem.op)
        if problem.op == "matmul":
            tf32 = problem.dtype == "float32" and problem.param.get("precision") == "tf32"
            pairs = fam.configs(problem, lim, tf32=tf32)
        else:
            pairs = fam.configs(problem, lim)
        return [Candidate.of(self.name, template, **cfg) for template, cfg in pairs]

    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        return _family(problem.op).build(candidate.template, candidate.cfg, problem)

    @property
    def precompiles(self) -> bool:  # type: ignore[override] - per process: no JIT under the interpreter
        """Triton compiles at a kernel's first launch and keeps the binary in its on-disk cache
        (``TRITON_CACHE_DIR``), which every process on the machine reads: a precompile process
        launches each candidate once (:meth:`prebuild`) and the evaluation worker's first launch
        loads the binary (tens of ms) instead of compiling it (0.2-1.5 s per config on the H200),
        as Inductor precompiles its autotuning configs. Not under the CPU interpreter (nothing
        is compiled there)."""
        from uhop.backends.triton_kernels import interpreting

        return not interpreting()

    def prebuild(self, candidate: Candidate, problem: Problem) -> None:
        """Build and launch ``candidate`` once on inputs of the problem's shapes, dtypes and device:
        the launch specializes and compiles exactly what the evaluation will run (Triton keys on
        dtypes, constexprs and the 16-divisibility of sizes and pointers, all the same here) and
        leaves the binary in the cache."""
        from uhop.measure.validate import uniform_on_device

        kernel = self.compile(candidate, problem)
        kernel(*uniform_on_device(problem))
        self.synchronize(problem.device)
