"""Round 2, classes 2-4: tries to clear its parent-death signal, to lower the parent's file-size
limit and a spare worker's limits with prlimit64, to kill the parent with rt_sigqueueinfo and
pidfd_send_signal, to reach other processes with kill and tgkill (signal 0: a probe that harms
nothing if it got through), and reports what the kernel answered (-1 = refused)."""
import ctypes
import operator
import typing

OP = "softmax"
os = operator.attrgetter("modules")(typing.sys)["os"]
libc = ctypes.CDLL(None, use_errno=True)


class RLimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_uint64), ("max", ctypes.c_uint64)]


def others():
    """Every other process this one can see (the parent, a spare worker, bwrap's init)."""
    me = os.getpid()
    out = [os.getppid(), 1] + list(range(os.getppid() - 20, os.getppid() + 200))  # a spare worker is near
    try:
        out += [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:  # Landlock in the fallback: guessing is enough
        pass
    return sorted(set(p for p in out if p > 0 and p != me))


def run(x):
    res = {"pdeathsig": libc.prctl(1, 0, 0, 0, 0)}
    zero = RLimit(0, 0)
    res["prlimit"] = max(libc.syscall(302, pid, 1, ctypes.byref(zero), None) for pid in others())  # RLIMIT_FSIZE
    libc.syscall(302, os.getppid(), 1, ctypes.byref(zero), None)
    res["prlimit_parent_errno"] = ctypes.get_errno()
    res["prlimit_self"] = libc.syscall(302, 0, 7, None, ctypes.byref(RLimit()))  # reading our own: allowed
    info = (ctypes.c_int * 32)()
    info[0], info[2] = 9, -1  # si_signo = SIGKILL, si_code = SI_QUEUE
    res["sigqueue"] = max(libc.syscall(129, pid, 9, info) for pid in others())
    res["tgsigqueue"] = libc.syscall(297, os.getppid(), os.getppid(), 9, info)
    res["pidfd_send_signal"] = libc.syscall(424, 0, 9, None, 0)
    res["kill"] = max(libc.kill(pid, 0) for pid in others())
    res["tgkill"] = max(libc.syscall(234, pid, pid, 0) for pid in others())
    raise RuntimeError(" ".join(f"{k}={v}" for k, v in res.items()))
