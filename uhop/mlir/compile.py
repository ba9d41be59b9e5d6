"""Compile a (pass-processed) module with IREE for one target, and record what happened.

``iree-compile`` runs as a child process (the binary shipped in ``iree-base-compiler``): a
compiler crash or hang is contained by the timeout, and its diagnostics (LLVM's register
allocation remarks, which the register-pressure guard reads) arrive on stderr. Artifacts are
cached on disk under ``$UHOP_HOME/iree`` by a SHA-256 of the compiler version, target, flags and
module text, so a candidate compiles once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from uhop.errors import InputError, UhopError

#: alignment (bytes) compiled llvm-cpu code may assume for its inputs (the runtime copies others)
ALIGN = 16
#: target name -> (HAL backend, flags). llvm-cpu is compiled for the host CPU.
TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    # Bindings are assumed 16-byte aligned, not 64: numpy's large arrays start 16 bytes into a
    # page, and code compiled for 64-byte alignment uses aligned vector loads that fault on them.
    "llvm-cpu": ("llvm-cpu", ("--iree-llvmcpu-target-cpu=host", f"--iree-stream-resource-min-offset-alignment={ALIGN}")),
    # IREE 3.13's NVPTX path does not accept sm_90 (H100); sm_89 is the newest verified here.
    "cuda": ("cuda", ("--iree-cuda-target=sm_89",)),
    "vulkan-spirv": ("vulkan-spirv", ("--iree-vulkan-target=rdna3",)),
    "metal-spirv": ("metal-spirv", ("--iree-metal-target-platform=macos",)),
    "rocm": ("rocm", ("--iree-rocm-target=gfx942",)),
}
#: targets whose artifacts this machine can run (the others are cross-compiled offline)
RUNNABLE = ("llvm-cpu",)

class CompileError(UhopError):
    """iree-compile failed; the message holds the first lines of its diagnostics."""


class SpillError(CompileError):
    """The register-pressure guard rejected a configuration whose hot loops spill."""


@dataclass
class CompileLog:
    """What one compilation did: decisions taken by the passes, flags, dispatches, spills, time."""

    op: str
    target: str
    flags: list[str]
    decisions: dict[str, Any] = field(default_factory=dict)
    dispatches: list[dict[str, Any]] = field(default_factory=list)
    spills: int = 0
    reloads: int = 0
    seconds: float = 0.0
    cached: bool = False
    artifact: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Human-readable lines: tile sizes, vector width, fusions, dispatches, spills."""
        d = self.decisions
        lines = [f"{self.op} -> {self.target} ({'cached' if self.cached else f'{self.seconds:.2f} s'})"]
        for key in ("strategy", "tiling", "vectorization", "fusion"):
            if key in d:
                lines.append(f"  {key}: {d[key]}")
        for disp in self.dispatches:
            cfg = "; ".join(disp.get("lowering_configs", [])) or "-"
            lines.append(f"  dispatch {disp['name']}: {disp['linalg_ops']} linalg op(s) fused; {cfg}")
        lines.append(f"  register pressure: {self.spills} spills / {self.reloads} reloads in loops")
        lines.append(f"  flags: {' '.join(self.flags)}")
        return "\n".join(lines)


def compiler_version() -> str:
    from importlib.metadata import version

    try:
        return version("iree-base-compiler")
    except Exception:  # pragma: no cover - only when installed oddly
        return "unknown"


def iree_compile_binary() -> str:
    from iree.compiler.tools import binaries

    return binaries.find_tool("iree-compile")


def target_flags(target: str) -> list[str]:
    if target not in TARGETS:
        raise InputError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    backend, extra = TARGETS[target]
    # IREE demotes f64 to f32 by default; UHOP's float64 problems must stay float64.
    return ["--iree-hal-target-device=" + _device(backend), *_backend_flag(backend), *extra,
            "--iree-input-demote-f64-to-f32=false"]  # fmt: skip


def _device(backend: str) -> str:
    return {"llvm-cpu": "local", "cuda": "cuda", "vulkan-spirv": "vulkan", "metal-spirv": "metal", "rocm": "hip"}[backend]


def _backend_flag(backend: str) -> list[str]:
    return ["--iree-hal-local-target-device-backends=llvm-cpu"] if backend == "llvm-cpu" else []


def cache_dir() -> Path:
    from uhop.config import settings

    d = Path(settings().home) / "iree"
    d.mkdir(parents=True, exist_ok=True)
    return d


