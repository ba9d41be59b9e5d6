"""``uhop hw``: hardware capability manifests (list, show, validate) and ``probe`` measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from uhop.hardware import get_capabilities, load_manifest, manifests
from uhop.hardware.schema import Figure, IntFigure, Manifest, ManifestError

app = typer.Typer(
    help="Hardware capability manifests and device detection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, soft_wrap=False)


def _fail(msg: str, code: int) -> typer.Exit:
    from uhop.cli.core import fail

    return fail(msg, code)


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) or v >= 100 else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def _rate(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if v >= scale:
            return f"{v / scale:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def _fmt(path: str, fig: Figure | IntFigure) -> str:
    v = fig.value
    if path.endswith("bandwidth_bytes_per_s"):
        return _rate(v, "B/s")
    if path.startswith("flops."):
        return _rate(v, "FLOP/s")
    if path.endswith("_hz"):
        return _rate(v, "Hz")
    if path.endswith(("bytes", "shared_mem_per_sm", "shared_mem_per_block", "shared_mem_per_block_optin")):
        return f"{_bytes(v)} ({v:,})"
    return f"{v:,}"


def _val(fig: Any) -> Any:
    return fig.value if fig is not None else None


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout.")) -> None:
    """Table of the shipped manifests: compute units, shared memory, tensor engines, bandwidth."""
    rows = []
    for m in manifests().values():
        g = m.gpu
        smem_block = (g.max_shared_mem_per_block_optin or g.max_shared_mem_per_block) if g else None
        rows.append({
            "name": m.name, "vendor": m.vendor, "family": m.family, "arch": m.arch, "compute_units": _val(m.compute_units),
            "shared_mem_per_sm": _val(g.shared_mem_per_sm) if g else None, "shared_mem_per_block": _val(smem_block),
            "tensor_engines": sorted({e.kind for e in m.tensor_engines}),
            "bandwidth_bytes_per_s": m.peak_bandwidth(), "bf16_flops": m.peak_flops("bf16"),
        })  # fmt: skip
    if as_json:
        import json

        typer.echo(json.dumps(rows, indent=1))
        return
    # 80 columns: name and family fold inside their cells (never cut); figures stay on one line.
    t = Table(title="UHOP hardware manifests", show_lines=False)
    for col, kw in (("name", {"style": "bold"}), ("vendor family / arch", {}), ("SMs/CUs", {"justify": "right"}),
                    ("smem SM/block", {"justify": "right"}), ("tensor engines", {}), ("bandwidth", {"justify": "right"}),
                    ("bf16 peak", {"justify": "right"})):  # fmt: skip
        t.add_column(col, overflow="fold", **kw)
    for r in rows:
        cu = r["compute_units"]
        smem = f"{_bytes(r['shared_mem_per_sm'])} / {_bytes(r['shared_mem_per_block'])}" if r["shared_mem_per_sm"] else "-"
        t.add_row(
            escape(r["name"]), escape(f"{r['vendor']} {r['family']}") + f"\n[dim]{escape(r['arch'])}[/dim]",
            f"{cu:,}" if cu else "-", smem, ", ".join(r["tensor_engines"]) or "-",
            _rate(r["bandwidth_bytes_per_s"], "B/s"), _rate(r["bf16_flops"], "FLOP/s"),
        )  # fmt: skip
    _console().print(t)


def _figures(obj: Any, prefix: str = "") -> list[tuple[str, Figure | IntFigure]]:
    out: list[tuple[str, Figure | IntFigure]] = []
    items = obj.items() if isinstance(obj, dict) else ((k, getattr(obj, k)) for k in type(obj).model_fields)
    for key, v in items:
        path = f"{prefix}{key}"
        if isinstance(v, (Figure, IntFigure)):
            out.append((path, v))
        elif isinstance(v, dict) or (hasattr(type(v), "model_fields") and key not in ("measured", "detection")):
            out.extend(_figures(v, path + "."))
    return out


def render(caps: Manifest, console: Console) -> None:
    """Print a manifest: identity, detection, every figure with its source, engines, measured."""
    console.print(f"[bold]{caps.name}[/bold]: {escape(caps.display_name)} ({escape(caps.family)}, {caps.arch}, {caps.vendor}, {caps.kind})")
    if caps.detection:
        d = caps.detection
        console.print(f"detected: {escape(d.device)} via {d.api} (match: {d.level})")
        for note in d.notes:
            console.print(f"  [yellow]note:[/yellow] {escape(note)}")
    t = Table(show_header=True, header_style="bold")
    for col in ("figure", "value", "source", "note"):
        t.add_column(col, overflow="fold")
    measured_paths: set[str] = set()
    if caps.measured:  # the measured figures below supersede derived/datasheet peaks for these paths
        if caps.measured.bandwidth_bytes_per_s is not None:
            measured_paths.add("memory.bandwidth_bytes_per_s")
        measured_paths |= {f"flops.{k}" for k, v in caps.measured.flops.items() if v is not None}
    for path, fig in _figures(caps):
        note = escape(fig.note or "")
        if path in measured_paths and fig.source != "measured":
            note = (note + "; " if note else "") + "[bold]superseded by the measured figure below[/bold]"
        t.add_row(path, _fmt(path, fig), fig.source, note)
    if caps.gpu:
        t.add_row("gpu.async_copy", str(caps.gpu.async_copy), "", "")
        t.add_row("gpu.tma", str(caps.gpu.tma), "", "")
    if caps.cpu:
        t.add_row("cpu.simd", caps.cpu.simd, "", "")
        if caps.cpu.extensions:
            t.add_row("cpu.extensions", " ".join(caps.cpu.extensions), "", "")
    console.print(t)
    for e in caps.tensor_engines:
        console.print(f"tensor engine [bold]{escape(e.kind)}[/bold]: {', '.join(e.dtypes)}; shapes {', '.join(e.mma_shapes) or '-'}"
                      + (f" ({escape(e.note)})" if e.note else ""))  # fmt: skip
    if caps.measured:
        ms = caps.measured
        console.print(f"[bold]measured[/bold] {ms.when} on {escape(ms.host)}: {escape(ms.method)}")
        rows = [("bandwidth", ms.bandwidth_bytes_per_s, caps.memory.bandwidth_bytes_per_s, "B/s")]
        rows += [(f"flops.{k}", v, caps.flops.get(k), "FLOP/s") for k, v in ms.flops.items()]  # type: ignore[call-overload]
        for label, got, ref, unit in rows:
            if got is None:
                continue
            pct = f" = {100 * got.value / ref.value:.0f}% of {ref.source} {_rate(ref.value, unit)}" if ref else ""
            console.print(f"  {label}: {_rate(got.value, unit)}{pct}")
    for note in caps.notes:
        if caps.measured and "until `uhop hw probe`" in note:
            continue  # it has measured them: the note no longer holds
        console.print(f"[dim]note: {escape(note)}[/dim]")


@app.command()
def show(
    name: str | None = typer.Argument(None, help="Manifest name or alias (h100, mi300x...); omit for this machine."),
    device: str | None = typer.Option(None, "--device", "-d", help="With no NAME: 'cpu', 'cuda:N' (default: first GPU, else CPU)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show one manifest, or the detected device with reported and measured figures."""
    try:
        caps = get_capabilities(name) if name else get_capabilities(device=device)
    except ValueError as exc:  # ManifestError is a ValueError
        raise _fail(str(exc), 2) from None
    if as_json:
        typer.echo(caps.model_dump_json(indent=2, exclude_none=True))
    else:
        render(caps, _console())


