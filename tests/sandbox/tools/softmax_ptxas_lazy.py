"""Honest numpy softmax that compiles a Triton kernel for an sm_90 GPU on its first call, as a
``@triton.jit`` kernel does at its first launch: LLVM installs its signal handlers then, after the
sandbox took its baseline of the process state. No GPU needed; passes the default static check."""
import numpy as np
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

OP = "softmax"
TOOLS = True
_CUBIN = []


@triton.jit
def scale(x_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) * 2, mask=i < n)


def run(x):
    if not _CUBIN:
        src = ASTSource(scale, signature={"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, constexprs={"BLOCK": 64})
        _CUBIN.append(triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"])
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
