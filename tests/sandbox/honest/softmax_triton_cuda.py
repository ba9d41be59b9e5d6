"""Honest softmax in Triton compiled for the GPU (its cache goes to the sandbox's private /tmp)."""
import torch
import triton
import triton.language as tl

OP = "softmax"
ARRAY = "torch"
DEVICE = "cuda"
DTYPES = ("float32",)


@triton.jit
def softmax_row(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=-float("inf"))
    x = x - tl.max(x, axis=0)
    e = tl.exp(x)
    tl.store(out_ptr + row * n_cols + cols, e / tl.sum(e, axis=0), mask=mask)


def run(x):
    out = torch.empty_like(x)
    n_rows, n_cols = x.shape
    softmax_row[(n_rows,)](x, out, n_cols, BLOCK=triton.next_power_of_2(n_cols))
    return out
