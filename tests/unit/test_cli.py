"""The `uhop` command end to end (in-process through typer's runner, plus one real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from uhop.cli import build_app

runner = CliRunner()
app = build_app()


@pytest.fixture(autouse=True)
def wide_console():
    """Rich tables crop to the terminal; give them room so keys print whole."""
    import uhop.cli.cache
    import uhop.cli.core

    for c in (uhop.cli.core.console, uhop.cli.cache.console):
        c.width = 220


def run(*args, code=0):
    res = runner.invoke(app, list(args))
    assert res.exit_code == code, res.output + (str(res.exception) if res.exception else "")
    return res.output


def test_info_and_ops():
    out = run("info")
    assert "numpy" in out and "Backends" in out
    out = run("ops")
    for op in ("matmul", "softmax", "layernorm", "rmsnorm", "elementwise", "attention", "conv2d"):
        assert op in out


def test_help_text_reads_as_paragraphs_not_source_lines():
    """A docstring's wrapped lines are joined in ``--help`` (Typer keeps them otherwise), bullets and
    indented examples keep their lines; every command of every sub-app gets it."""
    from uhop.cli import reflow

    doc = """Summary line
    that wraps.

    Body text over
    two lines.

    - a bullet
      continued
    - another

    Example::

        uhop tune softmax
        uhop cache ls
    """
    assert reflow(doc) == ("Summary line that wraps.\n\nBody text over two lines.\n\n- a bullet continued\n- another"
                           "\n\nExample::\n\n    uhop tune softmax\n    uhop cache ls")  # fmt: skip

    def commands(t):
        yield from t.registered_commands
        for g in t.registered_groups:
            yield from commands(g.typer_instance)

    for info in commands(app):
        for para in (info.help or "").split("\n\n"):
            if not para.startswith(" ") and "\n" in para:  # only bullets keep line breaks
                assert all(ln.startswith(("- ", "* ")) for ln in para.split("\n")[1:]), (info.name, para)
    out = run("demo", "--help")
    assert "The main job: a transformer block run through UHOP on this machine." in " ".join(out.split())


def test_tune_then_cache_commands(tmp_path):
    out = run("tune", "matmul", "--shape", "64x48x32", "--budget", "5", "--json", str(tmp_path / "t.json"))
    assert "chosen" in out and "GFLOP/s" in out
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["chosen"] is not None and any(m["status"] == "ok" for m in doc["measurements"])
    run("tune", "softmax", "--shape", "32x100", "--policy", "fast")
    out = run("cache", "ls")
    assert "matmul:1x64x48x32" in out and "softmax:32x100" in out
    out = run("cache", "show", "matmul:1x64x48x32")
    assert '"measurements"' in out
    run("cache", "export", str(tmp_path / "e.json"))
    out = run("cache", "verify")
    assert "ok" in out
    run("cache", "clear", "--yes")
    assert "matmul" not in run("cache", "ls")
    run("cache", "import", str(tmp_path / "e.json"))
    assert "matmul:1x64x48x32" in run("cache", "ls")


@pytest.mark.parametrize(
    "args,msg",
    [
        (["tune", "matmul", "--shape", "3x4"], "shape for matmul must be"),
        (["tune", "gemm", "--shape", "3x4x5"], "unknown op 'gemm'"),
        (["tune", "matmul", "--shape", "8x8x8", "--dtype", "int8"], "--dtype must be one of"),
        (["tune", "matmul", "--shape", "8x8x8", "-p", "activation=tanh"], "activation must be one of"),
        (["cache", "show", "nope"], "no entry with key"),
        (["cache", "import", "/nonexistent.json"], "does not exist"),
        (["cache", "clear", "--op", "gemm"], "--op 'gemm' is not an op; known ops: attention"),
        (["cache", "export", "/nonexistent/dir/x.json"], "folder /nonexistent/dir does not exist"),
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(args, msg):
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert msg in res.output


def test_real_console_script(tmp_path):
    env = {"UHOP_HOME": str(tmp_path), "PATH": __import__("os").environ["PATH"]}
    res = subprocess.run([sys.executable, "-m", "uhop", "tune", "elementwise", "--shape", "1000", "-p", "expr=x0*2+1",
                          "--budget", "3"], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "chosen" in res.stdout


def _procs_with_env(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``marker`` (this test's UHOP_HOME)."""
    import os
    from pathlib import Path

    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_a_tuning_run_says_so_and_leaves_no_worker(tmp_path):
    """Ctrl-C during `uhop tune`: exit status 130 and 'interrupted' on stderr (typer's own exit
    said nothing), nothing stored, and no isolation worker or compiler left running."""
    import os
    import signal
    import time

    env = {"UHOP_HOME": str(tmp_path), "PATH": os.environ["PATH"], "UHOP_TUNE_BUDGET_S": "60"}
    p = subprocess.Popen([sys.executable, "-m", "uhop", "tune", "matmul", "--shape", "384x384x384"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_procs_with_env(str(tmp_path))) < 2 and time.monotonic() < deadline:  # the worker is up
            time.sleep(0.2)
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and "interrupted" in err, (p.returncode, err[-1500:])
    deadline = time.monotonic() + 10
    while _procs_with_env(str(tmp_path)) and time.monotonic() < deadline:  # workers die with their parent
        time.sleep(0.2)
    assert not _procs_with_env(str(tmp_path))
    from uhop import config
    from uhop.store import open_store

    with config.override(home=tmp_path):
        assert not open_store().entries("matmul")


def test_demo_runs_the_block_and_checks_it_against_float64():
    out = run("demo", "--tokens", "64", "--d-model", "64", "--budget", "1")
    assert "What UHOP chose" in out and "whole block" in out and "ok" in out
    res = runner.invoke(app, ["demo", "--d-model", "7"])
    assert res.exit_code != 0 and "--d-model" in res.output


def test_demo_reports_ties_from_the_tuning_run(uhop_home):
    """The demo says when its pick was statistically tied (another run may keep the other)."""
    from uhop.demo import _tied_with
    from uhop.store import open_store

    c = {"backend": "numpy", "template": "blas", "config": {}}
    note = "re-timed interleaved over 7 rounds against numba/x; statistically tied with numba/x (kept the preferred)"
    open_store().record("matmul:1x2x3x4:float32:tie", {"op": "matmul"}, c,
                        [{"candidate": c, "status": "ok", "median_s": 1e-3, "reason": note},
                         {"candidate": {"backend": "numba", "template": "x", "config": {}}, "status": "ok", "median_s": 1e-3}],
                        median_s=1e-3, gflops=None, gbps=None, policy="tune", fingerprint={})  # fmt: skip
    assert _tied_with("matmul:1x2x3x4:float32:tie") == "numba/x"
    assert _tied_with("no-such-key") == ""


def test_demo_tie_report_names_one_and_counts_the_rest(uhop_home):
    from uhop.demo import _tied_with
    from uhop.store import open_store

    c = {"backend": "numpy", "template": "blas", "config": {}}
    note = ("re-timed; statistically tied with numba/rows{parallel=True,rows=32}, numba/rows{parallel=False,rows=8}, "
            "numba/rows{parallel=Tr")  # cut short by the store's reason limit
    open_store().record("softmax:2x3:float32:tie", {"op": "softmax"}, c, [{"candidate": c, "status": "ok", "median_s": 1e-3,
                        "reason": note}], median_s=1e-3, gflops=None, gbps=None, policy="tune", fingerprint={})  # fmt: skip
    assert _tied_with("softmax:2x3:float32:tie") == "numba/rows{parallel=True,rows=32} and 1 more"
