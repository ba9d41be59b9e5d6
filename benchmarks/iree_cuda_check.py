"""IREE's CUDA artifacts on a GPU: compile here, carry the .vmfb files, load, validate and time
them there beside torch's CUDA kernels.

IREE 3.13 refuses ``--iree-cuda-target=sm_90`` (H100), so the artifacts are built for sm_89, the
newest target it accepts; IREE's CUDA HAL embeds PTX, which the driver JIT-compiles for the GPU
it runs on. ``--compile`` records the refusal (the exact error) in the manifest.

Here (iree-base-compiler installed):

    python benchmarks/iree_cuda_check.py --compile .iree_cuda

On the GPU machine (iree-base-runtime only, no compiler), from the repo root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu_wheels/iree_base_runtime*.whl
    PYTHONPATH=/tmp/site:. python3 benchmarks/iree_cuda_check.py --run .iree_cuda --out $OUT/iree_cuda_h100.json

Dry run of the run path on the CPU (llvm-cpu artifacts, local-task driver, torch on the CPU):

    python benchmarks/iree_cuda_check.py --compile /tmp/ic --target llvm-cpu --small
    python benchmarks/iree_cuda_check.py --run /tmp/ic --driver local-task --out /tmp/ic.json

Every row is validated against the op's float64 reference under the op's tolerance
(``uhop.measure.validate.compare``) and timed with ``uhop.measure.bench.benchmark`` (host clock,
device synchronized around each sample, median of ``--repeat`` samples, best of ``--rounds``
interleaved rounds). IREE's inputs are copied to device buffers once; a timed call is one
``invoke`` (IREE's sync ABI: it returns once its result is ready, including the allocation of
the result buffer), the result is copied back only for validation. torch runs the same op
(``torch.matmul``/``addmm`` + gelu, ``softmax``, ``layer_norm``, the elementwise chain) in float32
with TF32 off. No single failure stops the run: errors are recorded per row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MANIFEST = "manifest.json"
#: the elementwise chain: 2 inputs, 8 ops (sigmoid, tanh and a cube among them)
CHAIN = "sigmoid(x0*1.5+0.5)*x1-x0**3+tanh(x1)"
#: target names iree-compile is asked about; the first accepted one is what TARGETS["cuda"] uses
PROBE_ARCHS = ("sm_90", "sm_90a", "sm_89")


@dataclass(frozen=True)
class Case:
    name: str
    op: str
    dims: dict[str, int]
    params: dict[str, Any] = field(default_factory=dict)
    arity: int | None = None


CASES = (
    Case("matmul_1024", "matmul", {"B": 1, "M": 1024, "N": 1024, "K": 1024}, {}, 2),
    Case("matmul_2048", "matmul", {"B": 1, "M": 2048, "N": 2048, "K": 2048}, {}, 2),
    Case("matmul_bias_gelu", "matmul", {"B": 1, "M": 2048, "N": 4096, "K": 1024}, {"activation": "gelu"}, 3),
    Case("softmax", "softmax", {"R": 8192, "N": 4096}),
    Case("layernorm", "layernorm", {"R": 8192, "N": 4096}, {"eps": 1e-5}, 3),
    Case("elementwise", "elementwise", {"N": 1 << 24}, {"expr": CHAIN}),
)
#: the same ops at sizes a 2-core CPU runs in seconds (dry runs, tests); odd sizes on purpose
SMALL = (
    Case("matmul_1024", "matmul", {"B": 1, "M": 64, "N": 48, "K": 33}, {}, 2),
    Case("matmul_2048", "matmul", {"B": 1, "M": 128, "N": 128, "K": 128}, {}, 2),
    Case("matmul_bias_gelu", "matmul", {"B": 1, "M": 31, "N": 64, "K": 17}, {"activation": "gelu"}, 3),
    Case("softmax", "softmax", {"R": 37, "N": 129}),
    Case("layernorm", "layernorm", {"R": 19, "N": 257}, {"eps": 1e-5}, 3),
    Case("elementwise", "elementwise", {"N": 10007}, {"expr": CHAIN}),
)


# ---- compile (needs iree-base-compiler) ---------------------------------------------------------
def probe_archs(archs: tuple[str, ...] = PROBE_ARCHS) -> list[dict[str, Any]]:
    """Ask iree-compile to build a small elementwise module for each CUDA arch; the error text
    (first ``error:`` line, temp paths removed) for each one it refuses."""
    from uhop.mlir.compile import CompileError, compile_module
    from uhop.mlir.emit import emit

    text = emit("elementwise", {"N": 4}, "float32", {"expr": "x0+x1"}).text
    out = []
    for arch in archs:
        flag = f"--iree-cuda-target={arch}"
        try:
            # A later --iree-cuda-target overrides the default sm_89 (LLVM options: last one wins).
            compile_module(text, "cuda", [flag], op="elementwise", use_cache=False)
            out.append({"arch": arch, "flag": flag, "accepted": True, "error": ""})
        except CompileError as exc:
            out.append({"arch": arch, "flag": flag, "accepted": False, "error": error_text(str(exc))})
    return out


def error_text(message: str) -> str:
    """``error: ...`` from an iree-compile failure, without the temp file's path and position."""
    m = re.search(r"error: ([^|]*)", message)
    return ("error: " + m.group(1)).strip() if m else message.strip()


