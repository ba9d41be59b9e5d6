"""Every ``UHOP_*`` setting, declared once, typed, with a context override for tests.

Settings are read from the environment when :func:`settings` is first called and cached;
:func:`override` swaps in changed values for the duration of a ``with`` block (tests, CLI flags).

| variable | default | meaning |
| --- | --- | --- |
| ``UHOP_HOME`` | user cache dir / ``uhop`` | where the kernel store and artifacts live |
| ``UHOP_STORE`` | ``sqlite:///$UHOP_HOME/uhop.db`` | store URL (``sqlite:///path`` or ``postgresql://...``) |
| ``UHOP_DISABLE`` | ``0`` | ``1``: ``@uhop.optimize`` calls the user's function directly |
| ``UHOP_POLICY`` | ``background`` | how ``@uhop.optimize`` / ``uhop.ops`` handle a new problem: ``background`` (serve the library baseline at once, tune in a background thread, swap the winner in), ``tune`` (tune before returning) or ``fast`` (choose without timing) |
| ``UHOP_THREADS`` | ``passive`` | thread pools' wait policy (``uhop/threads.py``): ``passive`` makes OpenMP pools started after ``import uhop`` sleep when idle, so the next library's threads get the cores; ``default`` leaves the libraries alone |
| ``UHOP_EXIT_WAIT_S`` | ``20`` | at interpreter exit, how long background tuning still running may take to finish and store its pick (``0``: abandon it) |
| ``UHOP_TUNE_BUDGET_S`` | ``10`` | wall-clock budget for tuning one problem, seconds |
| ``UHOP_BENCH_MIN_S`` | ``0.05`` | minimum measured time per candidate, seconds |
| ``UHOP_BENCH_REPEAT`` | ``7`` | maximum timed repeats per candidate |
| ``UHOP_SHAPE_BUCKETS`` | ``exact`` | ``exact`` or ``pow2``: how dims map to a shape class |
| ``UHOP_BACKENDS`` | (all) | comma-separated allowlist of backend names |
| ``UHOP_VALIDATION_TRIALS`` | ``3`` | fresh random draws each candidate must pass |
| ``UHOP_LOG`` | ``WARNING`` | log level of the ``uhop`` logger (the ``uhop`` command and the demo default to ``INFO``) |
| ``UHOP_DEBUG`` | ``0`` | ``1``: a failing ``uhop`` command raises with its traceback instead of one line on stderr |
| ``UHOP_ISOLATE`` | ``auto`` | where tuning runs candidates: ``auto`` (GPU problems, and on CPU the backends that JIT-compile native code, in a long-lived worker process; numpy/torch CPU kernels in-process), ``1`` (always a worker), ``0`` (never). In a worker, a kernel that kills its process (segfault, illegal address, compiler abort, a hang) is a recorded failure, not the caller's death, and a CUDA context it poisoned is discarded |
| ``UHOP_PRECOMPILE_WORKERS`` | ``auto`` | processes that build JIT candidates (numba, IREE) ahead of their evaluation during tuning, so the evaluation loads them from the on-disk cache: ``auto`` is ``min(8, cores - 2)`` (none on 2 cores, where a compiler would share the timed core), ``0`` turns it off |
| ``UHOP_ISOLATE_TIMEOUT_S`` | ``120`` | a candidate evaluated in the worker for longer than this is killed and recorded as ``timeout`` |
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: dispatch policies (``UHOP_POLICY``, ``@uhop.optimize(policy=...)``)
POLICIES = ("background", "tune", "fast")


def _default_home() -> Path:
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("uhop"))
    except ImportError:  # pragma: no cover - platformdirs is a core dependency
        return Path.home() / ".cache" / "uhop"


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _isolate_mode(raw: str) -> str:
    v = raw.strip().lower() or "auto"
    return {"1": "always", "true": "always", "yes": "always", "on": "always", "always": "always",
            "0": "never", "false": "never", "no": "never", "off": "never", "never": "never"}.get(v, v)  # fmt: skip


def _workers(raw: str) -> int:
    raw = raw.strip().lower()
    if raw in ("", "auto"):
        return -1
    try:
        n = int(raw)
    except ValueError:
        n = -2
    if n < 0:
        raise ValueError(f"UHOP_PRECOMPILE_WORKERS must be 'auto' or a number >= 0, got {raw!r}")
    return n


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=_default_home)
    store_url: str = ""
    disable: bool = False
    policy: str = "background"
    exit_wait_s: float = 20.0
    tune_budget_s: float = 10.0
    bench_min_s: float = 0.05
    bench_repeat: int = 7
    shape_buckets: str = "exact"
    backends: tuple[str, ...] = ()
    validation_trials: int = 3
    log_level: str = "WARNING"
    isolate: str = "auto"
    isolate_timeout_s: float = 120.0
    precompile_workers: int = -1  # -1: auto (see precompile_processes)
    debug: bool = False

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"UHOP_POLICY must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.shape_buckets not in ("exact", "pow2"):
            raise ValueError(f"UHOP_SHAPE_BUCKETS must be 'exact' or 'pow2', got {self.shape_buckets!r}")
        if self.tune_budget_s <= 0:
            raise ValueError(f"UHOP_TUNE_BUDGET_S must be > 0, got {self.tune_budget_s}")
        if isinstance(self.isolate, bool):  # override(isolate=True) in tests and scripts
            object.__setattr__(self, "isolate", "always" if self.isolate else "never")
        if self.isolate not in ("auto", "always", "never"):
            raise ValueError(f"UHOP_ISOLATE must be auto, 1 or 0, got {self.isolate!r}")
        if self.isolate_timeout_s <= 0:
            raise ValueError(f"UHOP_ISOLATE_TIMEOUT_S must be > 0, got {self.isolate_timeout_s}")
        if self.validation_trials < 1:
            raise ValueError(f"UHOP_VALIDATION_TRIALS must be >= 1, got {self.validation_trials}")

    def isolates(self, device: str, backend: object = None) -> bool:
        """Whether tuning on ``device`` measures ``backend``'s candidates in a worker process:
        ``auto`` isolates every GPU candidate and, on CPU, backends that run generated native code
        (``Backend.crash_prone``: numba, IREE, Triton); numpy and torch's CPU kernels run here."""
        if self.isolate != "auto":
            return self.isolate == "always"
        return device != "cpu" or bool(getattr(backend, "crash_prone", False))

    @property
    def precompile_processes(self) -> int:
        """How many processes build JIT candidates ahead during tuning (``UHOP_PRECOMPILE_WORKERS``)."""
        if self.precompile_workers >= 0:
            return self.precompile_workers
        return max(0, min(8, (os.cpu_count() or 1) - 2))

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.home / 'uhop.db'}"

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        home = env("UHOP_HOME")
        backends = tuple(b.strip() for b in env("UHOP_BACKENDS", "").split(",") if b.strip())
        return cls(
            home=Path(home).expanduser() if home else _default_home(),
            store_url=env("UHOP_STORE", ""),
            disable=_env_bool("UHOP_DISABLE", False),
            policy=env("UHOP_POLICY", "background").strip().lower(),
            exit_wait_s=float(env("UHOP_EXIT_WAIT_S", "20")),
            tune_budget_s=float(env("UHOP_TUNE_BUDGET_S", "10")),
            bench_min_s=float(env("UHOP_BENCH_MIN_S", "0.05")),
            bench_repeat=int(env("UHOP_BENCH_REPEAT", "7")),
            shape_buckets=env("UHOP_SHAPE_BUCKETS", "exact").strip().lower(),
            backends=backends,
            validation_trials=int(env("UHOP_VALIDATION_TRIALS", "3")),
            log_level=env("UHOP_LOG", "WARNING").upper(),
            isolate=_isolate_mode(env("UHOP_ISOLATE", "auto")),
            isolate_timeout_s=float(env("UHOP_ISOLATE_TIMEOUT_S", "120")),
            precompile_workers=_workers(env("UHOP_PRECOMPILE_WORKERS", "auto")),
            debug=_env_bool("UHOP_DEBUG", False),
        )


