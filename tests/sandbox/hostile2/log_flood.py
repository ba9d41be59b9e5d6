"""Round 2, class 5: floods the tool broker with refused requests (each once added a line to a
parent-side log in the host TMPDIR, without bound)."""
from triton.runtime import build

OP = "softmax"
TOOLS = True


def run(x):
    for _ in range(5000):
        try:
            build.subprocess.client.call(["/bin/sh", "-c", "x" * 2000], "/tmp")
        except Exception:
            pass
    return x.copy()
