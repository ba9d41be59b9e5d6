"""The sandbox worker's seccomp filter. Stdlib only: the worker loads this file by path.

Default-allow; kills the process (SIGSYS) on anything that reaches other programs, the network,
other processes or the kernel's configuration; threads stay allowed (BLAS and torch pools),
processes do not. Installed with ``SECCOMP_FILTER_FLAG_TSYNC`` so threads started before it
(OpenBLAS starts its pool when numpy is imported) are filtered too.

On x86-64 the BPF program is built here from a syscall table (no dependency; the table is checked
against libseccomp in the tests). Elsewhere pyseccomp (the ``sandbox`` extra) builds it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

CLONE_THREAD = 0x00010000
TIOCSTI = 0x5412

DENY = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "socket",
    "socketpair", "connect", "bind", "listen", "accept", "accept4", "mount", "umount2", "pivot_root", "chroot",
    "unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "setsid",
    "setpgid", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "personality",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at",
    "name_to_handle_at", "quotactl", "acct", "settimeofday", "clock_settime", "adjtimex", "syslog", "iopl",
    "ioperm", "fanotify_init", "move_mount", "open_tree", "fsopen", "fsmount", "pidfd_open", "pidfd_getfd",
)  # fmt: skip
#: refused with EACCES when the host file system is visible (no bubblewrap)
WRITES = ("unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link",
          "linkat", "symlink", "symlinkat", "truncate", "chmod", "fchmodat", "chown", "fchownat", "creat")  # fmt: skip
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

X86_64 = {
    "open": 2, "ioctl": 16, "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50,
    "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62, "truncate": 76,
    "rename": 82, "mkdir": 83, "rmdir": 84, "creat": 85, "link": 86, "unlink": 87, "symlink": 88, "chmod": 90,
    "chown": 92, "ptrace": 101, "syslog": 103, "setuid": 105, "setgid": 106, "setpgid": 109, "setsid": 112,
    "setreuid": 113, "setregid": 114, "setgroups": 116, "setresuid": 117, "setresgid": 119, "personality": 135,
    "pivot_root": 155, "adjtimex": 159, "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165,
    "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172, "ioperm": 173,
    "init_module": 175, "delete_module": 176, "quotactl": 179, "tkill": 200, "clock_settime": 227,
    "tgkill": 234, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "openat": 257,
    "mkdirat": 258, "fchownat": 260, "unlinkat": 263, "renameat": 264, "linkat": 265, "symlinkat": 266,
    "fchmodat": 268, "unshare": 272, "accept4": 288, "perf_event_open": 298, "fanotify_init": 300,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "finit_module": 313, "renameat2": 316, "kexec_file_load": 320, "bpf": 321,
    "execveat": 322, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsmount": 432,
    "pidfd_open": 434, "clone3": 435, "openat2": 437, "pidfd_getfd": 438, "rt_sigqueueinfo": 129,
    "prctl": 157, "rt_tgsigqueueinfo": 297, "prlimit64": 302, "pidfd_send_signal": 424,
}  # fmt: skip
PR_SET_PDEATHSIG = 1
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# classic BPF opcodes and seccomp return values
_LD, _JEQ, _JGE, _AND, _RET = 0x20, 0x15, 0x35, 0x54, 0x06
_KILL, _ALLOW, _ERRNO = 0x80000000, 0x7FFF0000, 0x00050000


def available() -> bool:
    if platform.machine() == "x86_64":
        return True
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def x86_64_program(deny_writes: bool, pid: int) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions; every branch ends in a return, so all
    jumps are short (no 255-instruction limit to worry about)."""
    nr = X86_64
    p: list[tuple[int, int, int, int]] = [
        (_LD, 0, 0, 4), (_JEQ, 1, 0, AUDIT_ARCH_X86_64), (_RET, 0, 0, _KILL),  # other ABIs: kill
        (_LD, 0, 0, 0), (_JGE, 0, 1, X32_SYSCALL_BIT), (_RET, 0, 0, _KILL),  # x32 ABI: kill
    ]  # fmt: skip

    def ret_if(name: str, action: int) -> None:
        p.extend([(_JEQ, 0, 1, nr[name]), (_RET, 0, 0, action)])

    for name in DENY:
        ret_if(name, _KILL)
    ret_if("clone3", _ERRNO | errno.ENOSYS)  # glibc then falls back to clone, filtered below
    ret_if("tkill", _ERRNO | errno.EPERM)
    # clone: threads only
    p += [(_JEQ, 0, 5, nr["clone"]), (_LD, 0, 0, 16), (_AND, 0, 0, CLONE_THREAD), (_JEQ, 0, 1, 0),
          (_RET, 0, 0, _KILL), (_RET, 0, 0, _ALLOW)]  # fmt: skip
    # signals and resource limits: only this process (prlimit64's pid 0 is the caller). A thread
    # aiming a signal at a sibling thread is within the process; anything else (the parent, a
    # spare worker, the broker) is refused.
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        p += [(_JEQ, 0, 4, nr[name]), (_LD, 0, 0, 16), (_JEQ, 0, 1, pid), (_RET, 0, 0, _ALLOW),
              (_RET, 0, 0, _ERRNO | errno.EPERM)]  # fmt: skip
    p += [(_JEQ, 0, 5, nr["prlimit64"]), (_LD, 0, 0, 16), (_JEQ, 2, 0, 0), (_JEQ, 1, 0, pid),
          (_RET, 0, 0, _ERRNO | errno.EPERM), (_RET, 0, 0, _ALLOW)]  # fmt: skip
    ret_if("pidfd_send_signal", _ERRNO | errno.EPERM)
    # prctl(PR_SET_PDEATHSIG): the worker's parent-death signal stays as the trusted phase set it
    p += [(_JEQ, 0, 4, nr["prctl"]), (_LD, 0, 0, 16), (_JEQ, 0, 1, PR_SET_PDEATHSIG),
          (_RET, 0, 0, _ERRNO | errno.EPERM), (_RET, 0, 0, _ALLOW)]  # fmt: skip
    # ioctl(fd, TIOCSTI): typing into a terminal
    p += [(_JEQ, 0, 4, nr["ioctl"]), (_LD, 0, 0, 24), (_JEQ, 0, 1, TIOCSTI), (_RET, 0, 0, _KILL),
          (_RET, 0, 0, _ALLOW)]  # fmt: skip
    if deny_writes:
        for name in WRITES:
            ret_if(name, _ERRNO | errno.EACCES)
        ret_if("openat2", _ERRNO | errno.ENOSYS)  # flags behind a pointer: make libc use openat
        for name, off in (("openat", 32), ("open", 24)):  # the flags argument (low 32 bits)
            p += [(_JEQ, 0, 5, nr[name]), (_LD, 0, 0, off), (_AND, 0, 0, WRITE_FLAGS), (_JEQ, 0, 1, 0),
                  (_RET, 0, 0, _ALLOW), (_RET, 0, 0, _ERRNO | errno.EACCES)]  # fmt: skip
    p.append((_RET, 0, 0, _ALLOW))
    return p


