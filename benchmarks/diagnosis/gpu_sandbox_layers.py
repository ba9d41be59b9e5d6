"""Which sandbox layer stops CUDA in a sandboxed GPU worker: the honest torch CUDA kernel file
checked by copies of ``uhop`` each with one confinement step switched off (the copies live in a
temporary directory; the checkout is not touched).

    PYTHONPATH=.:/tmp/site python3 benchmarks/diagnosis/gpu_sandbox_layers.py > $OUT/layers.txt
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / "tests" / "sandbox" / "honest" / "softmax_torch_cuda.py"
#: variant -> (file under uhop/sandbox, text, replacement)
NO_LL = ("child.py", 'if fs and "tmpfs" in layers and', 'if False and fs and "tmpfs" in layers and')
NO_SCOPE = ("syscall_filter.py", "handled, net=True, scope=True)", "handled, net=True, scope=False)")
READ_ALL = ("child.py", 'fs["readable"] + [f"/proc/{os.getpid()}"]', 'fs["readable"] + [f"/proc/{os.getpid()}", "/"]')
READ_PROC = ("child.py", 'fs["readable"] + [f"/proc/{os.getpid()}"]', 'fs["readable"] + [f"/proc/{os.getpid()}", "/proc"]')
WRITE_TMP = ("child.py", '_filters().landlock(fs["writable"],', '_filters().landlock(fs["writable"] + ["/dev/shm", "/tmp"],')
CTX = ("child.py", "                torch.cuda.init()\n", "                torch.cuda.init()\n                torch.zeros(1, device='cuda')\n")
WRITES = ("worker.py", '"deny_writes": self.isolation != "bwrap"', '"deny_writes": False')
def _write(*paths: str) -> tuple[str, str, str]:
    return ("child.py", '_filters().landlock(fs["writable"],', f'_filters().landlock(fs["writable"] + {list(paths)!r},')


VARIANTS: dict[str, list[tuple[str, str, str]]] = {
    "as-is": [],
    "no-ll+ctx": [NO_LL, CTX],
    "ll-write-all": [_write("/")],
    "ll-write-proc": [_write("/proc")],
    "ll-write-dev": [_write("/dev")],
    "ll-write-sys": [_write("/sys")],
    "ll-write-own-proc": [("child.py", 'fs["writable"], fs["readable"] + [f"/proc/{os.getpid()}"]',
                           'fs["writable"] + [f"/proc/{os.getpid()}"], fs["readable"] + [f"/proc/{os.getpid()}"]')],
}
# earlier run (H100, 2026-12-07): with the Landlock file-system layer CUDA init fails whatever it
# may read (all of /), with signal/socket scopes off, with /tmp and /dev/shm writable; without it
# CUDA starts, and a context made in the trusted phase is not needed
CHECK = """
import sys
from uhop.sandbox.check import check_file
from uhop.sandbox.worker import Limits
res = check_file(sys.argv[1], limits=Limits(wall_s=120), time_it=False, isolation=sys.argv[2])
print(res.ok, res.category, "|", res.reason[:160], "| layers", ",".join(res.layers))
"""


def main() -> None:
    print("kernel", platform.release(), "python", platform.python_version(), "uid", os.getuid(),
          "bwrap", shutil.which("bwrap"))
    site = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    for name, edits in VARIANTS.items():
        with tempfile.TemporaryDirectory() as d:
            shutil.copytree(ROOT / "uhop", Path(d) / "uhop")
            for f, old, new in edits:
                p = Path(d) / "uhop" / "sandbox" / f
                s = p.read_text()
                assert old in s, (name, old)
                p.write_text(s.replace(old, new))
            for iso in ("auto",):
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([d, *[x for x in site if x and x != "."
                                                                             and Path(x).resolve() != ROOT]])}
                r = subprocess.run([sys.executable, "-c", CHECK, str(KERNEL), iso], env=env, capture_output=True,
                                   text=True, timeout=300, cwd=d)
                line = (r.stdout.strip().splitlines() or [r.stderr.strip()[-300:]])[-1]
                print(f"{name:24s} {iso:8s} {line}", flush=True)


if __name__ == "__main__":
    main()
