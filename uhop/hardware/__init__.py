"""Hardware capability manifests and device detection.

``get_capabilities()`` is the entry point: with no argument it describes the running device
(matched manifest + what the device reports + what ``uhop hw probe`` measured); with a name it
returns a shipped manifest (``"h100"``, ``"H100-SXM"``, ``"mi300x"``...). The result is a typed
:class:`~uhop.hardware.schema.Manifest` whose ``peak_flops(dtype)`` (FLOP/s) and
``peak_bandwidth()`` (bytes/s) feed roofline percentages, and whose limits feed
:mod:`uhop.hardware.constraints`. The schema is documented in ``docs/hardware_manifest.md``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json

from uhop.hardware.schema import (
    DTYPES,
    Figure,
    IntFigure,
    Manifest,
    ManifestError,
    Measured,
    load_manifest,
    normalize_dtype,
    parse_manifest,
)

__all__ = [
    "DTYPES", "Figure", "IntFigure", "Manifest", "ManifestError", "Measured", "get_capabilities",
    "known_names", "load_manifest", "lookup", "manifests", "normalize_dtype", "parse_manifest",
]  # fmt: skip


@functools.cache
def manifests() -> dict[str, Manifest]:
    """Every shipped manifest by name (validated once per process)."""
    out: dict[str, Manifest] = {}
    owners: dict[str, str] = {}
    folder = importlib.resources.files("uhop.hardware") / "manifests"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        try:
            data = json.loads(entry.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"invalid manifest {entry.name}: not JSON ({exc})") from None
        m = parse_manifest(data, entry.name)
        if f"{m.name}.json" != entry.name:
            raise ManifestError(f"manifest {entry.name}: field 'name' is {m.name!r}, expected the file stem")
        for key in (m.name, *m.aliases):
            if key in owners:
                raise ManifestError(f"manifest {entry.name}: name or alias {key!r} already used by {owners[key]}")
            owners[key] = m.name
        out[m.name] = m
    return out


def known_names() -> list[str]:
    """Shipped manifest names, sorted."""
    return sorted(manifests())


def _norm(name: str) -> str:
    return "-".join(name.strip().lower().replace("_", " ").split())


def lookup(name: str) -> Manifest:
    """A shipped manifest by name or alias, case-insensitive (``"H100"``, ``"h100-sxm"``,
    ``"NVIDIA H100"``). Raises :class:`ManifestError` listing the known names."""
    if not isinstance(name, str) or not name.strip():
        raise ManifestError(f"name: expected a manifest name such as 'h100', got {name!r}")
    table = manifests()
    index = {key: m for m in table.values() for key in (m.name, *m.aliases)}
    key = _norm(name)
    for candidate in (key, key.removeprefix("nvidia-"), key.removeprefix("amd-"), key.removeprefix("intel-")):
        if candidate in index:
            return index[candidate].model_copy(deep=True)  # callers may not mutate the shared table
    aliases = sorted(a for m in table.values() for a in m.aliases)
    raise ManifestError(
        f"name: unknown hardware manifest {name!r}; known names: {', '.join(known_names())} "
        f"(aliases: {', '.join(aliases)})"
    )


def get_capabilities(name: str | None = None, *, device: str | None = None) -> Manifest:
    """The capabilities of a device.

    ``name`` picks a shipped manifest (datasheet figures only). Without it, the running device is
    detected: ``device`` is ``None`` (first GPU, else the CPU), ``"cpu"`` or ``"cuda:N"``; its
    manifest carries reported figures over datasheet ones and, when ``uhop hw probe`` ran on this
    machine, ``measured`` figures, which ``peak_flops``/``peak_bandwidth`` prefer.
    """
    if name is not None:
        if device is not None:
            raise ValueError("get_capabilities: pass either name (a shipped manifest) or device, not both")
        return lookup(name)
    from uhop.hardware import probe
    from uhop.hardware.detect import detect, resolve

    info = detect(device)
    caps = resolve(info, manifests())
    measured = probe.load(info)
    return caps.model_copy(update={"measured": measured}) if measured else caps