@app.command()
def validate(file: Path = typer.Argument(..., help="A manifest JSON file.")) -> None:
    """Validate a manifest file; exits 1 naming each bad field."""
    try:
        m = load_manifest(file)
    except ManifestError as exc:
        raise _fail(str(exc), 1) from None
    typer.echo(f"ok: {file} is a valid manifest ({m.name}, {m.kind}, {m.arch})")


@app.command()
def probe(
    device: str | None = typer.Option(None, "--device", "-d", help="'cpu' or 'cuda:N' (default: first GPU, else CPU)."),
    size_mb: int | None = typer.Option(None, "--size-mb", min=1, help="Copy buffer size in MiB (default 1024)."),
    matmul_n: int | None = typer.Option(None, "--matmul-n", min=8, help="Matrix size (default CPU 2048, GPU 8192)."),
    dtype: list[str] | None = typer.Option(None, "--dtype", help="Measure only these dtypes (repeatable)."),
    min_time_s: float = typer.Option(0.2, "--min-time-s", min=0.001, help="Timed time per figure, seconds."),
) -> None:
    """Measure bandwidth and peak FLOP/s; store them under UHOP_HOME/hardware/ (measured beats datasheet)."""
    from uhop.hardware import probe as hp

    try:
        measured, info = hp.probe(device, size_bytes=size_mb * 1024**2 if size_mb else None, matmul_n=matmul_n,
                                  dtypes=dtype or None, min_time_s=min_time_s)  # fmt: skip
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    path = hp.save(measured, info)
    console = _console()
    render(get_capabilities(device=device or ("cpu" if info.kind == "cpu" else f"cuda:{info.index}")), console)
    console.print(f"saved: {path}")
