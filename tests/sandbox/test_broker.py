"""The tool broker (uhop/sandbox/broker.py): it runs Triton's ptxas and C compiler for a sandboxed
worker, and nothing else. Unit tests drive a broker started from this process (Landlock-confined
as in the sandbox); the sandbox tests run kernel files with tools under bubblewrap and under the
fallback, like test_hostile."""

from __future__ import annotations

import base64
import ctypes
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from sandbox_cases import HERE

from uhop.sandbox import broker as broker_mod
from uhop.sandbox import toolshim
from uhop.sandbox.check import check_file
from uhop.sandbox.kernelfile import KernelFileError, StaticPolicy, parse
from uhop.sandbox.worker import Limits, Worker, _readable, _tree_pids, tool_programs

PROGS = tool_programs()
pytestmark = pytest.mark.skipif(not PROGS["cc"] or not PROGS["ptxas"], reason="needs a C compiler and Triton's ptxas")
TOOLS = HERE / "tools"
LIMITS = Limits(wall_s=20.0, cpu_s=20, disk_bytes=128 << 20)
SENTINEL = Path("/tmp/uhop_exec_pwned")
CC_FLAGS = ["-O3", "-shared", "-fPIC", "-Wno-psabi"]
HELPER_C = "double twice(double x) { return 2.0 * x; }\n"
# ten-fold macro expansion nested eight deep: cc1 would preprocess for a very long time
BOMB_C = "#define A(x) x x x x x x x x x x\n#define B(x) A(A(x))\nint f(void) { int s = 0; B(B(B(B(s++;)))) return s; }\n"