def compile_all(out_dir: Path, target: str, cases: tuple[Case, ...]) -> dict[str, Any]:
    from uhop.mlir.compile import compile_module, compiler_version, target_flags
    from uhop.mlir.emit import emit
    from uhop.mlir.passes import PassConfig, run_passes

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "iree_compiler": compiler_version(), "target": target, "target_flags": target_flags(target),
        "dtype": "float32", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", *sys.argv]), "artifacts": [], "failed": [],
    }  # fmt: skip
    if target == "cuda":
        manifest["arch_probe"] = probe_archs()
    for case in cases:
        try:
            emitted = emit(case.op, case.dims, "float32", case.params, case.arity)
            # UHOP tunes tiles for llvm-cpu only: for cuda the passes keep IREE's GPU heuristics
            # (fusion still applies); for llvm-cpu the default config (data-tiled matmul).
            lowered = run_passes(emitted, PassConfig(), target)
            vmfb, log = compile_module(lowered.text, target, lowered.flags, op=case.op, decisions=lowered.decisions,
                                       max_spills=lowered.max_spills, use_cache=False)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - recorded, the other cases go on
            manifest["failed"].append({"name": case.name, "error": f"{type(exc).__name__}: {exc}"[:800]})
            print(f"{case.name}: FAILED {type(exc).__name__}: {exc}"[:300])
            continue
        path = out_dir / f"{case.name}.{target}.vmfb"
        path.write_bytes(vmfb)
        manifest["artifacts"].append({
            "name": case.name, "op": case.op, "dims": dict(emitted.dims), "params": dict(emitted.params),
            "arity": len(emitted.input_shapes), "dtype": "float32", "input_shapes": emitted.input_shapes,
            "output_shape": emitted.output_shape, "entry": emitted.entry, "file": path.name, "bytes": len(vmfb),
            "sha256": hashlib.sha256(vmfb).hexdigest(), "flags": log.flags, "compile_s": round(log.seconds, 3),
            "decisions": log.decisions, "dispatches": [d["name"] for d in log.dispatches],
        })  # fmt: skip
        print(
            f"{case.name:18s} {len(vmfb) / 1024:8.1f} KiB  {log.seconds:6.2f} s  {len(log.dispatches)} dispatch(es)"
        )
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for p in manifest.get("arch_probe", []):
        print(f"  {p['flag']}: {'accepted' if p['accepted'] else p['error']}")
    return manifest


