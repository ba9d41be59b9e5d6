# expect: forbidden
# expect-unchecked: forbidden
"""Asks Triton's shimmed subprocess (the tool broker) for /bin/sh: not an allowed tool."""
from triton.runtime import build

OP = "softmax"
TOOLS = True


def run(x):
    build.subprocess.run(["/bin/sh", "-c", "touch /tmp/uhop_exec_pwned"])
    return x.copy()
