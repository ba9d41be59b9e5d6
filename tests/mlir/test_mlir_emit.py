"""Golden-text tests of emitted modules: emission is deterministic and reviewed by diff.

Regenerate after an intended change with ``UHOP_UPDATE_GOLDEN=1 pytest tests/mlir/test_mlir_emit.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uhop.errors import InputError
from uhop.mlir.emit import emit

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "matmul_bias_gelu": ("matmul", {"M": 4, "N": 8, "K": 16}, "float32", {"activation": "gelu"}, 3),
    "matmul_batched": ("matmul", {"B": 2, "M": 4, "N": 8, "K": 16}, "float32", {}, 2),
    "softmax": ("softmax", {"R": 4, "N": 8}, "float32", {}, 1),
    "layernorm_affine": ("layernorm", {"R": 4, "N": 8}, "float32", {}, 3),
    "rmsnorm_f64": ("rmsnorm", {"R": 4, "N": 8}, "float64", {}, 2),
    "elementwise_chain": ("elementwise", {"N": 64}, "float32", {"expr": "sigmoid(x0*1.5+0.5)*x1-x0**2"}, None),
    "conv2d_pad_stride_bias": (
        "conv2d", {"N": 1, "C": 3, "H": 8, "W": 8, "K": 4, "R": 3, "S": 3}, "float32", {"padding": 1, "stride": 2}, 3,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_emitted_module_matches_golden(name):
    op, dims, dtype, params, arity = CASES[name]
    text = emit(op, dims, dtype, params, arity).text
    path = GOLDEN / f"{name}.mlir"
    if os.environ.get("UHOP_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UHOP_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def test_emitted_module_parses_and_verifies():
    from iree.compiler import ir

    for op, dims, dtype, params, arity in CASES.values():
        with ir.Context():
            module = ir.Module.parse(emit(op, dims, dtype, params, arity).text)
            assert module.operation.verify()


def test_emit_records_shapes():
    e = emit("matmul", {"B": 3, "M": 5, "N": 7, "K": 2}, "float32", {}, 3)
    assert e.input_shapes == ((3, 5, 2), (2, 7), (7,))
    assert e.output_shape == (3, 5, 7)


@pytest.mark.parametrize(
    "args, match",
    [
        (("attention", {"B": 1, "S": 4, "L": 4, "D": 4, "E": 4}), "op must be one of"),
        (("matmul", {"M": 4, "N": 4, "K": 4}, "bfloat16"), "dtype must be one of"),
        (("matmul", {"M": 4, "N": 4}), "missing K"),
    ],
)
def test_emit_rejects_bad_input_with_named_argument(args, match):
    with pytest.raises(InputError, match=match):
        emit(*args)