@pytest.fixture(autouse=True)
def _compile_for_real(monkeypatch):
    """Triton compiles here (for an sm_90 target), not through its interpreter."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def private(tmp_path):
    d = tmp_path / "private"
    d.mkdir()
    return d


def _start(private: Path, **over) -> toolshim.Client:
    cfg = {**PROGS, "private": str(private), "readable": _readable(False, True), "writable": [str(private), "/dev/null"],
           "timeout_s": 20.0, "cpu_s": 20, "as_bytes": 4 << 30, **over}  # fmt: skip
    c = toolshim.start(cfg)
    c.wait_ready(30)
    return c


@pytest.fixture
def shim(private, monkeypatch):
    monkeypatch.chdir(private)  # the broker runs nothing outside the private directory
    c = _start(private)
    yield toolshim.SubprocessShim(c)
    c.close()
    c.proc.wait(timeout=10)  # EOF on its pipe: the broker exits


def test_builds_a_shared_library_with_tritons_own_build_step(shim, private, monkeypatch):
    from triton.runtime import build

    monkeypatch.setattr(build, "subprocess", shim)
    monkeypatch.setenv("CC", PROGS["cc"][0])
    (private / "helper.c").write_text(HELPER_C)
    so = build._build("helper", str(private / "helper.c"), str(private), [], [], ["m"], [])
    twice = ctypes.CDLL(so).twice
    twice.restype, twice.argtypes = ctypes.c_double, [ctypes.c_double]
    for x in np.random.default_rng().standard_normal(5):
        assert twice(float(x)) == 2.0 * float(x)


def test_runs_ptxas_version_as_triton_asks(shim):
    out = shim.check_output([PROGS["ptxas"][0], "--version"], stderr=shim.STDOUT)
    assert b"release" in out


def test_refusal_raises_permission_error_and_is_reported(shim, private):
    with pytest.raises(PermissionError, match="not an allowed tool"):
        shim.run(["/bin/sh", "-c", f"touch {SENTINEL}"])
    assert not SENTINEL.exists()


@pytest.mark.parametrize("argv0", ["/bin/sh", "sh", "../../../../../../bin/sh", "bash", "/usr/bin/env", "python3"])
def test_refuses_programs_not_allowlisted(shim, argv0):
    with pytest.raises(PermissionError, match="not an allowed tool"):
        shim.run([argv0, "-c", f"touch {SENTINEL}"])
    assert not SENTINEL.exists()


def test_refuses_a_symlink_to_a_shell_named_like_the_compiler(shim, private):
    (private / "bin").mkdir()
    (private / "bin" / "gcc").symlink_to("/bin/sh")
    for argv0 in (str(private / "bin" / "gcc"), "bin/gcc", "./bin/gcc"):
        with pytest.raises(PermissionError, match="not an allowed tool"):
            shim.run([argv0, "-c", f"touch {SENTINEL}"])
    assert not SENTINEL.exists()


def test_a_symlink_to_the_compiler_runs_the_canonical_compiler(shim, private):
    (private / "h.c").write_text(HELPER_C)
    (private / "cc").symlink_to(PROGS["cc"][0])
    r = shim.run(["./cc", "h.c", *CC_FLAGS, "-o", "h.so"], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert (private / "h.so").exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["-B", "/tmp"], ["-B/tmp"], ["-wrapper", "/bin/sh,-c,touch /tmp/uhop_exec_pwned"],
        ["-fplugin=/tmp/evil.so"], ["-fplugin-arg-x-y=z"], ["-specs=/tmp/evil.specs"], ["@/tmp/args.rsp"],
        ["-x", "c"], ["--sysroot=/tmp"], ["-save-temps"], ["-MD"], ["-Wl,-rpath,/tmp"], ["-Xlinker", "-plugin"],
        ["-I", "relative"], ["-l/etc/passwd"], ["-l:../../etc/passwd"], ["-fdump-tree-all"], ["-pipe"],
    ],
    ids=lambda a: " ".join(a)[:30],
)
def test_refuses_compiler_flags_triton_never_passes(shim, private, extra):
    (private / "h.c").write_text(HELPER_C)
    with pytest.raises(PermissionError, match="not one Triton's build passes|outside"):
        shim.run([PROGS["cc"][0], "h.c", *CC_FLAGS, *extra, "-o", "h.so"])
    assert not SENTINEL.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["h.c", *CC_FLAGS, "-o", "/tmp/uhop_escape.so"],  # output outside the private directory
        ["/etc/passwd.c", *CC_FLAGS, "-o", "h.so"],  # source outside
        ["h.c", *CC_FLAGS],  # no output
        ["h.c", "h.c", *CC_FLAGS, "-o", "h.so"],  # two sources
        ["h.c", *CC_FLAGS, "-o", "h.o"],  # not a shared library
    ],
)
def test_refuses_compiler_paths_outside_the_private_directory(shim, private, args):
    (private / "h.c").write_text(HELPER_C)
    with pytest.raises(PermissionError):
        shim.run([PROGS["cc"][0], *args])
    assert not Path("/tmp/uhop_escape.so").exists()


def test_refuses_a_working_directory_outside_the_private_directory(shim):
    with pytest.raises(PermissionError, match="outside"):
        shim.run([PROGS["ptxas"][0], "--version"], cwd="/")


@pytest.mark.parametrize(
    "args",
    [
        ["--gpu-name=sm_90a", "k.ptx", "-o", "/tmp/uhop_escape.o"], ["--gpu-name=sm_90a", "/etc/k.ptx", "-o", "k.o"],
        ["--gpu-name=sm_90a", "--input-as-string", "x", "k.ptx", "-o", "k.o"], ["--gpu-name=bogus", "k.ptx", "-o", "k.o"],
        ["--opt-level", "9", "k.ptx", "-o", "k.o"], ["--version", "-o", "/tmp/x"], ["@args", "k.ptx", "-o", "k.o"],
    ],
)
def test_refuses_ptxas_arguments_triton_never_passes(shim, private, args):
    (private / "k.ptx").write_text("")
    with pytest.raises(PermissionError):
        shim.run([PROGS["ptxas"][0], *args])


def test_accepts_the_ptxas_line_triton_builds():
    broker_mod.check_ptxas(["-lineinfo", "-v", "--gpu-name=sm_90a", "/p/k.ptx", "-o", "/p/k.ptx.o"], "/p", "/p")
    broker_mod.check_ptxas(["-lineinfo", "-suppress-debug-info", "--fmad=false", "-v", "--opt-level", "0",
                            "--gpu-name=sm_80", "/p/k.ptx", "-o", "/p/k.ptx.o"], "/p", "/p")  # fmt: skip
    broker_mod.check_cc(["/p/s.c", *CC_FLAGS, "-o", "/p/m.cpython-311-x86_64-linux-gnu.so", "-l:libcuda.so.1",
                         "-L/usr/lib/x86_64-linux-gnu", "-I/p", "-I/usr/include/python3.11"], "/p", "/p")  # fmt: skip


def test_kills_a_tool_past_its_timeout_with_its_helpers(private, monkeypatch):
    monkeypatch.chdir(private)
    c = _start(private, timeout_s=1.0)
    try:
        (private / "bomb_uhop.c").write_text(BOMB_C)
        t0 = time.monotonic()
        r = toolshim.SubprocessShim(c).run([PROGS["cc"][0], "bomb_uhop.c", *CC_FLAGS, "-o", "bomb.so"])
        took = time.monotonic() - t0
        assert r.returncode != 0 and took < 8, (r.returncode, took)
        time.sleep(0.2)
        assert _tree_pids(c.pid) == [c.pid]  # cc1 and as went with gcc
        left = [p for p in os.listdir("/proc") if p.isdigit() and b"bomb_uhop" in _cmdline(p)]
        assert not left, left
    finally:
        c.close()
        c.proc.wait(timeout=10)


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_malformed_request_is_refused_and_the_broker_exits(private):
    c = _start(private)
    os.write(c.wfd, struct.pack("<Q", 5) + b"nojso")
    (n,) = struct.unpack("<Q", os.read(c.rfd, 8))
    assert "refused" in json.loads(os.read(c.rfd, n))
    assert c.proc.wait(timeout=10) != 0


def test_broker_exits_when_the_worker_goes(private):
    c = _start(private)
    c.close()
    assert c.proc.wait(timeout=10) == 0


def test_tool_output_is_capped(private, monkeypatch):
    monkeypatch.chdir(private)
    c = _start(private, out_bytes=100)
    try:
        (private / "bad.c").write_text("int f(void) { return " + "x + " * 500 + "0; }\n")
        r = toolshim.SubprocessShim(c).run([PROGS["cc"][0], "bad.c", *CC_FLAGS, "-o", "bad.so"], capture_output=True)
        assert r.returncode != 0 and 0 < len(r.stderr) <= 100
    finally:
        c.close()


def test_raw_reply_fields(private, monkeypatch):
    monkeypatch.chdir(private)
    c = _start(private)
    try:
        reply = c.call([PROGS["ptxas"][0], "--version"], str(private))
        assert reply["returncode"] == 0 and b"ptxas" in base64.b64decode(reply["stdout"]) and not reply["timed_out"]
    finally:
        c.close()


# ---- kernel files with tools, in the sandbox ---------------------------------------------------
ISOLATIONS = ["auto", "seccomp"]  # bubblewrap where usable, and the fallback (seccomp + Landlock + namespaces)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_triton_compiles_to_a_cubin_through_the_broker(isolation):
    """Triton's whole CUDA compile path, ptxas included, in the sandbox; no GPU needed."""
    res = check_file(TOOLS / "softmax_ptxas.py", isolation=isolation, time_it=False, limits=LIMITS)
    assert res.ok, res.line()
    assert "tools" in res.layers and "seccomp" in res.layers


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_kernel_compiled_at_its_first_call_passes_the_side_effect_check(isolation):
    """A ``@triton.jit`` kernel compiles at its first launch, after the baseline of the process
    state; LLVM's signal handlers, installed by the first compile in a process, must not count
    as the candidate's (every Triton CUDA kernel file was rejected so on the H100)."""
    res = check_file(TOOLS / "softmax_ptxas_lazy.py", isolation=isolation, limits=LIMITS)
    assert res.ok, res.line()
    assert res.median_s > 0


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_c_helper_built_with_tritons_build_step_passes(isolation):
    res = check_file(TOOLS / "softmax_c_helper.py", isolation=isolation, policy=StaticPolicy(enabled=False),
                     limits=LIMITS)  # fmt: skip
    assert res.ok, res.line()
    assert res.median_s > 0


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("name", ["tool_shell", "tool_raw_request"])
def test_hostile_tool_requests_are_forbidden(isolation, name):
    res = check_file(HERE / "hostile" / f"{name}.py", isolation=isolation, policy=StaticPolicy(enabled=False),
                     time_it=False, limits=LIMITS)  # fmt: skip
    assert res.category == "forbidden", res.line()
    assert "/bin/sh" in res.reason
    assert not SENTINEL.exists()


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_direct_exec_is_still_forbidden_with_tools(isolation):
    res = check_file(HERE / "hostile" / "exec_sh.py", isolation=isolation, policy=StaticPolicy(enabled=False),
                     time_it=False, limits=LIMITS, tools=True)  # fmt: skip
    assert res.category == "forbidden", res.line()
    assert "tools" in res.layers
    assert not SENTINEL.exists()