def compile_module(
    text: str,
    target: str = "llvm-cpu",
    flags: list[str] | None = None,
    *,
    op: str = "",
    decisions: dict[str, Any] | None = None,
    max_spills: int | None = None,
    timeout_s: float = 300.0,
    keep: Path | None = None,
    use_cache: bool = True,
) -> tuple[bytes, CompileLog]:
    """Compile module ``text`` for ``target`` with extra ``flags``; returns (vmfb bytes, log).

    ``max_spills`` (llvm-cpu only): raise :class:`SpillError` if LLVM's register allocator reports
    more spills than this in any loop of the generated code. ``keep``: a directory that receives
    the per-dispatch configured sources (the lowering configs IREE used) and the artifact.
    """
    all_flags = target_flags(target) + list(flags or [])
    guard = max_spills is not None and target == "llvm-cpu"
    if target == "llvm-cpu":  # LLVM's register allocator reports spills per loop as remarks
        all_flags.append("--pass-remarks-missed=regalloc")
    log = CompileLog(op=op, target=target, flags=all_flags, decisions=dict(decisions or {}))
    key = hashlib.sha256(json.dumps([compiler_version(), target, all_flags, text]).encode()).hexdigest()[:24]
    cached_bin = cache_dir() / f"{key}.vmfb"
    cached_log = cache_dir() / f"{key}.json"
    if use_cache and keep is None and cached_bin.exists() and cached_log.exists():
        meta = json.loads(cached_log.read_text())
        log.dispatches, log.spills, log.reloads = meta["dispatches"], meta["spills"], meta["reloads"]
        log.cached, log.artifact = True, str(cached_bin)
        _check_spills(log, max_spills if guard else None)
        return cached_bin.read_bytes(), log

    with tempfile.TemporaryDirectory(prefix="uhop-iree-") as tmp:
        src, out, cfg = Path(tmp, "module.mlir"), Path(tmp, "module.vmfb"), Path(tmp, "configs")
        src.write_text(text)
        cmd = [iree_compile_binary(), str(src), "-o", str(out), f"--iree-hal-dump-executable-configurations-to={cfg}",
               *all_flags]  # fmt: skip
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise CompileError(f"iree-compile for {target} took longer than {timeout_s:.0f} s") from None
        log.seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "error" in ln] or proc.stderr.splitlines()
            raise CompileError(f"iree-compile failed for {target}: " + " | ".join(errors[:3])[:600])
        log.spills, log.reloads = _loop_spills(proc.stderr)
        log.dispatches = _dispatches(cfg)
        binary = out.read_bytes()
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            if cfg.exists():
                shutil.copytree(cfg, keep / "configured", dirs_exist_ok=True)
        _atomic_write(cached_bin, binary)
        _atomic_write(cached_log, json.dumps({"dispatches": log.dispatches, "spills": log.spills,
                                               "reloads": log.reloads}).encode())  # fmt: skip
    log.artifact = str(cached_bin)
    _check_spills(log, max_spills if guard else None)
    return binary, log


def _check_spills(log: CompileLog, max_spills: int | None) -> None:
    if max_spills is not None and log.spills > max_spills:
        tiles = log.decisions.get("tiling", "the chosen tiles")
        raise SpillError(
            f"register-pressure guard: the compiled {log.op} spills {log.spills} registers in its loops "
            f"(limit {max_spills}) with {tiles}; use smaller vector tiles (fewer accumulators than the "
            f"target's vector registers) or pass --max-spills to accept it"
        )


def _loop_spills(stderr: str) -> tuple[int, int]:
    """The largest spill and reload counts LLVM's register allocator reports for any loop nest
    (its remarks nest: an outer loop's count includes its inner loops')."""
    spills = reloads = 0
    for line in stderr.splitlines():
        if "generated in loop" not in line:
            continue
        s = re.search(r"(\d+) spills ", line)
        r = re.search(r"(\d+) reloads ", line)
        spills = max(spills, int(s.group(1)) if s else 0)
        reloads = max(reloads, int(r.group(1)) if r else 0)
    return spills, reloads


def _dispatches(cfg_dir: Path) -> list[dict[str, Any]]:
    """One entry per dispatch IREE formed: name, linalg ops fused into it, lowering configs."""
    out = []
    if not cfg_dir.exists():
        return out
    for f in sorted(cfg_dir.glob("*.mlir")):
        text = f.read_text()
        names = re.findall(r"func\.func @(\w+)\(", text)
        ops = re.findall(r"= (linalg\.\w+|linalg_ext\.\w+|iree_linalg_ext\.\w+|iree_codegen\.ukernel\.\w+)", text)
        work = [o for o in ops if o not in ("linalg.fill", "linalg.yield", "linalg.index")]
        configs = sorted(set(re.findall(r"lowering_config = (#iree_cpu\.lowering_config<[^>]*>)", text)))
        out.append({"name": names[0] if names else f.stem, "linalg_ops": len(work), "ops": work,
                    "lowering_configs": configs})  # fmt: skip
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
