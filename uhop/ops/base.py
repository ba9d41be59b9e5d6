"""The op contract: everything UHOP knows about an operation lives in its ``Op`` subclass.

An op declares its inputs, its canonical dimensions (and how they are read from the inputs),
a float64 reference, FLOP and byte counts, tolerances per dtype and a generator of valid
random inputs. Validation, benchmarks, the CLI and the cost model read them from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from uhop.errors import InputError, UnsupportedDtype

#: dtypes UHOP knows, with their itemsize. ``bfloat16`` exists only as torch tensors.
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}

#: (rtol, atol) per dtype for an output of unit scale; ops scale atol by ``Op.error_scale``.
TOLERANCE = {
    "float64": (1e-9, 1e-10),
    "float32": (2e-4, 2e-5),
    "float16": (1e-2, 2e-3),
    "bfloat16": (3e-2, 1.6e-2),
}


def dtype_name(x: Any) -> str:
    """'float32' for a numpy array or torch tensor of that dtype."""
    dt = getattr(x, "dtype", None)
    if dt is None:
        return type(x).__name__
    name = getattr(dt, "name", None)
    if isinstance(name, str):
        return name
    return str(dt).removeprefix("torch.")


def promote(names: Iterable[str]) -> str:
    """The floating dtype torch and numpy give a result of floating dtypes ``names``: the widest;
    float16 with bfloat16 gives float32 (torch; numpy has no bfloat16)."""
    found = set(names)
    if {"float16", "bfloat16"} <= found:
        found.add("float32")
    return max(found, key=lambda d: ITEMSIZE.get(d, 0))


def result_dtype(args: Sequence[Any]) -> str | None:
    """The dtype the caller's library gives an elementwise result of the floating arrays among
    ``args`` (None if there are none): numpy's ``result_type``; for torch tensors
    :func:`promote` over those with dims (torch lets a 0-dim tensor of the same category not
    raise the result's dtype: ``bf16_tensor * torch.tensor(0.5)`` stays bfloat16)."""
    floats = [a for a in args if is_array(a) and dtype_name(a) in ITEMSIZE]
    if not floats:
        return None
    if all(isinstance(a, np.ndarray) for a in floats):
        return np.result_type(*floats).name
    ranked = [a for a in floats if len(a.shape) > 0] or floats
    return promote(dtype_name(a) for a in ranked)


def is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (int, float, complex, np.generic))


@dataclass(frozen=True)
class Param:
    """An op parameter fixed per call site (activation, causal, eps, stride, ...).

    ``choices`` makes it discrete; discrete params that the user did not state are inferred
    by probing the decorated function against the reference (see ``dispatch``).
    """

    name: str
    default: Any
    choices: tuple[Any, ...] | None = None
    kind: type = object

    def coerce(self, value: Any) -> Any:
        if value is None and self.default is None:  # an optional parameter left unset
            return None
        if self.choices is not None and value not in self.choices:
            raise InputError(f"{self.name} must be one of {list(self.choices)}, got {value!r}")
        if self.kind in (int, float, bool, str) and not isinstance(value, self.kind):
            try:
                if self.kind is bool or (self.kind is int and isinstance(value, float) and not value.is_integer()):
                    raise TypeError
                value = self.kind(value)
            except (TypeError, ValueError):
                raise InputError(f"{self.name} must be {self.kind.__name__}, got {value!r}") from None
        return value


