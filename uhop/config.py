"""Every ``UHOP_*`` setting, declared once, typed, with a context override for tests.

:class:`Settings` holds them all (field, type, default); :data:`ENV` names each field's variable
and how its text parses. Settings are read from the environment when :func:`settings` is first
called and cached; :func:`override` swaps in changed values for the duration of a ``with`` block
(tests, CLI flags); :func:`read` parses one setting from the environment now, for the few places
that run before settings may be complete or valid (``import uhop``, the CLI's error handling,
worker processes started with a variable). README.md's settings table lists every variable with
its default and meaning (``tests/unit/test_config.py`` checks both lists against :data:`ENV`).

:data:`INTERNAL` names the ``UHOP_*`` variables that are not settings: values a parent process
hands the sandbox's child through its environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: dispatch policies (``UHOP_POLICY``, ``@uhop.optimize(policy=...)``)
POLICIES = ("background", "tune", "fast")
#: thread pools' wait policies (``UHOP_THREADS``, ``uhop/threads.py``)
THREAD_POLICIES = ("brief", "passive", "default")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _default_home() -> Path:
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("uhop"))
    except ImportError:  # pragma: no cover - platformdirs is a core dependency
        return Path.home() / ".cache" / "uhop"


def _bool(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _isolate_mode(raw: str) -> str:
    v = raw.strip().lower() or "auto"
    return {"1": "always", "true": "always", "yes": "always", "on": "always", "always": "always",
            "0": "never", "false": "never", "no": "never", "off": "never", "never": "never"}.get(v, v)  # fmt: skip


def _number(kind: type, what: str) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            return kind(raw.strip())
        except ValueError:
            raise ValueError(f"must be {what}, got {raw!r}") from None

    return parse


def _port(raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) > 65535:
        raise ValueError(f"must be a port number, got {raw!r}")
    return int(raw)


def _names(raw: str) -> tuple[str, ...]:
    return tuple(b.strip() for b in raw.split(",") if b.strip())


def _workers(raw: str) -> int:
    raw = raw.strip().lower()
    if raw in ("", "auto"):
        return -1
    try:
        n = int(raw)
    except ValueError:
        n = -2
    if n < 0:
        raise ValueError(f"must be 'auto' or a number >= 0, got {raw!r}")
    return n


@dataclass(frozen=True)
class Settings:
    """Every setting; ``ENV`` maps each field to its ``UHOP_*`` variable. Times in seconds."""

    # store and dispatch
    home: Path = field(default_factory=_default_home)
    store_url: str = ""  # "": sqlite:///$UHOP_HOME/uhop.db
    disable: bool = False
    policy: str = "background"
    exit_wait_s: float = 20.0
    threads: str = "brief"  # applied at import uhop (uhop/threads.py)
    # tuning
    tune_budget_s: float = 10.0
    bench_min_s: float = 0.05
    bench_repeat: int = 7
    shape_buckets: str = "exact"
    backends: tuple[str, ...] = ()  # (): all
    validation_trials: int = 3
    isolate: str = "auto"
    isolate_timeout_s: float = 120.0
    precompile_workers: int = -1  # -1: auto (see precompile_processes)
    # the uhop command
    log_level: str | None = None  # None: WARNING in the library, INFO in the uhop command and the demo
    debug: bool = False
    # observability (uhop/metrics.py, uhop/serve/)
    metrics_port: int | None = None  # None: no exporter; 0: any free port
    metrics_addr: str = "127.0.0.1"
    metrics_sample_every: int = 64
    serve_token: str | None = field(default=None, repr=False)
    # kernel files and the sandbox (read by uhop/sandbox/)
    spotcheck_rate: float = 0.01
    sandbox_uid: int = 65533
    sandbox_gid: int | None = None  # None: sandbox_uid
    # backends
    opencl_platform: str = ""  # "": the first platform with a device
    # LLM kernel generation (uhop/ai/)
    ai_base_url: str | None = None
    ai_model: str | None = None
    ai_api_key: str = field(default="unused", repr=False)
    # torch.compile(backend="uhop") (read by uhop/compile/)
    compile_backends: str = "torch,triton"
    compile_rest: str = "inductor"
    compile_buckets: str = "pow2"
    compile_cudagraphs: bool = True
    compile_tune_rest: bool = False
    compile_pack_weights: bool = True
    fusion_report: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.isolate, bool):  # override(isolate=True) in tests and scripts
            object.__setattr__(self, "isolate", "always" if self.isolate else "never")
        for name in _CHECKS:
            _check(name, getattr(self, name))

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
        """Every field whose variable is set (and not empty) from the environment, the rest defaults."""
        values = {}
        for name, (var, _) in ENV.items():
            raw = os.environ.get(var, "")
            if raw.strip():
                values[name] = _parse(name, raw)
        return cls(**values)


#: field -> (environment variable, parser of its text)
ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "home": ("UHOP_HOME", lambda r: Path(r).expanduser()),
    "store_url": ("UHOP_STORE", str.strip),
    "disable": ("UHOP_DISABLE", _bool),
    "policy": ("UHOP_POLICY", lambda r: r.strip().lower()),
    "exit_wait_s": ("UHOP_EXIT_WAIT_S", _number(float, "a number of seconds")),
    "threads": ("UHOP_THREADS", lambda r: r.strip().lower()),
    "tune_budget_s": ("UHOP_TUNE_BUDGET_S", _number(float, "a number of seconds")),
    "bench_min_s": ("UHOP_BENCH_MIN_S", _number(float, "a number of seconds")),
    "bench_repeat": ("UHOP_BENCH_REPEAT", _number(int, "an integer")),
    "shape_buckets": ("UHOP_SHAPE_BUCKETS", lambda r: r.strip().lower()),
    "backends": ("UHOP_BACKENDS", _names),
    "validation_trials": ("UHOP_VALIDATION_TRIALS", _number(int, "an integer")),
    "isolate": ("UHOP_ISOLATE", _isolate_mode),
    "isolate_timeout_s": ("UHOP_ISOLATE_TIMEOUT_S", _number(float, "a number of seconds")),
    "precompile_workers": ("UHOP_PRECOMPILE_WORKERS", _workers),
    "log_level": ("UHOP_LOG", lambda r: r.strip().upper()),
    "debug": ("UHOP_DEBUG", _bool),
    "metrics_port": ("UHOP_METRICS_PORT", _port),
    "metrics_addr": ("UHOP_METRICS_ADDR", str.strip),
    "metrics_sample_every": ("UHOP_METRICS_SAMPLE_EVERY", _number(int, "an integer >= 1")),
    "serve_token": ("UHOP_SERVE_TOKEN", str),
    "spotcheck_rate": ("UHOP_SPOTCHECK_RATE", _number(float, "a number in [0, 1]")),
    "sandbox_uid": ("UHOP_SANDBOX_UID", _number(int, "a positive id")),
    "sandbox_gid": ("UHOP_SANDBOX_GID", _number(int, "a positive id")),
    "opencl_platform": ("UHOP_OPENCL_PLATFORM", lambda r: r.strip().lower()),
    "ai_base_url": ("UHOP_AI_BASE_URL", str.strip),
    "ai_model": ("UHOP_AI_MODEL", str.strip),
    "ai_api_key": ("UHOP_AI_API_KEY", str),
    "compile_backends": ("UHOP_COMPILE_BACKENDS", str.strip),
    "compile_rest": ("UHOP_COMPILE_REST", str.strip),
    "compile_buckets": ("UHOP_COMPILE_BUCKETS", str.strip),
    "compile_cudagraphs": ("UHOP_COMPILE_CUDAGRAPHS", _bool),
    "compile_tune_rest": ("UHOP_COMPILE_TUNE_REST", _bool),
    "compile_pack_weights": ("UHOP_COMPILE_PACK_WEIGHTS", _bool),
    "fusion_report": ("UHOP_FUSION_REPORT", _bool),
}

#: ``UHOP_*`` variables that are not settings: the sandbox's parent hands its child these values
INTERNAL = ("UHOP_SANDBOX_IDS", "UHOP_SANDBOX_PRIVATE", "UHOP_SANDBOX_READABLE", "UHOP_SANDBOX_DISK_BYTES",
            "UHOP_SANDBOX_TOOLS", "UHOP_SANDBOX_LANDLOCK", "UHOP_SANDBOX_LAYERS")  # fmt: skip

#: field -> (is the value acceptable, what it must be)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "policy": (lambda v: v in POLICIES, f"one of {', '.join(POLICIES)}"),
    "threads": (lambda v: v in THREAD_POLICIES, f"one of {', '.join(THREAD_POLICIES)}"),
    "shape_buckets": (lambda v: v in ("exact", "pow2"), "'exact' or 'pow2'"),
    "tune_budget_s": (lambda v: v > 0, "> 0"),
    "isolate": (lambda v: v in ("auto", "always", "never"), "auto, 1 or 0"),
    "isolate_timeout_s": (lambda v: v > 0, "> 0"),
    "validation_trials": (lambda v: v >= 1, ">= 1"),
    "log_level": (lambda v: v is None or v in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
    "metrics_sample_every": (lambda v: v >= 1, "an integer >= 1"),
    "spotcheck_rate": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "sandbox_uid": (lambda v: v > 0, "a positive id"),
    "sandbox_gid": (lambda v: v is None or v > 0, "a positive id"),
}


def _check(name: str, value: Any) -> None:
    ok, what = _CHECKS[name]
    if not ok(value):
        raise ValueError(f"{ENV[name][0]} must be {what}, got {value!r}")


def _parse(name: str, raw: str) -> Any:
    var, parse = ENV[name]
    try:
        return parse(raw)
    except ValueError as exc:
        raise ValueError(f"{var} {exc}") from None


def read(name: str) -> Any:
    """Setting ``name`` (a :class:`Settings` field) from the environment now, parsed and checked
    alone: for code that runs before the other settings may be valid (``import uhop``, the
    ``uhop`` command's error handling) or that re-reads a variable it set for worker processes.
    Ignores :func:`override`; everything else uses :func:`settings`."""
    raw = os.environ.get(ENV[name][0], "")
    if raw.strip():
        value = _parse(name, raw)
    else:
        f = Settings.__dataclass_fields__[name]
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
    if name in _CHECKS:
        _check(name, value)
    return value


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


def install(s: Settings) -> Settings:
    """Make ``s`` this process's settings (a worker process adopting its parent's)."""
    global _current
    _current = s
    return s


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
