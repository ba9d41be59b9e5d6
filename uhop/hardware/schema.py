"""The typed hardware manifest: what a device can do, each figure with its source.

A manifest is JSON validated by :class:`Manifest` (pydantic, strict: ``"132"`` is not a number,
``2.0`` is not an integer, unknown keys are typos and fail). Every number is a :class:`Figure`:
``{"value": 132, "source": "datasheet", "note": "..."}``; a bare number is shorthand for a
datasheet figure. Sources, from weakest to strongest:

- ``datasheet``: the vendor's published figure (peaks are dense, no structured sparsity);
- ``derived``: computed from other figures by a stated formula (e.g. CPU peak = cores x clock x
  FMA units x 2 x lanes), an upper bound;
- ``reported``: what the running device or its driver reports (SM count, memory, shared memory);
- ``measured``: what ``uhop hw probe`` measured on this machine (see :class:`Measured`).

Units: bytes, bytes/s, FLOP/s (ops/s for int8), Hz, counts. Registers are 32-bit registers.
The schema is documented field by field in ``docs/hardware_manifest.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uhop.errors import UhopError

SCHEMA_VERSION = 1

Source = Literal["datasheet", "derived", "reported", "measured"]
SOURCE_RANK: dict[str, int] = {"datasheet": 0, "derived": 1, "reported": 2, "measured": 3}

DType = Literal["fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "fp4"]
DTYPES: tuple[str, ...] = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "fp4")
EngineDType = Literal["fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "fp6", "fp4", "int8", "int4"]
Vendor = Literal["nvidia", "amd", "intel", "apple", "arm", "generic"]
Simd = Literal["scalar", "sse4.2", "avx2", "avx512", "neon", "sve", "sve2"]

_NAME = r"^[a-z0-9][a-z0-9._-]*$"
# m{M}n{N}k{K}; N may be the letter N where the instruction takes a range of N (wgmma: 8..256).
_MMA_SHAPE = r"^m\d+n(\d+|N)k\d+$"

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class ManifestError(UhopError, ValueError):
    """A manifest failed validation or could not be found; the message names the field."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


def _bare_number(data: Any) -> Any:
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return {"value": data}
    if isinstance(data, (str, bool)):
        raise ValueError(f"expected a number or {{'value': ..., 'source': ...}}, got {data!r}")
    return data


class Figure(BaseModel):
    """A positive float figure (bytes/s, FLOP/s, Hz) and where it came from."""

    model_config = _STRICT
    value: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    source: Source = "datasheet"
    note: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, data: Any) -> Any:
        return _bare_number(data)


class IntFigure(BaseModel):
    """A positive integer figure (counts, bytes) and where it came from."""

    model_config = _STRICT
    value: Annotated[int, Field(gt=0)]
    source: Source = "datasheet"
    note: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, data: Any) -> Any:
        return _bare_number(data)


class Clocks(BaseModel):
    model_config = _STRICT
    base_hz: Figure | None = None
    boost_hz: Figure | None = None


class Memory(BaseModel):
    """Device memory (GPU) or system memory (CPU)."""

    model_config = _STRICT
    kind: str | None = None  # "HBM3", "GDDR6X", "DDR5", "unified LPDDR5"
    size_bytes: IntFigure | None = None
    bandwidth_bytes_per_s: Figure | None = None


class Caches(BaseModel):
    """``l1_bytes`` is per SM/CU/core (on NVIDIA the combined L1/shared array); ``l2_bytes`` and
    ``l3_bytes`` (last level: L3, Infinity Cache) are per device unless their note says otherwise."""

    model_config = _STRICT
    l1_bytes: IntFigure | None = None
    l2_bytes: IntFigure | None = None
    l3_bytes: IntFigure | None = None


class TensorEngine(BaseModel):
    """A matrix unit: ``kind`` is the instruction family (``mma.sync``, ``wgmma``, ``tcgen05``,
    ``mfma``, ``wmma``, ``xmx``, ``simdgroup_matrix``, ``amx``), ``mma_shapes`` are per-instruction
    tile shapes ``m{M}n{N}k{K}`` (``N`` literally where a range of N is allowed)."""

    model_config = _STRICT
    kind: Annotated[str, Field(min_length=1)]
    dtypes: Annotated[list[EngineDType], Field(min_length=1)]
    mma_shapes: list[Annotated[str, Field(pattern=_MMA_SHAPE)]] = []
    note: str | None = None


