"""The sandbox worker's own confinement steps, run by ``child.py`` before any candidate code or
thread exists: the fallback's namespaces (no bubblewrap), the drop to an unprivileged uid with no
capability, the thread count. Stdlib only: the worker loads this file by path."""

from __future__ import annotations

import os
import signal


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mount(src, dst: str, fstype, flags: int, data=None) -> None:
    import ctypes

    enc = lambda v: v.encode() if isinstance(v, str) else v  # noqa: E731
    if _libc().mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {dst}: {os.strerror(e)}")


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 1 << 14, 1 << 18


def _world_searchable(d: str) -> bool:
    try:
        return bool(os.stat(d).st_mode & 0o001)
    except OSError:
        return True  # not there: nothing to expose


def _expose(paths: list[str]) -> None:
    """In our private mount namespace, before dropping to the sandbox uid: a directory on the way
    to a readable path that the unprivileged uid cannot search (``/root``, where pyenv puts the
    interpreter) is covered by a read-only tmpfs holding bind mounts of just those paths. The
    host's directory is not changed, and nothing else beneath it becomes visible."""
    blocked: dict[str, list[str]] = {}
    for p in sorted({os.path.realpath(p) for p in paths if os.path.exists(p)}):
        parts = p.split("/")
        for i in range(2, len(parts)):
            anc = "/".join(parts[:i])
            if not _world_searchable(anc):
                if not any(anc.startswith(b + "/") for b in blocked):
                    blocked.setdefault(anc, []).append(p)
                break
    for top, inner in blocked.items():
        fds = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in inner]
        _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for p, fd in fds:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(p, 0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(p), 0o755, exist_ok=True)
                open(p, "a").close()
            _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
            os.close(fd)
        _mount(None, top, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def private_namespaces(home: str, disk_bytes: int, ids: tuple[int, int] | None, readable: list[str]) -> list[str]:
    """Without bubblewrap: new mount and network namespaces (and, when not root, a user
    namespace mapping our own unprivileged uid), a size-capped tmpfs over the private directory,
    so the only writable place has a quota and the network is gone. As root (``ids`` given),
    ``/proc/sys``, ``/sys`` and ``/proc/sysrq-trigger`` are made read-only here, and the paths
    the worker reads are exposed to the unprivileged uid it drops to next. Returns the layers
    obtained."""
    libc = _libc()
    # (No pid namespace: after unshare(CLONE_NEWPID) this process could start no thread.)
    NEWUSER, NEWNS, NEWNET = 0x10000000, 0x00020000, 0x40000000
    uid, gid = os.getuid(), os.getgid()  # before unsharing: unmapped ids read as 65534 after
    flags = NEWNS | NEWNET | (0 if ids else NEWUSER)
    if libc.unshare(flags) != 0:
        return ["netns"] if libc.unshare(NEWNET) == 0 else []
    layers = ["netns"]
    try:
        if not ids:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        owner = f",uid={ids[0]},gid={ids[1]}" if ids else ""
        try:
            _mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(disk_bytes)},mode=0700{owner}")
            layers.append("tmpfs")
        except OSError:
            pass
        if ids:
            for p in ("/proc/sys", "/sys", "/proc/sysrq-trigger"):
                if os.path.exists(p):
                    _mount(p, p, None, MS_BIND | MS_REC)
                    _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            _expose(readable)
    except OSError:
        pass
    return layers


def drop_privileges(ids: tuple[int, int] | None) -> list[str]:
    """Become the unprivileged sandbox uid (``ids``, when started as root: bubblewrap's privileged
    mode or the fallback) and hold no capability at all (a user namespace grants a full set in
    it). Raises if any privilege is left: untrusted code never runs with one."""
    import ctypes

    ppid = os.getppid()
    if ids:  # the bounding set too (needs CAP_SETPCAP, which we still hold here), then the ids
        for cap in range(64):
            _libc().prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
        os.setgroups([])
        os.setresgid(ids[1], ids[1], ids[1])
        os.setresuid(ids[0], ids[0], ids[0])  # from root to all non-zero ids: capabilities cleared
    # capset(version 3, this thread, all sets empty) for what a user namespace handed us
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    _libc().syscall(126, hdr, data)  # SYS_capset on x86-64; elsewhere the check below decides
    _libc().prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    if os.getuid() == 0 or os.geteuid() == 0 or any(int(status.get(k, "0").strip(), 16)
                                                     for k in ("CapEff", "CapPrm", "CapAmb", "CapInh")):  # fmt: skip
        raise RuntimeError("the sandbox worker still holds root or a capability; refusing to run")
    _libc().prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: a credential change cleared it
    if os.getppid() != ppid:  # the parent died while it was cleared
        os._exit(1)
    return ["nonroot"]


def thread_count() -> int:
    """Threads of this process as the kernel counts them (BLAS and CUDA threads included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1