# ---- Landlock: path-based write restriction without namespaces (the fallback's private dir) ----
_LL_EXECUTE = 1 << 0
_LL_READ = _LL_EXECUTE | (1 << 2) | (1 << 3)  # execute, read file, read dir
_LL_WRITE = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << b for b in range(6, 13))  # write, remove, make_*
_LL_MAKE_CHAR, _LL_MAKE_BLOCK = 1 << 6, 1 << 11
_LL_REFER, _LL_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_LL_ABI1 = (1 << 13) - 1  # the file-system rights of ABI 1
_LL_FILE = _LL_EXECUTE | (1 << 1) | (1 << 2) | _LL_TRUNCATE  # the rights a rule on a file (not a dir) may hold
_LL_NET = (1 << 0) | (1 << 1)  # bind/connect TCP, ABI 4
_LL_SCOPE = (1 << 0) | (1 << 1)  # abstract unix sockets, signals outside the domain, ABI 6


def restrict(rules: list[tuple[str, int]], handled: int, *, net: bool = False, scope: bool = False,
             min_abi: int = 1) -> bool:  # fmt: skip
    """Put the calling thread (and the threads it starts later) in a new Landlock domain.

    ``handled``: the file-system rights the domain refuses except beneath a rule (those the
    running ABI lacks are dropped); ``rules``: ``(path, rights)`` granted beneath each path (a
    path that cannot be opened is skipped: optional paths; a file, not a directory, keeps only
    the rights a file rule may hold). ``net``: no TCP bind or connect (ABI 4); ``scope``: no
    abstract unix sockets or signals out of the domain (ABI 6); each only where the ABI has it.
    Sets ``PR_SET_NO_NEW_PRIVS``. Returns False where Landlock (ABI ``min_abi`` or later) is
    unavailable (old kernel, LSM off, not x86-64) or a step fails."""
    if platform.machine() != "x86_64":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < max(min_abi, 1):
        return False
    fs = handled & (_LL_ABI1 | (_LL_REFER if abi >= 2 else 0) | (_LL_TRUNCATE if abi >= 3 else 0))
    net_rights, scoped = _LL_NET if net and abi >= 4 else 0, _LL_SCOPE if scope and abi >= 6 else 0
    size = 24 if scoped else 16 if net_rights else 8  # the struct as far as this ABI reads it
    attr = struct.pack("=QQQ", fs, net_rights, scoped)[:size]
    ruleset = libc.syscall(444, ctypes.c_char_p(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        return False
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # an optional path that is not there
            try:
                allowed = access & fs & (-1 if os.path.isdir(path) else _LL_FILE)
                rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd))
                if libc.syscall(445, ruleset, 1, rule, 0) != 0:  # LANDLOCK_RULE_PATH_BENEATH
                    return False
            finally:
                os.close(fd)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required by restrict_self
            return False
        return libc.syscall(446, ruleset, 0) == 0  # landlock_restrict_self
    finally:
        os.close(ruleset)