SNOOPER = """
import glob, os, threading, time
from triton.runtime import build
OP = 'softmax'
TOOLS = True
with open('bomb_uhop.c', 'w') as f:
    f.write({bomb!r})
threading.Thread(target=lambda: build.subprocess.run([{cc!r}, 'bomb_uhop.c', '-O3', '-shared', '-fPIC',
                 '-o', 'bomb.so'], timeout=3), daemon=True).start()
me, opened, seen = os.getpid(), [], set()
end = time.monotonic() + 2
while time.monotonic() < end:
    for d in glob.glob('/proc/[0-9]*'):
        pid = int(d[6:])
        if pid == me:
            continue
        try:
            with open(d + '/comm') as f:
                seen.add(f.read().strip())
        except OSError:
            pass
        for name, mode in (('mem', 'r+b'), ('environ', 'rb')):
            try:
                with open(d + '/' + name, mode):
                    opened.append(name + ':' + str(pid))
            except OSError:
                pass
    time.sleep(0.01)
raise RuntimeError('opened ' + ','.join(sorted(set(opened))) + ' seen ' + ','.join(sorted(seen)))
def run(x):
    return x
"""


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_candidate_cannot_reach_the_memory_of_the_broker_or_its_tools(tmp_path, isolation):
    """A process in the worker's Landlock domain cannot open /proc/<pid>/mem (or environ) of the
    broker or of a compiler it runs, though they share its user: else writing into a running
    cc1 would be an exec outside seccomp."""
    f = tmp_path / "snoop.py"
    f.write_text(SNOOPER.format(bomb=BOMB_C, cc=PROGS["cc"][0]))
    res = check_file(f, isolation=isolation, policy=StaticPolicy(enabled=False), time_it=False,
                     limits=Limits(wall_s=20.0, cpu_s=20))  # fmt: skip
    assert "opened " in res.reason, res.line()
    opened, seen = res.reason.split("opened ")[1].split(" seen ")
    assert opened == "", res.reason
    if "bwrap" in res.layers:  # there /proc lists the sandbox's processes: the test saw its targets
        assert "cc1" in seen.split(","), res.reason


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_no_worker_can_write_another_process_memory(isolation):
    """Every worker, tools or not, sits in the Landlock domain (layer ``shield``): under
    bubblewrap /proc/1/mem (bwrap's init, outside seccomp) was writable before it."""
    res = check_file(HERE / "hostile" / "writes_proc_mem.py", isolation=isolation,
                     policy=StaticPolicy(enabled=False), time_it=False, limits=LIMITS)  # fmt: skip
    assert res.category == "forbidden", res.line()
    assert "shield" in res.layers


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_workers_without_tools_start_no_broker(isolation):
    def brokers(w: Worker) -> list[int]:
        return [p for p in _tree_pids(w.proc.pid) if b"broker.py" in _cmdline(str(p))]

    with Worker(isolation, LIMITS) as plain, Worker(isolation, LIMITS, tools=True) as tooled:
        src = "OP = 'softmax'\ndef run(x):\n    return x.copy()\n"
        assert "tools" not in plain.load(src, "k.py") and not brokers(plain)
        assert "tools" in tooled.load(src, "k.py") and len(brokers(tooled)) == 1


def test_tools_literal_in_kernel_files():
    kf = parse(b"OP = 'softmax'\nTOOLS = True\ndef run(x):\n    return x\n", Path("k.py"))
    assert kf.tools and kf.needs_tools
    kf = parse(b"OP = 'softmax'\nDEVICE = 'cuda'\ndef run(x):\n    return x\n", Path("k.py"))
    assert not kf.tools and kf.needs_tools
    with pytest.raises(KernelFileError, match="TOOLS"):
        parse(b"OP = 'softmax'\nTOOLS = 1\ndef run(x):\n    return x\n", Path("k.py"))


def test_a_failed_compile_names_the_compiler_error(shim, private):
    (private / "bad.c").write_text("int f(void) { return undeclared_thing; }\n")
    with pytest.raises(shim.CalledProcessError, match="undeclared_thing"):
        shim.check_call([PROGS["cc"][0], "bad.c", *CC_FLAGS, "-o", "bad.so"], stdout=shim.DEVNULL)