# ---- run (needs iree-base-runtime, numpy, torch) ------------------------------------------------
_REEXEC = "_IREE_CUDA_CHECK_LINKED"


def ensure_dev_library(dev: str = "libcuda.so", runtime: str = "libcuda.so.1") -> str:
    """Make ``dev`` loadable by name; returns how it is found.

    IREE's CUDA driver dlopens ``libcuda.so`` (the unversioned development name); a driver
    install may ship only ``libcuda.so.1``. Then this links ``dev`` to the loaded ``runtime``
    library in a temp directory and re-executes the script with that directory on
    LD_LIBRARY_PATH (the dynamic loader reads it only at process start)."""
    import ctypes

    try:
        ctypes.CDLL(dev)
        linked = os.environ.get(_REEXEC)
        return f"{dev} linked to {linked} (LD_LIBRARY_PATH)" if linked else f"{dev} found by the loader"
    except OSError:
        pass
    if os.environ.get(_REEXEC):
        return f"{dev} not loadable even after linking it to {os.environ[_REEXEC]}"
    try:
        ctypes.CDLL(runtime)
    except OSError as exc:
        return f"neither {dev} nor {runtime} loadable ({exc})"
    with open("/proc/self/maps") as f:
        path = next((ln.split()[-1] for ln in f if f"/{dev}" in ln), None)
    if path is None:
        return f"{runtime} loaded but not found in /proc/self/maps"
    # One folder per user, private: another user's folder of the same name (a run as root left
    # /tmp/uhop-iree-libs behind) cannot be written, and a link planted there must not be loaded.
    d = Path(tempfile.gettempdir()) / f"uhop-iree-libs-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    if d.stat().st_uid != os.getuid() or d.is_symlink():
        return f"{d} belongs to another user; remove it"
    link = d / dev
    link.unlink(missing_ok=True)
    link.symlink_to(path)
    ld = ":".join(x for x in (str(d), os.environ.get("LD_LIBRARY_PATH", "")) if x)
    sys.stdout.flush()
    os.execve(
        sys.executable, [sys.executable, *sys.argv], {**os.environ, "LD_LIBRARY_PATH": ld, _REEXEC: path}
    )
    return "unreachable"  # pragma: no cover - execve does not return


def environment(driver: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "driver_name": driver,
        # e.g. "--cuda_use_streams=true --cuda_async_allocations=false" if CUDA graphs or
        # stream-ordered allocations fail on the machine (iree.runtime parses it at import)
        "iree_runtime_flags": os.environ.get("IREE_PY_RUNTIME_FLAGS"),
    }
    try:
        env["iree_runtime"] = version("iree-base-runtime")
    except PackageNotFoundError:
        env["iree_runtime"] = None
    try:
        import iree.runtime.version as iv

        env["iree_runtime_build"] = iv.VERSION
    except Exception as exc:  # noqa: BLE001
        env["iree_runtime_build"] = f"unknown ({type(exc).__name__})"
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = props.name
            env["capability"] = f"sm_{props.major}{props.minor}"
    except Exception as exc:  # noqa: BLE001
        env["torch"] = f"unavailable ({type(exc).__name__}: {exc})"
    env["gpu_driver"] = _gpu_driver()
    return env


def _gpu_driver() -> str | None:
    from uhop.problem import _driver_version

    v = _driver_version()
    if v:
        return v
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _err(stage: str, exc: BaseException) -> str:
    return f"{stage}: {type(exc).__name__}: {' '.join(str(exc).split())}"[:800]


