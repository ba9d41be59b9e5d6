"""embedding: rows of a table gathered by integer indices (``F.embedding(indices, weight)``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from uhop.errors import InputError
from uhop.ops.base import ITEMSIZE, Op

_INT = ("int64", "int32", "int16", "int8", "uint8")


class Embedding(Op):
    name = "embedding"
    inputs = ("weight", "indices")
    dims = ("V", "D", "N")
    #: no bfloat16: validation converts every torch input of a bfloat16 problem, indices included
    dtypes = ("float32", "float64", "float16")
    description = "weight[indices]: weight (V, D), integer indices of any shape -> (*indices.shape, D)"

    def check(self, args: Sequence[Any], params: Mapping[str, Any]) -> dict[str, int]:
        self.check_arrays(args)
        w, idx = args
        wdt, idt = (str(a.dtype).removeprefix("torch.") for a in args)
        if wdt in _INT and idt not in _INT:  # F.embedding's order
            raise InputError(f"embedding takes (weight, indices), got integer {wdt} weight and {idt} indices: "
                             "swap them (torch's F.embedding takes (indices, weight))")  # fmt: skip
        if w.ndim != 2:
            raise InputError(f"embedding: weight must be 2-D (V, D), got shape {tuple(w.shape)}")
        return {"V": int(w.shape[0]), "D": int(w.shape[1]), "N": math.prod(idx.shape)}

    def check_dtypes(self, args: Sequence[Any]) -> str:
        dt = super().check_dtypes(args[:1])
        idt = str(args[1].dtype).removeprefix("torch.")
        if idt not in _INT:
            raise InputError(f"embedding: indices have dtype {idt}; expected an integer dtype ({', '.join(_INT)})")
        return dt

    def output_shape(self, shapes, params):
        return (*shapes[1], shapes[0][1])

    def shapes_from_dims(self, dims, params, arity):
        return [(dims["V"], dims["D"]), (dims["N"],)][:arity]

    uniform_inputs = False  # indices in range, then a table

    def make_inputs(self, dims, params, rng, dtype="float64", arity=None):
        np_dtype = "float32" if dtype == "bfloat16" else dtype
        w = rng.uniform(-1.0, 1.0, size=(dims["V"], dims["D"])).astype(np_dtype)
        return [w, rng.integers(0, dims["V"], size=dims["N"], dtype=np.int64)]

    def reference(self, weight, indices, **_: Any) -> np.ndarray:
        idx = np.asarray(indices).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
            raise InputError(f"embedding: indices must be in [0, {weight.shape[0]}), got {idx.min()}..{idx.max()}")
        return weight[idx]

    def flops(self, dims, params) -> float:
        return 0.0

    def bytes(self, dims, dtype, params) -> float:
        return 2.0 * ITEMSIZE[dtype] * dims["N"] * dims["D"] + 8.0 * dims["N"]