class GpuLimits(BaseModel):
    """Per-launch and per-SM limits kernel templates prune against (see ``constraints.fits``).

    ``max_shared_mem_per_block`` is the default static limit; ``..._optin`` the most a kernel can
    request with the opt-in attribute (what Triton and CUTLASS use). ``warp_size`` is the warp,
    wavefront or (Intel, Apple) sub-group/SIMD-group width."""

    model_config = _STRICT
    warp_size: IntFigure
    max_threads_per_block: IntFigure
    max_shared_mem_per_block: IntFigure
    max_shared_mem_per_block_optin: IntFigure | None = None
    shared_mem_per_sm: IntFigure | None = None
    registers_per_sm: IntFigure | None = None
    max_registers_per_thread: IntFigure | None = None
    max_threads_per_sm: IntFigure | None = None
    max_blocks_per_sm: IntFigure | None = None
    max_cluster_size: IntFigure | None = None
    async_copy: bool
    tma: bool


class CpuFeatures(BaseModel):
    """``simd`` is the widest vector ISA; ``vector_width_bits`` its register width; ``extensions``
    the ISA flags that change code generation (fma, avx512_bf16, amx_tile, sve2, i8mm...)."""

    model_config = _STRICT
    simd: Simd
    vector_width_bits: IntFigure
    fma_units_per_core: IntFigure | None = None
    threads_per_core: IntFigure | None = None
    extensions: list[str] = []


class Measured(BaseModel):
    """Figures ``uhop hw probe`` measured on one device; stored under ``UHOP_HOME/hardware/``."""

    model_config = _STRICT
    device: str
    manifest: str
    host: str
    when: str  # ISO 8601, UTC
    method: str
    bandwidth_bytes_per_s: Figure | None = None
    flops: dict[DType, Figure] = {}

    @model_validator(mode="after")
    def _all_measured(self) -> Measured:
        figs = [self.bandwidth_bytes_per_s, *self.flops.values()]
        for f in figs:
            if f is not None and f.source != "measured":
                raise ValueError(f"probe figures must have source 'measured', got {f.source!r}")
        return self


class Detection(BaseModel):
    """How a runtime manifest was chosen: the device seen, the API that saw it, and the match.
    ``level``: ``exact`` (the SKU's manifest), ``arch`` (same architecture, SKU figures dropped) or
    ``generic`` (nothing matched)."""

    model_config = _STRICT
    device: str
    api: str
    level: Literal["exact", "arch", "generic"]
    notes: list[str] = []


