"""``uhop kernel``: check untrusted kernel files in the sandbox and register passing ones.

Exit codes: 0 valid (``check``) or registered (``add``); 1 rejected (one line
``rejected: <category>: <reason>``); 2 bad usage (missing file, unknown op, bad option).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

app = typer.Typer(help="Check and register candidate kernel files (sandboxed).", no_args_is_help=True)


def _usage(msg: str) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(2)


def _run_check(file: Path, op: str | None, dtype: str | None, shapes: list[str] | None, allow: list[str] | None,
               timeout: float, no_time: bool):  # fmt: skip
    from uhop.errors import InputError
    from uhop.ops import REGISTRY
    from uhop.sandbox.check import check_file
    from uhop.sandbox.kernelfile import StaticPolicy
    from uhop.sandbox.worker import Limits, SandboxUnavailable

    if not file.is_file():
        raise _usage(f"FILE must be an existing kernel file, got {str(file)!r}")
    if op is not None and op not in REGISTRY:
        raise _usage(f"--op must be one of {', '.join(sorted(REGISTRY))}, got {op!r}")
    if timeout <= 0:
        raise _usage(f"--timeout must be > 0 seconds, got {timeout}")
    try:
        return check_file(
            file, op, dtype=dtype, shapes=shapes or None, time_it=not no_time,
            limits=Limits(wall_s=timeout, cpu_s=max(1, math.ceil(timeout * 2))),
            policy=StaticPolicy().allowing(allow or ()),
        )  # fmt: skip
    except SandboxUnavailable as exc:
        raise _usage(str(exc)) from None
    except InputError as exc:
        raise _usage(str(exc)) from None


_OP = typer.Option(None, "--op", help="The op the file must implement (default: its OP).")
_DTYPE = typer.Option(None, "--dtype", help="dtype to validate (default float32, or the file's first DTYPES).")
_SHAPE = typer.Option(None, "--shape", help="Validation shape (op's --shape syntax); repeat for several.")
_ALLOW = typer.Option(None, "--allow-import", help="Extra top-level module the static check allows; repeatable.")
_TIMEOUT = typer.Option(20.0, "--timeout", help="Wall-clock limit per sandbox request, seconds.")


@app.command("check")
def check_cmd(
    file: Path = typer.Argument(..., help="Kernel file (see docs/kernel_format.md)."),
    op: str | None = _OP,
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
    dtype: str | None = _DTYPE,
    shape: list[str] | None = _SHAPE,
    allow_import: list[str] | None = _ALLOW,
    timeout: float = _TIMEOUT,
    no_time: bool = typer.Option(False, "--no-time", help="Validate only; skip timing."),
) -> None:
    """Run FILE through the static check, the sandbox and the validator; print its time or why it was rejected."""
    res = _run_check(file, op, dtype, shape, allow_import, timeout, no_time)
    if as_json:
        typer.echo(json.dumps(res.to_json(), indent=2, default=str))
    elif res.ok:
        t = f"{res.median_s * 1e6:.2f} us" if math.isfinite(res.median_s) else "not timed"
        at = f" on {res.shapes[-1]}" if res.shapes and math.isfinite(res.median_s) else ""  # check() times the last shape
        typer.echo(f"valid: {res.op} {t} per call{at}  sha256 {res.sha256[:16]}  sandbox {'+'.join(res.layers)}")
    else:
        typer.echo(res.line())
    raise typer.Exit(0 if res.ok else 1)


@app.command("add")
def add_cmd(
    file: Path = typer.Argument(..., help="Kernel file to register for its op."),
    op: str | None = _OP,
    dtype: str | None = _DTYPE,
    allow_import: list[str] | None = _ALLOW,
    timeout: float = _TIMEOUT,
) -> None:
    """Check FILE and, if it passes, register it (content-hashed) as a candidate for the ``user`` backend."""
    from uhop.backends.user import add_kernel

    res = _run_check(file, op, dtype, None, allow_import, timeout, True)
    if not res.ok:
        typer.echo(res.line())
        raise typer.Exit(1)
    dest = add_kernel(file)
    typer.echo(f"added: {res.op} {dest}  sha256 {res.sha256}")


@app.command("list")
def list_cmd(
    op: str | None = typer.Option(None, "--op", help="Only kernels of this op."),
    as_json: bool = typer.Option(False, "--json", help="Print the registered files as JSON on stdout."),
) -> None:
    """Registered kernel files."""
    from uhop.backends.user import kernels_dir, list_kernels

    kfs = list_kernels(op)
    if as_json:
        typer.echo(json.dumps([{"op": kf.op, "sha256": kf.sha256, "dtypes": list(kf.dtypes), "path": str(kf.path)} for kf in kfs], indent=1))
        return
    if not kfs:
        typer.echo(f"no kernel files registered in {kernels_dir()}")
    for kf in kfs:
        typer.echo(f"{kf.op:12s} {kf.sha256[:16]}  {','.join(kf.dtypes)}  {kf.path}")


@app.command("remove")
def remove_cmd(ref: str = typer.Argument(..., help="Stored name or sha256 prefix (at least 8 characters).")) -> None:
    """Unregister kernel files."""
    from uhop.backends.user import remove_kernel

    if len(ref) < 8:
        raise _usage(f"REF must be at least 8 characters of a stored name or sha256, got {ref!r}")
    gone = remove_kernel(ref)
    if not gone:
        typer.echo(f"no registered kernel matches {ref!r}")
        raise typer.Exit(1)
    for p in gone:
        typer.echo(f"removed: {p}")
