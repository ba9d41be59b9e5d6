# expect: forbidden
# expect-unchecked: forbidden
"""Opens /proc/<pid>/mem of other processes in the sandbox for writing (bubblewrap's init is pid 1;
a tool worker's broker and compilers share the worker's user): writing there would run code
outside seccomp. The worker's Landlock domain refuses every one."""
import glob
import os

OP = "softmax"


def run(x):
    opened = []
    for d in ["/proc/1"] + glob.glob("/proc/[0-9]*"):
        if d != f"/proc/{os.getpid()}":
            try:
                with open(d + "/mem", "r+b"):
                    opened.append(d)
            except OSError:
                pass
    if not opened:
        raise PermissionError(13, "no other process's memory could be opened")
    return x  # reached only through a hole: returns the input (a wrong result)
