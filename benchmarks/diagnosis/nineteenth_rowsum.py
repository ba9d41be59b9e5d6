"""Reductions at the end of an elementwise chain (``rowsum``), the nineteenth session's change: rows
of a width off the 16-byte grid read as a vector-aligned body with element-wise head and tail,
against the generator before it (every row read from ``row * C``: Triton cannot prove alignment, so
2-byte loads). Every config the backend offers, both generators, interleaved rounds in one process;
GB/s from CUDA events over 10 calls; outputs checked against float64. Times the kernels directly (a
candidate study, not the product path).

    OLD_EW=path/to/old/elementwise.py OUT=/tmp python3 benchmarks/diagnosis/nineteenth_rowsum.py
"""
import os
import sys
import tempfile

os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hosttime import old_module, rowsum_study  # noqa: E402

# (rows, width, dtype, expr, forms, reduce)
CASES = [(8192, 50257, "bfloat16", "x0*x0", "f", "mean"), (32768, 4096, "bfloat16", "x0*sigmoid(x0)", "f", "sum"),
         (32768, 4096, "bfloat16", "x0*x1", "fr", "max"), (16384, 4100, "bfloat16", "x0*x0", "f", "sum"),
         (2048, 50257, "float32", "x0*x0", "f", "mean"), (3, 1 << 22, "bfloat16", "x0*x0", "f", "sum")]  # fmt: skip

rowsum_study(CASES, old_module("OLD_EW", "old_ew"), "diagnosis_nineteenth_rowsum.json")
