"""Round 2, class 1: looks for host privilege. Reports its ids and capabilities, and which kernel
tunables it could open for writing (as host root under bubblewrap's "0 0 1" uid map it could
write /proc/sys/kernel/core_pattern: code execution as host root)."""
import operator
import typing

OP = "softmax"
os = operator.attrgetter("modules")(typing.sys)["os"]  # past the static check, as in the report

TARGETS = ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches", "/proc/sys/fs/protected_symlinks",
           "/proc/sysrq-trigger", "/sys/kernel/mm/transparent_hugepage/enabled")


def run(x):
    opened = []
    for p in TARGETS:
        try:
            fd = os.open(p, os.O_WRONLY)
        except OSError:
            continue
        os.close(fd)  # opened only: never written
        opened.append(p)
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    caps = " ".join(f"{k}={status[k].strip()}" for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs"))
    uids = status["Uid"].split()
    raise RuntimeError(f"uid={uids[0]} euid={uids[1]} {caps} opened=[{','.join(opened)}]")
