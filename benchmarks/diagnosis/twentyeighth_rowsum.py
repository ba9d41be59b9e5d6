"""Reductions at the end of an elementwise chain (``rowsum``), the twenty-eighth session's change:
whole tiles of whole rows loaded without masks (``EVEN``), and an ``approx`` candidate computing exp
and sigmoid as single MUFU instructions, against the generator before (OLD_EW). Every config the
backend offers, both generators, interleaved rounds in one process; GB/s from CUDA events over 10
calls; outputs checked against float64. Times the kernels directly (a candidate study, not the
product path).

    git show <before>:uhop/backends/triton_kernels/elementwise.py > /tmp/old_ew.py
    OLD_EW=/tmp/old_ew.py OUT=/tmp python3 benchmarks/diagnosis/twentyeighth_rowsum.py
"""
import os
import sys
import tempfile

os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hosttime import old_module, rowsum_study  # noqa: E402

# (rows, width, dtype, expr, forms, reduce): the width sweep's 0.66-of-copy case first
CASES = [(32768, 4096, "bfloat16", "x0*sigmoid(x0)", "f", "sum"), (32768, 4096, "bfloat16", "x0*x0", "f", "sum"),
         (32768, 4096, "bfloat16", "x0*x1", "fr", "max"), (8192, 8192, "bfloat16", "exp(x0-1.0)", "f", "mean"),
         (32, 1 << 21, "bfloat16", "silu(x0)", "f", "sum"), (32768, 4096, "float32", "x0*sigmoid(x0)", "f", "sum"),
         (8192, 50257, "bfloat16", "x0*x0", "f", "mean")]  # fmt: skip

rowsum_study(CASES, old_module("OLD_EW", "old_ew"), "diagnosis_twentyeighth_rowsum.json")
