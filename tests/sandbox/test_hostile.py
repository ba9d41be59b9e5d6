"""Every hostile kernel file is contained and rejected with its category; the host process
stays alive, nothing is written outside the sandbox, and the store gains and loses nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sandbox_cases import HOSTILE, SECRET, expectations, written

from uhop.sandbox.check import CATEGORIES, check_file
from uhop.sandbox.kernelfile import StaticPolicy
from uhop.sandbox.worker import Limits, bwrap_path

# Short limits (the timeout cases cost ~3 s each) and a small private disk (fills quickly).
LIMITS = Limits(wall_s=3.0, cpu_s=6, disk_bytes=64 << 20)
SENTINELS = [Path.home() / "uhop_pwned.txt", Path("/root/uhop_pwned.txt"), Path("/tmp/uhop_exec_pwned"),
             Path("/tmp/uhop_unpickled")]  # fmt: skip


@pytest.fixture(autouse=True)
def store_guard(uhop_home):
    """A store with one entry before each case: afterwards it holds exactly that entry, and
    nothing new appeared under UHOP_HOME (no registered kernel, no stray file)."""
    from uhop.store import open_store

    store = open_store()
    store.record(
        "softmax:5x7:float32:guard", {"op": "softmax"}, {"backend": "numpy", "template": "eager", "config": {}},
        [], median_s=1e-6, gflops=None, gbps=None, policy="tune", fingerprint={}, content_hash="guard",
    )  # fmt: skip
    before = [e.to_json() for e in store.entries()]
    files = sorted(p for p in uhop_home.rglob("*") if p.is_file())
    yield
    assert [e.to_json() for e in store.entries()] == before
    assert sorted(p for p in uhop_home.rglob("*") if p.is_file()) == files


def test_suite_is_big_enough():
    assert len(HOSTILE) >= 25
    for p in HOSTILE:
        e = expectations(p)
        assert set(e["expect"].split("|")) <= set(CATEGORIES), p.name
        assert set(e.get("expect-unchecked", "ok").split("|")) <= {*CATEGORIES, "ok"}, p.name


def _no_escape() -> None:
    for s in SENTINELS:
        assert not written(s), f"a candidate wrote {s}"
    assert not list(Path.cwd().glob("fill_*.bin"))


@pytest.mark.parametrize("isolation", ["auto", "seccomp"])
@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: p.stem)
def test_hostile_rejected(path, isolation):
    """Default static policy; ``auto`` is bubblewrap where usable, ``seccomp`` the fallback."""
    if path.stem.startswith("tool_"):  # they ask Triton's shimmed subprocess for a tool
        pytest.importorskip("triton", reason="Triton not installed (pip install 'uhop[gpu]')")
    e = expectations(path)
    res = check_file(path, limits=LIMITS, time_it=e.get("timed") == "yes", isolation=isolation)
    assert not res.ok
    expect = e["expect"].split("|")
    if path.stem == "writes_home" and os.geteuid() != 0:
        expect.append("crash")  # a normal user: the host's file permissions refuse /root before the sandbox does
    assert res.category in expect, res.line()
    assert res.line().startswith(f"rejected: {res.category}: ")
    _no_escape()


UNCHECKED = [p for p in HOSTILE if "expect-unchecked" in expectations(p)]


@pytest.mark.parametrize("path", UNCHECKED, ids=lambda p: p.stem)
def test_hostile_contained_by_os_layer(path):
    """With the static check off, the OS layer and the validator still catch the candidate."""
    if path.stem.startswith("tool_"):
        pytest.importorskip("triton", reason="Triton not installed (pip install 'uhop[gpu]')")
    e = expectations(path)
    res = check_file(path, limits=LIMITS, policy=StaticPolicy(enabled=False), time_it=False)
    assert not res.ok
    assert res.category in e["expect-unchecked"].split("|"), res.line()
    assert ("bwrap" in res.layers) == (bwrap_path() is not None)
    assert "seccomp" in res.layers and "rlimits" in res.layers
    if path.stem == "reads_env_secret":
        assert "no secret" in res.reason  # the sandbox's environment was scrubbed
    _no_escape()


# Without bubblewrap (or where it cannot run) the sandbox falls back to rlimits + seccomp (+ a
# network namespace when unshare works); these cases must be contained there as well.
FALLBACK = {
    "fork_bomb": {"forbidden"},
    "opens_socket": {"forbidden"},
    "exec_sh": {"forbidden"},
    "writes_home": {"forbidden"},
    "reads_env_secret": {"crash"},
    "fills_disk": {"forbidden", "disk"},
    "kills_parent": {"forbidden"},
    "os_exit": {"crash"},
    "alloc_64gb": {"memory"},
    "segfault_numpy": {"crash"},
    "import_time_attack": {"forbidden"},
}


@pytest.mark.parametrize("name", sorted(FALLBACK))
def test_hostile_contained_without_bwrap(name):
    res = check_file(
        Path(__file__).parent / "hostile" / f"{name}.py", limits=LIMITS, policy=StaticPolicy(enabled=False),
        time_it=False, isolation="seccomp",
    )  # fmt: skip
    assert not res.ok
    assert res.category in FALLBACK[name], res.line()
    assert "bwrap" not in res.layers and {"seccomp", "rlimits"} <= set(res.layers)
    assert "no-writes" in res.layers or {"landlock", "tmpfs"} <= set(res.layers)
    _no_escape()


def test_secret_never_reaches_the_sandbox():
    assert os.environ["UHOP_TEST_SECRET"] == SECRET
    res = check_file(Path(__file__).parent / "hostile" / "reads_env_secret.py", policy=StaticPolicy(enabled=False),
                     limits=LIMITS, time_it=False)  # fmt: skip
    assert res.category == "crash" and "no secret" in res.reason


def test_timer_patching_does_not_fool_timing(tmp_path):
    """A kernel that sleeps 20 ms per call and patches every clock in its process to claim it is
    instant is timed on the parent's clock."""
    f = tmp_path / "fake_fast.py"
    f.write_text(
        "import time\nimport numpy as np\nOP = 'softmax'\n_real_sleep = time.sleep\n"
        "time.perf_counter = lambda: 0.0\ntime.monotonic = lambda: 0.0\ntime.perf_counter_ns = lambda: 0\n"
        "def run(x):\n    _real_sleep(0.02)\n    e = np.exp(x - x.max(axis=-1, keepdims=True))\n"
        "    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)\n"
    )
    res = check_file(f, policy=StaticPolicy(enabled=False), limits=Limits(wall_s=10))
    assert res.ok, res.line()
    assert res.median_s >= 0.018