def landlock(writable: list[str], readable: list[str], *, exec_writable: bool = True) -> bool:
    """Allow reads (and execution) only beneath ``readable`` and writes only beneath ``writable``
    (plus no TCP and no signals out, where the ABI has them): the bubblewrap file-system view
    without namespaces. ``exec_writable=False`` also refuses executing anything beneath
    ``writable`` (the tool broker: a tool runs nothing the candidate wrote). Returns False where
    Landlock is unavailable (old kernel, LSM off, not x86-64). Applies to the calling thread and
    the threads it starts (not to BLAS threads started earlier, which run only library code)."""
    handled = _LL_READ | _LL_WRITE | _LL_REFER | _LL_TRUNCATE
    write = handled if exec_writable else handled & ~_LL_EXECUTE
    return restrict([(p, write) for p in writable] + [(p, _LL_READ) for p in readable], handled, net=True, scope=True)


def shield() -> bool:
    """A Landlock domain around the calling process, which must still be single-threaded so
    every later thread inherits it. Its point is Landlock's ptrace rule: a process in the domain
    cannot ptrace, or open ``/proc/<pid>/mem``, ``fd`` or ``environ`` of, a process outside it
    (bubblewrap's init, the tool broker, a compiler it runs). It handles only device-node
    creation (granted nowhere) and reparenting (granted everywhere: every Landlock domain refuses
    cross-directory renames unless a rule allows them, and Triton's cache renames), so nothing
    else changes for the worker (no signal or socket scopes: the CUDA driver starts under this
    domain, and seccomp covers both for the candidate). Returns False where Landlock (ABI 2 or
    later) is unavailable."""
    return restrict([("/", _LL_REFER)], _LL_MAKE_CHAR | _LL_MAKE_BLOCK | _LL_REFER, min_abi=2)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(deny_writes: bool) -> list[str]:
    """Install the filter on every thread of this process. Returns the layer names in force."""
    if platform.machine() != "x86_64":
        return _install_pyseccomp(deny_writes)
    prog = x86_64_program(deny_writes, os.getpid())
    buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in prog))
    fprog = _Fprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog); 317 = SYS_seccomp on x86-64
    if libc.syscall(317, 1, 1, ctypes.byref(fprog)) != 0:
        raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER) failed")
    return ["seccomp"] + (["no-writes"] if deny_writes else [])


def _install_pyseccomp(deny_writes: bool) -> list[str]:
    try:
        import pyseccomp as sc
    except ImportError:
        return []
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    f.set_attr(sc.Attr.CTL_TSYNC, 1)
    for name in DENY:
        try:
            f.add_rule(sc.KILL_PROCESS, name)
        except Exception:  # not on this architecture
            pass
    f.add_rule(sc.KILL_PROCESS, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(sc.KILL_PROCESS, "ioctl", sc.Arg(1, sc.EQ, TIOCSTI))
    pid = os.getpid()
    f.add_rule(sc.ERRNO(errno.EPERM), "kill", sc.Arg(0, sc.NE, pid))
    f.add_rule(sc.ERRNO(errno.EPERM), "tgkill", sc.Arg(0, sc.NE, pid))
    f.add_rule(sc.ERRNO(errno.EPERM), "tkill")
    for name in ("rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        f.add_rule(sc.ERRNO(errno.EPERM), name, sc.Arg(0, sc.NE, pid))
    f.add_rule(sc.ERRNO(errno.EPERM), "prlimit64", sc.Arg(0, sc.NE, pid), sc.Arg(0, sc.NE, 0))
    f.add_rule(sc.ERRNO(errno.EPERM), "pidfd_send_signal")
    f.add_rule(sc.ERRNO(errno.EPERM), "prctl", sc.Arg(0, sc.EQ, PR_SET_PDEATHSIG))
    if deny_writes:
        for name in WRITES:
            try:
                f.add_rule(sc.ERRNO(errno.EACCES), name)
            except Exception:
                pass
        for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND):
            f.add_rule(sc.ERRNO(errno.EACCES), "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
            try:
                f.add_rule(sc.ERRNO(errno.EACCES), "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
            except Exception:
                pass
        f.add_rule(sc.ERRNO(errno.ENOSYS), "openat2")
    f.load()
    return ["seccomp"] + (["no-writes"] if deny_writes else [])
