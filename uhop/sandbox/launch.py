"""How a sandbox worker process is started (used by :mod:`uhop.sandbox.worker`): which isolation
this machine offers (bubblewrap, the seccomp fallback), the bubblewrap command line, the read and
write views (bubblewrap binds them; the fallback hands them to Landlock), the unprivileged ids a
root parent drops the worker to, the tools a tool worker's broker may run, and the environment
the worker gets (everything else is dropped). Found here by the trusted parent, before any
candidate exists."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from uhop.sandbox import child

if TYPE_CHECKING:
    from uhop.sandbox.worker import Limits

CHILD = Path(child.__file__).resolve()
#: Environment variables passed into the sandbox (everything else is dropped: no secrets).
PASS_ENV = ("LANG", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TRITON_INTERPRET",
            "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NUMBA_NUM_THREADS")  # fmt: skip
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf", "/etc/hosts")


class SandboxUnavailable(RuntimeError):
    pass



@functools.lru_cache(maxsize=1)
def bwrap_path() -> str | None:
    """bubblewrap, if installed *and* able to create namespaces here (containers may forbid it)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if r.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def have_seccomp() -> bool:
    """Built in on x86-64; elsewhere through pyseccomp (the ``sandbox`` extra)."""
    from uhop.sandbox import syscall_filter

    return syscall_filter.available()


def resolve_isolation(isolation: str = "auto") -> str:
    """``auto`` -> ``bwrap`` if usable else ``seccomp`` (rlimits + seccomp + netns). Raises
    :class:`SandboxUnavailable` when the requested layer or the seccomp filter is missing
    (untrusted code never runs without OS isolation)."""
    if isolation not in ("auto", "bwrap", "seccomp"):
        raise ValueError(f"isolation must be 'auto', 'bwrap' or 'seccomp', got {isolation!r}")
    # seccomp is required in every mode: namespaces alone do not stop a fork bomb (RLIMIT_NPROC
    # does not bind root, and the pid namespace does not cap the count).
    if not have_seccomp():
        raise SandboxUnavailable(
            "no OS isolation available: install bubblewrap (scripts/install_system_deps.sh) and, off x86-64, "
            "pyseccomp (pip install 'uhop[sandbox]')"
        )
    if isolation in ("auto", "bwrap") and bwrap_path():
        return "bwrap"
    if isolation == "bwrap":
        raise SandboxUnavailable("bubblewrap is not installed or cannot create namespaces here")
    return "seccomp"


@functools.lru_cache(maxsize=1)
def tool_programs() -> dict[str, list[str]]:
    """What a tool worker's broker may run (real paths), found here by the trusted parent: the
    C compiler Triton would use (``$CC``, else gcc, else clang) and Triton's ptxas
    (``TRITON_PTXAS_PATH``/``TRITON_PTXAS_BLACKWELL_PATH``, and the copies Triton bundles)."""
    cc: list[str] = []
    for name in (os.environ.get("CC"), "gcc", "clang"):
        exe = shutil.which(name) if name else None
        if exe:
            cc = [os.path.realpath(exe)]
            break
    ptxas = [os.path.realpath(os.environ[v]) for v in ("TRITON_PTXAS_PATH", "TRITON_PTXAS_BLACKWELL_PATH")
             if os.path.isfile(os.environ.get(v, ""))]  # fmt: skip
    spec = importlib.util.find_spec("triton")  # located, not imported
    if spec is not None and spec.origin:
        bindir = Path(spec.origin).parent / "backends" / "nvidia" / "bin"
        ptxas += [os.path.realpath(bindir / n) for n in ("ptxas", "ptxas-blackwell") if (bindir / n).is_file()]
    return {"cc": cc, "ptxas": ptxas}


@functools.lru_cache(maxsize=1)
def libcuda_dir() -> str | None:
    """The directory of libcuda.so.1, for Triton's launcher build (``TRITON_LIBCUDA_PATH``):
    found here, so Triton in the sandbox never runs ``ldconfig``."""
    if os.environ.get("TRITON_LIBCUDA_PATH"):
        return os.environ["TRITON_LIBCUDA_PATH"]
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, timeout=10).stdout.decode(errors="ignore")
        except (OSError, subprocess.TimeoutExpired):
            continue
        found = [ln for ln in out.splitlines() if "libcuda.so.1 " in ln and "=>" in ln]
        found.sort(key=lambda ln: "x86-64" not in ln)  # the 64-bit one first where both are listed
        if found:
            return os.path.dirname(found[0].split()[-1])
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib"):
        if os.path.exists(f"{d}/libcuda.so.1"):
            return d
    return None