def test_cpu_limit_is_a_timeout():
    res = check_file(Path(__file__).parent / "hostile" / "busy_loop.py", limits=Limits(wall_s=30, cpu_s=1), time_it=False)
    assert res.category == "timeout" and "CPU time limit" in res.reason


@pytest.mark.parametrize("isolation", ["auto", "seccomp"])
def test_host_files_and_parent_environment_unreadable(tmp_path, isolation):
    """A secret file of the host and this process's environment (as /proc shows it) stay out of
    reach: not mounted (bubblewrap) or refused by Landlock (fallback; without Landlock the
    fallback cannot promise it and the case is skipped)."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    ours = Path(f"/proc/{os.getpid()}/environ").read_bytes().split(b"\0")
    marker = next(v for v in ours if b"=" in v and not v.startswith((b"PATH=", b"HOME=", b"LANG=", b"TMPDIR=")))
    f = tmp_path / "reader.py"
    f.write_text(
        "import os\nOP = 'softmax'\ndef run(x):\n    got = []\n"
        f"    for p in [{str(secret)!r}, '/proc/%d/environ' % os.getppid(), '/proc/{os.getpid()}/environ']:\n"
        "        try:\n            got.append(open(p, 'rb').read())\n        except OSError:\n            pass\n"
        f"    leaked = any(b'hunter2' in g or {marker!r} in g for g in got)\n"
        "    raise RuntimeError('leaked' if leaked else 'nothing')\n"
    )
    res = check_file(f, policy=StaticPolicy(enabled=False), time_it=False, isolation=isolation, limits=LIMITS)
    if isolation == "seccomp" and "landlock" not in res.layers:
        pytest.skip(f"no Landlock here (layers: {res.layers})")
    assert res.reason.endswith("nothing"), res.line()
