"""``uhop mlir``: compile ops through MLIR and IREE, showing every step.

``uhop mlir compile matmul --shape 128x128x128 --target llvm-cpu --out build/`` writes the emitted
module (``<op>.mlir``), the module after UHOP's passes (``<op>.passes.mlir``), the compiled
artifact (``<op>.<target>.vmfb``), IREE's per-dispatch configured sources (``configured/``) and the
compilation log (``compile.log``, ``compile.json``: tile sizes, vector width, fusions, spills).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Compile ops through MLIR/IREE.", no_args_is_help=True, pretty_exceptions_enable=False)


def _fail(msg: str) -> typer.Exit:
    from uhop.cli.core import fail

    return fail(msg, 2)


def _ints(text: str | None, name: str, n: int) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(v) for v in text.lower().replace(",", "x").split("x") if v)
    except ValueError:
        raise _fail(f"{name} must be {n} integers like {'x'.join(['64'] * n)}, got {text!r}") from None
    if len(values) != n or min(values) < 1:
        raise _fail(f"{name} must be {n} positive integers like {'x'.join(['64'] * n)}, got {text!r}")
    return values


def _problem(op: str, shape: str, dtype: str, param: list[str], arity: int | None):
    from uhop.cli.core import parse_params
    from uhop.errors import UhopError
    from uhop.ops import get as get_op

    try:
        spec = get_op(op)
        params = spec.normalize_params(parse_params(param))
        dims = spec.parse_shape(shape)
    except UhopError as exc:
        raise _fail(str(exc)) from None
    return spec, dims, params, arity


@app.command("targets")
def targets() -> None:
    """Targets this build can compile for, and which of them run here."""
    from uhop.mlir.compile import RUNNABLE, TARGETS

    for name, (_, flags) in TARGETS.items():
        where = "compile + run" if name in RUNNABLE else "cross-compile only"
        typer.echo(f"{name:14s} {where:20s} {' '.join(flags)}")


@app.command("emit")
def emit_command(
    op: str = typer.Argument(..., help="Op name (matmul, softmax, layernorm, rmsnorm, elementwise, conv2d)."),
    shape: str = typer.Option(..., "--shape", "-s", help="Dims in the op's order, e.g. 128x128x128 (MxNxK)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    param: list[str] = typer.Option([], "--param", "-p", help="Op parameter NAME=VALUE (repeatable)."),
    arity: int | None = typer.Option(None, help="Number of inputs (e.g. 3 for matmul with bias)."),
) -> None:
    """Print the emitted linalg-on-tensors module."""
    from uhop.errors import UhopError
    from uhop.mlir.emit import emit

    _, dims, params, arity = _problem(op, shape, dtype, param, arity)
    try:
        typer.echo(emit(op, dims, dtype, params, arity).text)
    except UhopError as exc:
        raise _fail(str(exc)) from None


@app.command("compile")
def compile_command(
    op: str = typer.Argument(..., help="Op name (matmul, softmax, layernorm, rmsnorm, elementwise, conv2d)."),
    shape: str = typer.Option(..., "--shape", "-s", help="Dims in the op's order, e.g. 128x128x128 (MxNxK)."),
    target: str = typer.Option("llvm-cpu", "--target", help="llvm-cpu, cuda, vulkan-spirv, metal-spirv, rocm."),
    out: Path = typer.Option(Path("build"), "--out", "-o", help="Directory for modules, artifact and log."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    param: list[str] = typer.Option([], "--param", "-p", help="Op parameter NAME=VALUE (repeatable)."),
    arity: int | None = typer.Option(None, help="Number of inputs (e.g. 3 for matmul with bias)."),
    tile: bool = typer.Option(True, "--tile/--no-tile", help="UHOP tile sizes (off: IREE's heuristics)."),
    vectorize: bool = typer.Option(True, "--vectorize/--no-vectorize", help="Vector code (off: scalar)."),
    fuse: bool = typer.Option(True, "--fuse/--no-fuse", help="Elementwise fusion (off: one dispatch per op)."),
    fuse_reductions: bool = typer.Option(False, help="Also fuse chained reductions into one dispatch."),
    strategy: str = typer.Option("auto", help="matmul: auto, tiled, data-tiled, default."),
    tiles: str | None = typer.Option(None, help="tiled matmul: distribution tile MxN per thread, e.g. 128x128."),
    vector_tiles: str | None = typer.Option(None, help="tiled matmul: register tile MxNxK, e.g. 8x32x1."),
    vector_bytes: int = typer.Option(0, help="Vector width in bytes (0: the CPU's SIMD width)."),
    tile_bytes: int = typer.Option(0, help="data-tiled matmul: distribution tile size in bytes (0: IREE's)."),
    distribution: int = typer.Option(0, help="Other ops: distribution tile size (0: IREE's)."),
    max_spills: int = typer.Option(2, help="Register-pressure guard: spills allowed per loop (-1: no guard)."),
) -> None:
    """Emit, run UHOP's passes and compile; write every stage to --out."""
    from uhop.errors import UhopError
    from uhop.mlir.compile import TARGETS, CompileError, compile_module
    from uhop.mlir.emit import emit
    from uhop.mlir.passes import PassConfig, run_passes

    if target not in TARGETS:
        raise _fail(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    _, dims, params, arity = _problem(op, shape, dtype, param, arity)
    try:
        cfg = PassConfig(
            tile=tile, vectorize=vectorize, fuse=fuse, fuse_reductions=fuse_reductions, strategy=strategy, tiles=_ints(tiles, "--tiles", 2),
            vector_tiles=_ints(vector_tiles, "--vector-tiles", 3), vector_bytes=vector_bytes,
            tile_bytes=tile_bytes, distribution=distribution, max_spills=None if max_spills < 0 else max_spills,
        )  # fmt: skip
        emitted = emit(op, dims, dtype, params, arity)
        lowered = run_passes(emitted, cfg, target)
    except UhopError as exc:
        raise _fail(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{op}.mlir").write_text(emitted.text)
    (out / f"{op}.passes.mlir").write_text(lowered.text)
    try:
        vmfb, log = compile_module(
            lowered.text, target, lowered.flags, op=op, decisions=lowered.decisions,
            max_spills=lowered.max_spills, keep=out,
        )  # fmt: skip
    except CompileError as exc:
        raise _fail(str(exc)) from None
    artifact = out / f"{op}.{target}.vmfb"
    artifact.write_bytes(vmfb)
    log.artifact = str(artifact)
    (out / "compile.log").write_text(log.summary() + "\n")
    (out / "compile.json").write_text(json.dumps(log.to_json(), indent=2) + "\n")
    typer.echo(log.summary())
    typer.echo(f"wrote {out}/{op}.mlir, {op}.passes.mlir, {artifact.name}, compile.log, configured/")