_current: Settings | None = None


_thread = threading.local()


def settings() -> Settings:
    """The settings in force: this thread's (:func:`use`), else the environment at first use or
    the innermost :func:`override`."""
    global _current
    mine = getattr(_thread, "settings", None)
    if mine is not None:
        return mine
    if _current is None:
        _current = Settings.from_env()
    return _current


@contextlib.contextmanager
def use(s: Settings) -> Iterator[Settings]:
    """Run the block in this thread under ``s`` (background work keeps the settings in force
    when it was queued, whatever the caller's thread overrides later)."""
    previous = getattr(_thread, "settings", None)
    _thread.settings = s
    try:
        yield s
    finally:
        _thread.settings = previous


def reload() -> Settings:
    """Re-read the environment (after ``os.environ`` changed)."""
    global _current
    _current = Settings.from_env()
    return _current


@contextlib.contextmanager
def override(**changes: object) -> Iterator[Settings]:
    """Temporarily replace settings fields, e.g. ``with override(home=tmp_path, policy="fast"):``."""
    global _current
    previous = settings()
    if "home" in changes and changes["home"] is not None:
        changes["home"] = Path(changes["home"])  # type: ignore[arg-type]
    _current = dataclasses.replace(previous, **changes)  # type: ignore[arg-type]
    try:
        yield _current
    finally:
        _current = previous
