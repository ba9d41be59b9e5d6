"""Triton kernels compiled for sm_90 on a machine without a GPU (Triton's own ptxas and nvdisasm),
their SASS counted by opcode: what a kernel costs in instruction issues per element, checked in CI
where the kernel cannot run."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile
from typing import Any


def sass(fn: Any, sig: dict[str, str], const: dict[str, Any], aligned: tuple[str, ...] = (), warps: int = 4) -> str:
    """nvdisasm's listing of ``fn`` compiled for sm_90 (``aligned``: arguments Triton may take as
    multiples of 16, as it specializes them at launch)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = [*sig, *const]
    full = {**sig, **dict.fromkeys(const, "constexpr")}
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = ASTSource(fn, full, constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs)
    cubin = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}).asm["cubin"]
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout


def opcodes(listing: str, loop: bool = False) -> collections.Counter:
    """Opcode counts of a listing; ``loop``: only the longest loop's (the instructions between a
    label and the last branch back to it)."""
    labels: dict[str, int] = {}
    ops: list[str] = []
    span = (0, 0)
    for line in listing.splitlines():
        if m := re.match(r"\s*(\.L_x_\d+):", line):
            labels[m.group(1)] = len(ops)
        elif m := re.search(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", line):
            ops.append(m.group(1))
            back = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", line)
            if back and back.group(1) in labels and len(ops) - labels[back.group(1)] > span[1] - span[0]:
                span = (labels[back.group(1)], len(ops))
    if loop:
        assert span[1] > span[0], "no loop in the listing"
        return collections.Counter(ops[span[0] : span[1]])
    return collections.Counter(ops)


def skip_reason() -> str | None:
    """Why kernels cannot be compiled for sm_90 here, or None."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return f"Triton not importable: {err}"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1: the kernels' sources are the interpreter's"
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    if not os.path.exists(nvdisasm):
        return f"Triton's nvdisasm not found at {nvdisasm}"
    return None