def _uniform32(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform in [-1, 1) as float32 (multiples of 2**-23: exact after the scaling)."""
    x = rng.random(shape, dtype=np.float32)
    x *= 2.0
    x -= 1.0
    return x


class Op:
    """Base class of an op definition. Subclasses are stateless singletons in the registry."""

    name: ClassVar[str]
    #: Positional inputs, in call order. Names appear in error messages.
    inputs: ClassVar[tuple[str, ...]]
    #: How many trailing inputs may be omitted (passed as ``None`` or left out).
    optional: ClassVar[int] = 0
    #: Variadic ops (elementwise) accept any number of array inputs.
    variadic: ClassVar[bool] = False
    params: ClassVar[tuple[Param, ...]] = ()
    #: Canonical dimension names, in order (``uhop tune --shape AxBxC`` lists them in this order).
    dims: ClassVar[tuple[str, ...]]
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float64", "float16", "bfloat16")
    description: ClassVar[str] = ""

    # ---- shapes -------------------------------------------------------------------------
    def check(self, args: Sequence[Any], params: Mapping[str, Any]) -> dict[str, int]:
        """Validate the inputs and return the canonical dims. Raises :class:`InputError`."""
        raise NotImplementedError

    def output_shape(self, shapes: Sequence[tuple[int, ...]], params: Mapping[str, Any]) -> tuple[int, ...]:
        raise NotImplementedError

    def shapes_from_dims(
        self, dims: Mapping[str, int], params: Mapping[str, Any], arity: int
    ) -> list[tuple[int, ...]]:
        """Shapes of the first ``arity`` inputs for canonical dims (``uhop tune --shape``, validation)."""
        raise NotImplementedError

    def parse_shape(self, text: str) -> dict[str, int]:
        """'256x256x256' -> dims in :attr:`dims` order; fewer values fill leading batch dims with 1."""
        try:
            values = [int(v) for v in text.lower().replace(",", "x").split("x") if v]
        except ValueError:
            raise InputError(f"shape must look like {'x'.join(self.dims)}, got {text!r}") from None
        required = [d for d in self.dims if d not in self.defaulted_dims()]
        if len(values) == len(required):
            dims = {d: 1 for d in self.dims}
            dims.update(self.defaulted_dims())
            dims.update(zip(required, values, strict=True))
        elif len(values) == len(self.dims):
            dims = dict(zip(self.dims, values, strict=True))
        else:
            forms = " or ".join(dict.fromkeys(("x".join(required), "x".join(self.dims))))  # one form when none is optional
            raise InputError(f"shape for {self.name} must be {forms}, got {text!r}")
        if any(v <= 0 for v in dims.values()):
            raise InputError(f"shape dims must be positive, got {text!r}")
        return dims

    def defaulted_dims(self) -> dict[str, int]:
        """Dims that ``--shape`` may omit, with their defaults (a batch dim of 1, say)."""
        return {}

    def canonical_dims(self, dims: dict[str, int], params: Mapping[str, Any]) -> dict[str, int]:
        """``dims`` as the problem key takes them (dims that do not matter for ``params`` at
        their default), so that ``uhop tune --shape`` and a call on arrays pose one problem."""
        return dims

    # ---- semantics ------------------------------------------------------------------------
    #: an optional float64 torch implementation of :meth:`reference` (same semantics), used to
    #: compute the reference on a GPU for GPU problems where the host would take seconds
    #: (a 4096³ GEMM); ``None``: the numpy reference serves every device
    reference_torch: Any = None
    #: whether :meth:`reference` also takes inputs in their own dtypes and converts them to
    #: float64 itself (piece by piece: validation then makes no float64 copy of large inputs)
    reference_upcasts: bool = False

    def reference(self, *args: np.ndarray, **params: Any) -> np.ndarray:
        """float64 reference on float64 numpy inputs (any float dtype where
        :attr:`reference_upcasts`; the result is the same)."""
        raise NotImplementedError

    def flops(self, dims: Mapping[str, int], params: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def bytes(self, dims: Mapping[str, int], dtype: str, params: Mapping[str, Any]) -> float:
        """Minimum bytes moved to and from memory (each input read once, output written once)."""
        raise NotImplementedError

    def error_scale(self, dims: Mapping[str, int], params: Mapping[str, Any]) -> float:
        """Typical magnitude of rounding error relative to unit-scale outputs (sqrt of a
        reduction length for dot products)."""
        return 1.0

    def tolerance(self, dtype: str, dims: Mapping[str, int], params: Mapping[str, Any]) -> tuple[float, float]:
        rtol, atol = TOLERANCE[dtype]
        scale = self.error_scale(dims, params)
        return rtol * max(1.0, scale), atol * scale

    #: whether :meth:`make_inputs` draws every input uniform in [-1, 1) (then trials of GPU problems
    #: are drawn on the device); False for ops that draw something else (embedding's indices)
    uniform_inputs: bool = True

    def input_count(self, params: Mapping[str, Any], arity: int | None) -> int:
        """How many inputs :meth:`make_inputs` draws for ``arity`` (None: the op's default)."""
        return len(self.inputs) if arity is None else arity

    def input_dtypes(self, dtype: str, params: Mapping[str, Any], n: int) -> list[str]:
        """The dtype of each of the ``n`` inputs of a problem of ``dtype`` (its result's dtype)
        and ``params``: every reader that draws or converts trial inputs asks here. Default: all
        ``dtype``. Integer inputs (embedding's indices) are the op's own business, drawn by its
        :meth:`make_inputs`; their entry here is not read."""
        return [dtype] * n

    def make_inputs(
        self,
        dims: Mapping[str, int],
        params: Mapping[str, Any],
        rng: np.random.Generator,
        dtype: str = "float64",
        arity: int | None = None,
    ) -> list[np.ndarray]:
        """Fresh random inputs (uniform in [-1, 1), never all zeros), as numpy arrays of each
        input's dtype (:meth:`input_dtypes`; float32 for bfloat16: numpy has no bfloat16, callers
        round and convert)."""
        shapes = self.shapes_from_dims(dims, params, self.input_count(params, arity))
        out = []
        for s, dt in zip(shapes, self.input_dtypes(dtype, params, len(shapes)), strict=True):
            np_dtype = "float32" if dt == "bfloat16" else dt
            if np_dtype in ("float32", "float16"):  # drawn in float32: half the time of float64 draws
                out.append(_uniform32(rng, s).astype(np_dtype, copy=False))
            else:
                out.append(rng.uniform(-1.0, 1.0, size=s).astype(np_dtype))
        return out

    # ---- helpers for subclasses -------------------------------------------------------------
    def normalize_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        known = {p.name: p for p in self.params}
        unknown = set(given) - set(known)
        if unknown:
            raise InputError(f"{self.name} has no parameter(s) {sorted(unknown)}; it takes {sorted(known)}")
        out = {p.name: p.default for p in self.params}
        for k, v in given.items():
            out[k] = known[k].coerce(v)
        return out

    def check_dtypes(self, args: Sequence[Any]) -> str:
        """The common dtype of the array inputs; raises InputError on a mismatch or unsupported dtype."""
        dtype = None
        for name, a in zip(self.arg_names(len(args)), args, strict=False):
            if a is None:
                continue
            d = dtype_name(a)
            if d not in self.dtypes:
                raise UnsupportedDtype(f"{self.name}: {name} has dtype {d}; supported: {', '.join(self.dtypes)}")
            if dtype is None:
                dtype = d
            elif d != dtype:
                raise UnsupportedDtype(f"{self.name}: {name} has dtype {d} but earlier inputs are {dtype}")
        if dtype is None:
            raise InputError(f"{self.name}: no array inputs")
        return dtype

    def arg_names(self, n: int) -> tuple[str, ...]:
        if self.variadic:
            return tuple(f"x{i}" for i in range(n))
        return self.inputs

    def check_arrays(self, args: Sequence[Any]) -> None:
        names = self.arg_names(len(args))
        required = len(self.inputs) - self.optional
        if not self.variadic and not (required <= len(args) <= len(self.inputs)):
            expected = required if self.optional == 0 else f"{required} to {len(self.inputs)}"
            raise InputError(f"{self.name} takes {expected} inputs ({', '.join(self.inputs)}), got {len(args)}")
        for i, (name, a) in enumerate(zip(names, args, strict=False)):
            if a is None and (self.variadic or i < required):
                raise InputError(f"{self.name}: {name} is required, got None")
            if a is not None and not is_array(a):
                raise InputError(f"{self.name}: {name} must be a numpy array or torch tensor, got {type(a).__name__}")


def as_f64(x: Any) -> np.ndarray | None:
    """A float64 numpy copy of a numpy array or (any-device) torch tensor."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    if hasattr(x, "detach"):  # torch
        return x.detach().to("cpu").double().numpy()
    if hasattr(x, "__dlpack__"):  # CuPy, JAX, ...: through torch, which reads any device
        import torch

        return torch.from_dlpack(x).to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)