def run_all(
    in_dir: Path,
    driver: str,
    repeat: int,
    rounds: int,
    min_time_s: float,
    only: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    from uhop.mlir.runtime import device_error

    manifest = json.loads((in_dir / MANIFEST).read_text())
    env = environment(driver)
    device_ok = device_error(driver)
    result: dict[str, Any] = {
        "env": env, "manifest": {k: v for k, v in manifest.items() if k != "artifacts"},
        "iree_device_error": device_ok, "repeat": repeat, "rounds": rounds, "rows": [],
        "command": " ".join(["python3", *sys.argv]),
    }  # fmt: skip
    torch_device = _torch_device(driver)
    result["torch_device"] = torch_device
    for art in [a for a in manifest["artifacts"] if not only or a["name"] in only]:
        row = run_one(in_dir, art, driver, device_ok, torch_device, repeat, rounds, min_time_s)
        result["rows"].append(row)
        print(_line(row), flush=True)
    rows = result["rows"]
    # The question of issue #8: did the artifacts built for the manifest's target load and run here?
    result["artifacts_on_device"] = {
        "target_flags": manifest.get("target_flags"), "device": env.get("gpu") or driver,
        "capability": env.get("capability"), "of": len(rows), "loaded": sum(r["load_ok"] for r in rows),
        "ran": sum(r["ran"] for r in rows), "validated": sum(r["validated"] for r in rows),
    }  # fmt: skip
    return result


def _torch_device(driver: str) -> str:
    try:
        import torch

        if driver in ("cuda", "hip") and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False  # float32 against float32: no TF32 GEMMs
            torch.backends.cudnn.allow_tf32 = False
            return "cuda"
    except Exception:  # noqa: BLE001 - torch missing: rows record it
        pass
    return "cpu"


def run_one(
    in_dir: Path,
    art: dict[str, Any],
    driver: str,
    device_err: str | None,
    torch_device: str,
    repeat: int,
    rounds: int,
    min_time_s: float,
) -> dict[str, Any]:
    """One artifact: load, validate the first result, time IREE and torch in interleaved rounds.
    Every failure is recorded in the row's ``errors`` (prefixed by its stage)."""
    from uhop.measure.validate import compare
    from uhop.mlir.runtime import IreeModule
    from uhop.problem import Problem

    row: dict[str, Any] = {"name": art["name"], "op": art["op"], "dims": art["dims"], "params": art["params"],
                           "file": art["file"], "load_ok": False, "ran": False, "validated": False,
                           "errors": []}  # fmt: skip
    problem = Problem.make(art["op"], art["dims"], art["dtype"], art["params"], art["arity"])
    spec = problem.spec
    row["rtol"], row["atol"] = spec.tolerance(problem.dtype, problem.dim, problem.param)
    rng = np.random.default_rng(0)
    sets = [spec.make_inputs(problem.dim, problem.param, rng, problem.dtype, problem.arity) for _ in range(2)]
    ref = spec.reference(*[x.astype(np.float64) for x in sets[0]], **problem.param)
    iree_t: list[float] = []
    torch_t: list[float] = []
    module = views = None
    if device_err:
        row["errors"].append(f"device: {device_err}")
    else:
        try:
            t0 = time.perf_counter()
            module = IreeModule((in_dir / art["file"]).read_bytes(), entry=art["entry"], driver=driver)
            row["load_s"] = round(time.perf_counter() - t0, 3)
            row["load_ok"], row["synchronous"] = True, module.synchronous
        except Exception as exc:  # noqa: BLE001 - a module that does not load is this row's result
            row["errors"].append(_err("load", exc))
    if module is not None:
        try:
            views = [[module.to_device(x) for x in s] for s in sets]
            t0 = time.perf_counter()
            out = module.to_host(module.invoke(*views[0]))
            row["first_call_s"] = round(time.perf_counter() - t0, 3)  # includes the PTX JIT, if lazy
            row["ran"] = True
            verdict = compare(out, ref, problem)
            row["validated"], row["max_err"] = verdict.ok, verdict.max_err
            if not verdict.ok:
                row["errors"].append(f"validate: {verdict.status}: {verdict.reason}")
        except Exception as exc:  # noqa: BLE001
            row["errors"].append(_err("run", exc))
            views = None
    sync = None
    if views is not None:
        try:
            module.sync()
            sync = module.sync
            row["iree_sync"] = "queue barrier"
        except Exception as exc:  # noqa: BLE001 - the sync ABI already waits; record why there is no barrier
            row["iree_sync"] = f"sync ABI only ({_err('barrier', exc)})"
    tkernel, targs, tsync = _torch_side(problem, sets, ref, torch_device, row)
    for _ in range(max(rounds, 1)):  # interleaved rounds: both sides see the same machine state
        if views is not None:
            try:
                iree_t.append(_time(module.invoke, views, sync, repeat, min_time_s))
            except Exception as exc:  # noqa: BLE001
                row["errors"].append(_err("time iree", exc))
                views = None
        if tkernel is not None:
            try:
                torch_t.append(_time(tkernel, targs, tsync, repeat, min_time_s))
            except Exception as exc:  # noqa: BLE001
                row["errors"].append(_err("time torch", exc))
                tkernel = None
    row["iree_ms"] = min(iree_t) * 1e3 if iree_t else None
    row["torch_ms"] = min(torch_t) * 1e3 if torch_t else None
    row["iree_rounds_ms"] = [t * 1e3 for t in iree_t]
    row["torch_rounds_ms"] = [t * 1e3 for t in torch_t]
    row["ratio"] = row["iree_ms"] / row["torch_ms"] if row["iree_ms"] and row["torch_ms"] else None
    if row["iree_ms"]:
        row["iree_gflops"] = problem.flops() / (row["iree_ms"] * 1e-3) / 1e9
        row["iree_gbps"] = problem.bytes() / (row["iree_ms"] * 1e-3) / 1e9
    views = module = targs = tkernel = None  # free device buffers before the next case
    _release(torch_device)
    return row


def _torch_side(problem, sets, ref, device, row):
    """torch's kernel for the problem (the torch backend's eager candidate), its inputs on
    ``device``, and a sync function; validated like the IREE side."""
    try:
        import torch

        from uhop.backends import get
        from uhop.backends.base import Candidate
        from uhop.measure.validate import compare

        p = problem
        prob = type(p).make(p.op, p.dim, p.dtype, p.param, p.arity, device=device, array="torch")
        kernel = get("torch").compile(Candidate.of("torch", "eager"), prob)
        args = [[torch.from_numpy(x).to(device) for x in s] for s in sets]
        sync = torch.cuda.synchronize if device == "cuda" else None
        out = kernel(*args[0])
        verdict = compare(out.cpu().numpy(), ref, problem)
        row["torch_validated"], row["torch_max_err"] = verdict.ok, verdict.max_err
        return kernel, args, sync
    except Exception as exc:  # noqa: BLE001
        row["errors"].append(_err("torch", exc))
        return None, None, None


def _time(fn, arg_sets, sync, repeat: int, min_time_s: float) -> float:
    from uhop.measure.bench import benchmark

    return benchmark(fn, arg_sets, sync=sync, warmup=3, repeat=repeat, min_time_s=min_time_s).median_s


def _release(device: str) -> None:
    if device == "cuda":
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass


# ---- output ---------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str) -> str:
    width = int(spec.split(".")[0]) if spec[0].isdigit() else 0
    return f"{'-':>{width}s}" if v is None else format(v, spec)


def _line(row: dict[str, Any]) -> str:
    dims = "x".join(str(v) for k, v in row["dims"].items() if not (k == "B" and v == 1))
    ok = "yes" if row["validated"] else ("load-fail" if not row["load_ok"] else "NO")
    return (f"{row['name']:18s} {dims:16s} {('yes' if row['load_ok'] else 'no'):5s} {ok:9s} "
            f"{_fmt(row.get('max_err'), '9.2e')} {_fmt(row.get('iree_ms'), '9.3f')} {_fmt(row.get('torch_ms'), '9.3f')} "
            f"{_fmt(row.get('ratio'), '7.2f')}")  # fmt: skip


HEADER = f"{'case':18s} {'dims':16s} {'load':5s} {'valid':9s} {'max err':>9s} {'iree ms':>9s} {'torch ms':>9s} {'ratio':>7s}"


def summary(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [
        f"GPU {env.get('gpu', '-')} ({env.get('capability', '-')}), driver {env.get('gpu_driver')}, CUDA {env.get('cuda')}, "
        f"torch {env.get('torch')} on {result['torch_device']}, IREE runtime {env.get('iree_runtime')} "
        f"(driver {env['driver_name']}), artifacts: IREE {result['manifest'].get('iree_compiler')} "
        f"{result['manifest'].get('target')} {' '.join(result['manifest'].get('target_flags', []))}",
        HEADER,
        *[_line(r) for r in result["rows"]],
        "ratio = iree ms / torch ms (below 1: IREE faster)",
    ]  # fmt: skip
    d = result.get("artifacts_on_device", {})
    lines.append(f"artifacts on {d.get('device')} ({d.get('capability')}): {d.get('loaded')}/{d.get('of')} loaded, "
                 f"{d.get('ran')} ran, {d.get('validated')} validated")  # fmt: skip
    if result.get("iree_device_error"):
        lines.append(f"IREE device: {result['iree_device_error']}")
    for r in result["rows"]:
        for e in r["errors"]:
            lines.append(f"  {r['name']}: {e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--compile", type=Path, metavar="DIR", help="compile the artifacts and manifest into DIR"
    )
    mode.add_argument("--run", type=Path, metavar="DIR", help="load, validate and time the artifacts in DIR")
    ap.add_argument("--target", default="cuda", help="--compile: IREE target (cuda; llvm-cpu for a dry run)")
    ap.add_argument("--small", action="store_true", help="--compile: small shapes (dry runs, tests)")
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument(
        "--driver", default="cuda", help="--run: IREE HAL driver (cuda; local-task for a dry run)"
    )
    ap.add_argument("--out", type=Path, help="--run: JSON results file")
    ap.add_argument("--repeat", type=int, default=25, help="--run: timed samples per round (>= 20)")
    ap.add_argument(
        "--rounds", type=int, default=2, help="--run: interleaved IREE/torch rounds (best median kept)"
    )
    ap.add_argument("--min-time", type=float, default=0.25, help="--run: seconds of timed calls per round")
    args = ap.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    if args.compile is not None:
        from uhop.mlir.compile import TARGETS

        if args.target not in TARGETS:
            ap.error(f"--target must be one of {', '.join(TARGETS)}, got {args.target!r}")
        cases = tuple(c for c in (SMALL if args.small else CASES) if not only or c.name in only)
        if not cases:
            ap.error(f"--only matched no case; cases: {', '.join(c.name for c in CASES)}")
        manifest = compile_all(args.compile, args.target, cases)
        print(f"wrote {len(manifest['artifacts'])} artifact(s) and {MANIFEST} to {args.compile}")
        return 1 if manifest["failed"] else 0
    if args.out is None:
        ap.error("--run needs --out FILE.json")
    if args.repeat < 1:
        ap.error(f"--repeat must be a positive integer, got {args.repeat}")
    if not (args.run / MANIFEST).exists():
        ap.error(f"--run: {args.run / MANIFEST} not found; compile first with --compile {args.run}")
    libcuda = ensure_dev_library() if args.driver == "cuda" else None
    print(HEADER, flush=True)
    try:
        result = run_all(args.run, args.driver, args.repeat, args.rounds, args.min_time, only)
    except Exception as exc:  # noqa: BLE001 - leave a JSON behind whatever happened
        result = {"fatal": _err("run", exc), "traceback": traceback.format_exc()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(result["traceback"])
        return 2
    result["env"]["libcuda"] = libcuda
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(summary(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
