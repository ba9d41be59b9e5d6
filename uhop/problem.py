"""Problem keys: what a tuned kernel is valid for.

A :class:`Problem` is op + canonical dims + dtype + params + layout + device. Its key adds the
shape class (exact dims by default; ``UHOP_SHAPE_BUCKETS=pow2`` rounds each dim up to a power of
two so dynamic shapes share one tuned entry; every UHOP kernel is shape-generic, so a bucketed
entry stays correct and only its speed is approximate) and the hardware fingerprint (device,
driver and library versions), so a kernel tuned elsewhere or under other versions is never served.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uhop import __version__
from uhop.errors import InputError
from uhop.ops import get as get_op


@dataclass(frozen=True)
class Problem:
    op: str
    dims: tuple[tuple[str, int], ...]
    dtype: str
    params: tuple[tuple[str, Any], ...] = ()
    #: number of array inputs present (optional inputs such as bias change the kernel)
    arity: int = 0
    #: "contiguous" when every input is C-contiguous; "channels_last" for a conv2d whose 4-D
    #: torch inputs are channels-last (candidates are timed on inputs in that layout); else "strided"
    layout: str = "contiguous"
    #: "cpu" or "cuda:N"
    device: str = "cpu"
    #: array library of the inputs: "numpy" or "torch". Not part of the key: every kernel is
    #: adapted to the caller's library at dispatch, so numpy and torch callers (and ``uhop tune``)
    #: share one entry per problem
    array: str = "numpy"
    _extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def make(
        cls,
        op: str,
        dims: Mapping[str, int],
        dtype: str,
        params: Mapping[str, Any] | None = None,
        arity: int | None = None,
        layout: str = "contiguous",
        device: str = "cpu",
        array: str = "numpy",
    ) -> Problem:
        spec = get_op(op)
        p = spec.normalize_params(params or {})
        n = len(spec.inputs) - spec.optional if arity is None else arity
        if spec.variadic and arity is None:
            from uhop.ops.expr import n_vars

            n = n_vars(spec.expression(p))  # type: ignore[attr-defined]
        full = spec.canonical_dims({**spec.defaulted_dims(), **dims}, p)
        missing = [d for d in spec.dims if d not in full]
        unknown = sorted(set(dims) - set(spec.dims))
        if missing or unknown:
            raise InputError(
                f"{op}: dims must give {', '.join(spec.dims)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(unknown)}" if unknown else "")
            )
        bad = [d for d in spec.dims if not isinstance(full[d], (int, np.integer)) or isinstance(full[d], bool) or full[d] < 1]
        if bad:
            raise InputError(f"{op}: dims must be positive integers, got " + ", ".join(f"{d}={full[d]!r}" for d in bad))
        return cls(
            op=op,
            dims=tuple((d, int(full[d])) for d in spec.dims),
            dtype=dtype,
            # (an optional parameter left unset is not part of the problem: keys stay those of before it existed)
            params=tuple(sorted((k, v) for k, v in p.items() if v is not None)),
            arity=n,
            layout=layout,
            device=_indexed(device),
            array=array,
        )

    @property
    def spec(self):
        return get_op(self.op)

    @property
    def dim(self) -> dict[str, int]:
        return dict(self.dims)

    @property
    def param(self) -> dict[str, Any]:
        return dict(self.params)

    def shape_class(self, policy: str = "exact") -> tuple[tuple[str, int], ...]:
        if policy == "exact":
            return self.dims
        return tuple((d, 1 << max(0, (v - 1).bit_length())) for d, v in self.dims)

    def flops(self) -> float:
        return self.spec.flops(self.dim, self.param)

    def bytes(self) -> float:
        return self.spec.bytes(self.dim, self.dtype, self.param)

    def describe(self) -> str:
        dims = "x".join(str(v) for _, v in self.dims)
        extra = ",".join(f"{k}={v}" for k, v in self.params if v != "")  # "": an unset string param
        return f"{self.op}[{dims}] {self.dtype}{(' ' + extra) if extra else ''} on {self.device}"

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "dims": dict(self.dims),
            "dtype": self.dtype,
            "params": dict(self.params),
            "arity": self.arity,
            "layout": self.layout,
            "device": self.device,
            "array": self.array,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Problem:
        return cls.make(
            d["op"], d["dims"], d["dtype"], d.get("params"), d.get("arity"), d.get("layout", "contiguous"),
            d.get("device", "cpu"), d.get("array", "numpy"),
        )  # fmt: skip

    def key(self, shape_policy: str = "exact") -> str:
        """Stable text key: readable prefix plus a hash of everything that selects a kernel."""
        body = {
            "op": self.op,
            "dims": self.shape_class(shape_policy),
            "dtype": self.dtype,
            "params": self.params,
            "arity": self.arity,
            "layout": self.layout,
            "device": self.device,
            "hw": hardware_fingerprint(self.device),
        }
        h = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
        dims = "x".join(str(v) for _, v in self.shape_class(shape_policy))
        return f"{self.op}:{dims}:{self.dtype}:{h}"


def _version(mod: str) -> str | None:
    """An installed distribution's version without importing it (a warm start must not pay for
    importing torch to learn which torch it would import)."""
    m = sys.modules.get(mod)
    if m is not None and isinstance(getattr(m, "__version__", None), str):
        return m.__version__
    return _dist_versions().get(mod.replace("-", "_").lower())


@functools.cache
def _dist_versions() -> dict[str, str]:
    """Versions from the ``NAME-VERSION.dist-info`` (or ``.egg-info``) folder names on
    ``sys.path``, as importlib.metadata finds them but without importing it (0.1 s): one directory
    listing each, the first entry on the path wins, as for imports."""
    import os

    out: dict[str, str] = {}
    for d in sys.path:
        try:
            names = os.listdir(d or ".")
        except OSError:
            continue
        for n in names:
            stem, dot, ext = n.rpartition(".")
            if dot and ext in ("dist-info", "egg-info") and "-" in stem:
                name, _, ver = stem.partition("-")
                out.setdefault(name.replace("-", "_").lower(), ver.split("-")[0])
    return out


def _indexed(device: str) -> str:
    """``cuda`` as the device it means, ``cuda:N`` (torch's current device): a tensor's device
    always carries its index, so a problem made for ``cuda`` (``uhop tune --device cuda``,
    ``uhop bench --device cuda``) had a key of its own and its kernel never served a caller
    (``uhop bench`` tuned every GPU case twice)."""
    if device != "cuda":
        return device
    try:
        import torch

        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cuda:0"
    except ImportError:
        return "cuda:0"


def cuda_device_count() -> int:
    """CUDA devices torch sees (0 without torch or a CUDA build)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def require_device(device: str, name: str = "device") -> str:
    """``device`` if this machine has it (``cpu``, ``cuda`` or ``cuda:N``), else an
    :class:`InputError` naming ``name`` and what exists here."""
    import re

    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise InputError(f"{name} must be cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        n = cuda_device_count()
        if int(device.partition(":")[2] or 0) >= n:
            raise InputError(f"{name} {device}: " + (f"this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})" if n
                                                      else "torch sees no CUDA device on this machine"))  # fmt: skip
    return device


@functools.cache
def hardware_fingerprint(device: str = "cpu") -> dict[str, Any]:
    """What must match for a stored kernel to be served: device identity and the versions of
    everything that changes the generated code or the library paths it calls."""
    import numpy as np

    fp: dict[str, Any] = {
        "uhop": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "numba": _version("numba"),
        "torch": _version("torch"),
        "triton": _version("triton"),
        "iree": _version("iree-base-compiler"),
    }
    if device == "cpu":
        fp["cpu"] = cpu_model()
    else:
        fp.update(_gpu_fingerprint(device))
    fp["manifest"] = _manifest_name(device, fp)
    return fp


def _manifest_name(device: str, fp: Mapping[str, Any]) -> str | None:
    """The architecture class (manifest name) of ``device``, so entries never cross device
    families. Detecting it loads every manifest (pydantic: most of a second), so the answer is
    kept under ``UHOP_HOME`` keyed by the facts it was derived from and re-detected when they
    change: a warm start must not pay for it."""
    import os

    from uhop.config import settings

    facts = json.dumps({k: fp.get(k) for k in ("uhop", "machine", "cpu", "gpu", "cc")}, sort_keys=True)
    path = settings().home / "fingerprints.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if facts in known:
        return known[facts]
    try:
        from uhop.hardware import get_capabilities

        name = get_capabilities(device=device).name
    except Exception:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**known, facts: name}, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only home: detect again next time
        pass
    return name


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_fingerprint(device: str) -> dict[str, Any]:
    try:
        import torch

        idx = int(device.split(":")[1]) if ":" in device else 0
        props = torch.cuda.get_device_properties(idx)
        return {
            "gpu": props.name,
            "cc": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "driver": _driver_version(),
        }
    except Exception as exc:  # no torch/cuda: key still differs from cpu's
        return {"gpu": f"unknown ({exc.__class__.__name__})"}


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # no NVML (nvidia-ml-py is the gpu extra): the CUDA version still keys it
        return None
