"""Honest numpy softmax that, at import, compiles a Triton kernel for an sm_90 GPU down to a cubin:
Triton runs ptxas (``--version`` twice, then the PTX -> cubin step) through the tool broker. No
GPU needed, so CI exercises the whole CUDA compile path; passes the default static check."""
import numpy as np
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

OP = "softmax"
TOOLS = True


@triton.jit
def scale(x_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) * 2, mask=i < n)


SRC = ASTSource(scale, signature={"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, constexprs={"BLOCK": 64})
CUBIN = triton.compile(SRC, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
if not CUBIN.startswith(b"\x7fELF"):
    raise RuntimeError("ptxas produced no cubin")


def run(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