class Manifest(BaseModel):
    """One device (or device class). ``kind`` decides which section is required: ``gpu`` needs
    ``gpu``, ``cpu`` needs ``cpu``, ``generic`` (the fallback) carries both."""

    model_config = _STRICT
    schema_version: Literal[1]
    name: Annotated[str, Field(pattern=_NAME)]
    display_name: Annotated[str, Field(min_length=1)]
    kind: Literal["gpu", "cpu", "generic"]
    vendor: Vendor
    family: Annotated[str, Field(min_length=1)]
    arch: Annotated[str, Field(min_length=1)]
    aliases: list[Annotated[str, Field(pattern=_NAME)]] = []
    match: list[str] = []  # regexes searched (case-insensitive) in the device's reported name
    compute_units: IntFigure | None = None  # SMs, CUs, Xe cores; physical cores on a CPU
    clocks: Clocks = Clocks()
    memory: Memory = Memory()
    caches: Caches = Caches()
    flops: dict[DType, Figure] = {}  # peak dense FLOP/s (int8: ops/s) by dtype, tensor engines included
    tensor_engines: list[TensorEngine] = []
    gpu: GpuLimits | None = None
    cpu: CpuFeatures | None = None
    references: list[str] = []
    notes: list[str] = []
    measured: Measured | None = None  # runtime only: from `uhop hw probe`
    detection: Detection | None = None  # runtime only: how this device was matched

    @field_validator("match")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        for pat in v:
            try:
                re.compile(pat)
            except re.error as exc:
                raise ValueError(f"invalid regex {pat!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _sections(self) -> Manifest:
        if self.kind in ("gpu", "generic") and self.gpu is None:
            raise ValueError(f"kind {self.kind!r} needs a 'gpu' section")
        if self.kind in ("cpu", "generic") and self.cpu is None:
            raise ValueError(f"kind {self.kind!r} needs a 'cpu' section")
        g = self.gpu
        if g and g.max_shared_mem_per_block_optin and g.max_shared_mem_per_block_optin.value < g.max_shared_mem_per_block.value:
            raise ValueError("gpu.max_shared_mem_per_block_optin is below gpu.max_shared_mem_per_block")
        return self

    # -- the helpers consumers call ------------------------------------------------------------
    def peak_flops_figure(self, dtype: Any) -> Figure | None:
        """The strongest figure for ``dtype`` (measured over reported over derived over datasheet)."""
        key = normalize_dtype(dtype)
        if self.measured and key in self.measured.flops:
            return self.measured.flops[key]
        return self.flops.get(key)  # type: ignore[call-overload]

    def peak_flops(self, dtype: Any) -> float | None:
        """Peak dense FLOP/s for ``dtype`` (``"bf16"``, ``"bfloat16"``, ``np.float32``,
        ``torch.float16``...), measured over datasheet; ``None`` when unknown."""
        fig = self.peak_flops_figure(dtype)
        return fig.value if fig else None

    def peak_bandwidth_figure(self) -> Figure | None:
        if self.measured and self.measured.bandwidth_bytes_per_s:
            return self.measured.bandwidth_bytes_per_s
        return self.memory.bandwidth_bytes_per_s

    def peak_bandwidth(self) -> float | None:
        """Peak memory bandwidth in bytes/s, measured over datasheet; ``None`` when unknown."""
        fig = self.peak_bandwidth_figure()
        return fig.value if fig else None

    def figure(self, path: str) -> IntFigure | Figure | None:
        """A figure by dotted path, e.g. ``"gpu.max_shared_mem_per_block_optin"``."""
        obj: Any = self
        for part in path.split("."):
            obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
            if obj is None:
                return None
        return obj if isinstance(obj, (Figure, IntFigure)) else None


_DTYPE_ALIASES: dict[str, str] = {
    "fp64": "fp64", "float64": "fp64", "f64": "fp64", "double": "fp64",
    "fp32": "fp32", "float32": "fp32", "f32": "fp32", "float": "fp32", "single": "fp32",
    "tf32": "tf32", "tensorfloat32": "tf32",
    "fp16": "fp16", "float16": "fp16", "f16": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp8": "fp8", "int8": "int8", "i8": "int8", "uint8": "int8", "fp4": "fp4",
}  # fmt: skip


def normalize_dtype(dtype: Any) -> str:
    """Map ``"bfloat16"``, ``numpy.float32``, ``torch.float16``, ``"float8_e4m3fn"`` etc. to a
    manifest dtype key (one of :data:`DTYPES`). Raises ``ValueError`` naming ``dtype``."""
    if isinstance(dtype, str):
        s = dtype
    elif type(dtype).__module__.startswith("torch"):
        s = str(dtype)
    else:
        try:
            import numpy as np

            s = np.dtype(dtype).name
        except TypeError:
            s = str(dtype)
    s = s.strip().lower().removeprefix("torch.").removeprefix("numpy.")
    if s in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[s]
    if s.startswith(("float8", "fp8")) or s in ("e4m3", "e5m2"):
        return "fp8"
    if s.startswith(("float4", "fp4")):
        return "fp4"
    raise ValueError(f"dtype: expected one of {', '.join(DTYPES)} (or numpy/torch names), got {dtype!r}")


def _format_errors(exc: ValidationError, where: str) -> ManifestError:
    lines, fields = [], []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        fields.append(loc or "<root>")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  field '{loc}': {msg}" if loc else f"  {msg}")
    head = f"invalid manifest {where}: {len(lines)} error(s)"
    return ManifestError("\n".join([head, *lines]), tuple(fields))


def parse_manifest(data: Any, where: str = "<data>") -> Manifest:
    """Validate a decoded JSON object; raises :class:`ManifestError` naming every bad field."""
    if not isinstance(data, dict):
        raise ManifestError(f"invalid manifest {where}: expected a JSON object, got {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, where) from None


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file; raises :class:`ManifestError` (bad JSON or fields)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {p}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"invalid manifest {p}: not JSON ({exc})") from None
    return parse_manifest(data, str(p))
