"""GPU candidates that fail the way generated kernels do on a real device: a Triton kernel that
stores to an illegal address (a sticky CUDA error: the context is unusable afterwards), one that
never finishes, and an honest Triton softmax. Registered by tests and benchmarks through
``uhop.backends.register``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from uhop.backends.base import Backend, Candidate


@triton.jit
def _softmax_rows(x_ptr, out_ptr, n_cols, FAULT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=-float("inf")).to(tl.float32)
    if FAULT == 2:  # spin forever (the loop bound is data-dependent, so it is not folded away)
        while tl.max(x, 0) > -float("inf"):
            x = x * 1.0000001
    e = tl.exp(x - tl.max(x, 0))
    y = e / tl.sum(e, 0)
    offs = (row * n_cols + cols).to(tl.int64)
    if FAULT == 1:  # one terabyte past the output: no allocation lives there
        offs = offs + tl.full([BLOCK], 1 << 40, tl.int64)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


FAULTS = {"illegal-address": 1, "hang": 2, "honest": 0}


class FaultyCudaBackend(Backend):
    name = "faulty_cuda"
    array = "torch"
    devices = ("cuda",)
    ops = ("softmax",)
    dtypes = ("float32", "bfloat16")

    def candidates(self, problem):
        return [Candidate.of(self.name, f) for f in FAULTS]

    def compile(self, candidate, problem):
        fault = FAULTS[candidate.template]

        def kernel(x):
            out = torch.empty_like(x)
            rows, cols = x.shape
            _softmax_rows[(rows,)](x, out, cols, FAULT=fault, BLOCK=triton.next_power_of_2(cols))
            return out

        return kernel

    def synchronize(self, device):
        torch.cuda.synchronize(device)
