# expect: forbidden
# expect-unchecked: forbidden
"""Writes raw requests straight into the tool broker's pipe (its descriptors found through
Triton's shimmed subprocess) for /bin/sh, for gcc -wrapper /bin/sh and for a symlink to /bin/sh
named gcc; swallows every refusal and returns a correct result. The broker reports refusals to
the parent itself, so the candidate is rejected anyway."""
import json
import os
import struct

import numpy as np
from triton.runtime import build

OP = "softmax"
TOOLS = True
PWN = "touch /tmp/uhop_exec_pwned"


def _ask(argv):
    c = build.subprocess.client
    data = json.dumps({"argv": argv, "cwd": os.getcwd()}).encode()
    os.write(c.wfd, struct.pack("<Q", len(data)) + data)
    (n,) = struct.unpack("<Q", os.read(c.rfd, 8))
    return os.read(c.rfd, n)


with open("x.c", "w") as f:
    f.write("int f(void) { return 1; }\n")
os.symlink("/bin/sh", "gcc")
for argv in (["/bin/sh", "-c", PWN], ["gcc", "-wrapper", "/bin/sh,-c," + PWN, "x.c", "-o", "x.so"],
             ["./gcc", "-c", PWN], ["gcc", "-B", ".", "x.c", "-o", "x.so"]):
    try:
        _ask(argv)
    except OSError:
        pass


def run(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