@functools.lru_cache(maxsize=4)
def compiler_dirs(cc: str) -> tuple[str, ...]:
    """Where the C compiler finds its helpers (cc1, collect2, ld), start files (crtbeginS.o) and
    libraries: its ``-print-search-dirs``, asked here by the trusted parent. A compiler installed
    outside /usr (``/opt/gcc`` on some CUDA images) keeps them beside itself."""
    try:
        out = subprocess.run([cc, "-print-search-dirs"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    dirs = []
    for line in out.splitlines():
        key, _, value = line.partition(": ")
        if key in ("install", "programs", "libraries"):
            dirs += [d for d in value.lstrip("=").split(":") if d and os.path.isdir(d)]
    return tuple(dict.fromkeys(os.path.realpath(d) for d in dirs))


def _tool_dirs(gpu: bool) -> list[str]:
    """Directories a tool worker reads on top of the usual view: the tools' own directories and
    the compiler's search directories (a compiler outside /usr), and libcuda's."""
    progs = tool_programs()
    dirs = [os.path.dirname(p) for p in progs["cc"] + progs["ptxas"]]
    for cc in progs["cc"]:
        dirs += compiler_dirs(cc)
    cuda = libcuda_dir() if gpu else None
    return dirs + ([cuda] if cuda else [])


def _ro_paths(extra: Sequence[str] = ()) -> list[str]:
    """Directories the worker needs to read: system libraries, the interpreter, sys.path."""
    paths = ["/usr", "/lib", "/lib64", "/bin", "/sbin", sys.prefix, sys.base_prefix, str(CHILD.parent), *extra]
    # Installed packages only: never the working directory or a source checkout on sys.path
    # (that is where a user's project and its secrets live).
    paths += [p for p in sys.path if p and os.path.isdir(p) and os.path.basename(p) in ("site-packages", "dist-packages")]
    out: list[str] = []
    for p in sorted({os.path.realpath(p) for p in paths if os.path.exists(p)}, key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


#: the unprivileged uid and gid every candidate and tool runs as when UHOP runs as root
#: (``UHOP_SANDBOX_UID``/``UHOP_SANDBOX_GID``; 65533 is in the range Debian reserves, owned by
#: nobody, so no file or process on the host belongs to it)
DEFAULT_SANDBOX_ID = 65533


def sandbox_ids() -> tuple[int, int] | None:
    """(uid, gid) the worker drops to, when this process is root; None when it is not (the
    worker then keeps our own unprivileged uid, in a user namespace)."""
    if os.geteuid() != 0:
        return None
    from uhop.config import read

    uid = int(read("sandbox_uid"))
    gid = read("sandbox_gid")
    gid = uid if gid is None else int(gid)
    if uid <= 0 or gid <= 0:
        raise ValueError(f"UHOP_SANDBOX_UID/UHOP_SANDBOX_GID must be positive ids, got {uid}/{gid}")
    return uid, gid


def _bwrap_cmd(limits: Limits, gpu: bool, tools: bool = False) -> list[str]:
    if sandbox_ids():
        # As root, bubblewrap's user namespace would map the candidate to host uid 0 (uid_map
        # "0 0 1"). Privileged mode instead: no user namespace, every capability dropped but the
        # three the worker needs to empty its bounding set and become the unprivileged sandbox
        # uid before anything else.
        unshare = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        caps = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        unshare, caps = ["--unshare-all"], ["--cap-drop", "ALL"]
    cmd = [bwrap_path() or "bwrap", *unshare, "--die-with-parent", *caps]
    # The private /tmp first: read-only binds of paths under /tmp (a checkout or venv there, as in
    # CI) are then mounted on top of it instead of being hidden by it.
    cmd += ["--perms", "01777", "--size", str(limits.disk_bytes), "--tmpfs", "/tmp"]
    ro = _ro_paths(_tool_dirs(gpu) if tools else ())
    if sandbox_ids():  # bubblewrap makes missing mount points 0700 as root: searchable for the uid
        ancestors = {os.path.dirname(p) for p in ro} | {os.path.dirname(e) for e in _ETC}
        while any(os.path.dirname(a) not in ancestors and a != "/" for a in ancestors):
            ancestors |= {os.path.dirname(a) for a in ancestors}
        for a in sorted(ancestors - {"/", "/tmp"} - set(ro), key=len):
            if not any(a == q or a.startswith(q + "/") for q in ro):
                cmd += ["--perms", "0755", "--dir", a]
    for p in ro:
        if os.path.islink(p):
            cmd += ["--symlink", os.readlink(p), p]
        else:
            cmd += ["--ro-bind", p, p]
    for p in ("/lib", "/lib64", "/bin", "/sbin"):  # merged-/usr systems: keep the symlinks
        if os.path.islink(p) and p not in cmd:
            cmd += ["--symlink", os.readlink(p), p]
    for p in _ETC:
        cmd += ["--ro-bind-try", p, p]
    cmd += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    cmd += ["--perms", "01777", "--size", str(limits.disk_bytes // 4), "--tmpfs", "/dev/shm"]
    if gpu:
        for dev in _gpu_devices():
            cmd += ["--dev-bind-try", dev, dev]
        cmd += ["--ro-bind-try", "/sys", "/sys", "--ro-bind-try", "/proc/driver/nvidia", "/proc/driver/nvidia"]
    # bwrap's root is a writable tmpfs holding the mount points: make it read-only so the
    # private /tmp is the only writable place.
    cmd += ["--remount-ro", "/", "--chdir", "/tmp"]
    return cmd


def _readable(gpu: bool, tools: bool = False) -> list[str]:
    """Without bubblewrap, what Landlock lets the worker read: the same view bwrap binds, plus
    its own /proc/<pid> (added by the worker; never other processes' environments)."""
    paths = _ro_paths(_tool_dirs(gpu) if tools else ()) + list(_ETC)
    paths += ["/sys/devices/system/cpu", "/proc/cpuinfo", "/proc/meminfo", "/dev/urandom", "/dev/zero",
              "/proc/sys/vm/overcommit_memory"]  # fmt: skip
    if gpu:
        paths += ["/sys", "/proc/driver/nvidia", "/proc/devices"]
    return paths


def _gpu_devices() -> list[str]:
    return [str(p) for p in sorted(Path("/dev").glob("nvidia*")) + [Path("/dev/dri")] if p.exists()]


def _passed_env() -> dict[str, str]:
    return {k: os.environ[k] for k in PASS_ENV if k in os.environ}


def _env(home: str) -> dict[str, str]:
    env = _passed_env()
    env.update(PATH="/usr/bin:/bin", HOME=home, TMPDIR=home, TRITON_CACHE_DIR=f"{home}/triton",
               NUMBA_CACHE_DIR=f"{home}/numba", PYTHONNOUSERSITE="1")  # fmt: skip
    env.setdefault("LANG", "C.UTF-8")
    return env
