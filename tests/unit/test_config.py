"""Settings are declared once: every ``UHOP_*`` variable the package names is a field of
``uhop.config.Settings`` (or one of the sandbox's internal hand-overs), and README.md's settings
table lists each with its default."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from uhop import config

ROOT = Path(__file__).resolve().parents[2]
VAR = re.compile(r"UHOP_[A-Z0-9_]+")


def _names_in_code() -> dict[str, set[str]]:
    """Every string constant in uhop/ that is exactly a ``UHOP_*`` name, with the files naming it
    (os.environ.get("UHOP_X"), setenv, env dicts for workers: docstrings do not count)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "uhop").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and VAR.fullmatch(node.value):
                found.setdefault(node.value, set()).add(str(path.relative_to(ROOT)))
    return found


def _readme_table() -> dict[str, str]:
    """README's settings table: variable -> its default cell (rows like ``A` / `B`` split)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Settings"):]
    table = table[: table.index("\n## ")]
    rows: dict[str, str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`UHOP_"):
            continue
        names = re.findall(r"`(UHOP_[A-Z0-9_]+)`", cells[0])
        defaults = cells[1].split(" / ") if len(names) > 1 else [cells[1]]
        assert len(defaults) == len(names), f"README row {cells[0]}: one default per variable"
        rows.update(zip(names, defaults, strict=True))
    return rows


def test_every_variable_named_in_the_package_is_declared_in_config():
    declared = {var for var, _ in config.ENV.values()} | set(config.INTERNAL)
    undeclared = {name: files for name, files in _names_in_code().items() if name not in declared}
    assert not undeclared, f"UHOP_* variables read outside uhop/config.py's ENV: {undeclared}"


def test_internal_variables_stay_inside_the_sandbox():
    for name, files in _names_in_code().items():
        if name in config.INTERNAL:
            assert all(f.startswith("uhop/sandbox/") or f == "uhop/config.py" for f in files), (name, files)


def test_readme_lists_every_setting_with_its_default():
    rows = _readme_table()
    env = {var: name for name, (var, _) in config.ENV.items()}
    assert set(rows) == set(env), f"README only: {set(rows) - set(env)}; config only: {set(env) - set(rows)}"
    for var, name in env.items():
        default = next(f for f in dataclasses.fields(config.Settings) if f.name == name).default
        if default is None or default == "" or default == () or default is dataclasses.MISSING:
            continue  # documented in words: unset, all, the user cache dir
        text = ("1" if default else "0") if isinstance(default, bool) else f"{default:g}" if isinstance(default, float) else str(default)
        text = {"precompile_workers": "auto"}.get(name, text)  # -1 stands for auto
        assert f"`{text}`" in rows[var], f"README's default for {var} is {rows[var]!r}; config's is {text!r}"


def test_read_parses_one_variable_as_settings_does(monkeypatch):
    with monkeypatch.context() as m:  # undone before the fixture's teardown re-reads the environment
        m.setenv("UHOP_THREADS", " Default ")
        m.setenv("UHOP_METRICS_PORT", "9100")
        m.setenv("UHOP_POLICY", "no-such-policy")  # read() of another field is unaffected
        assert config.read("threads") == "default" and config.read("metrics_port") == 9100
        assert config.read("spotcheck_rate") == 0.01 and config.read("opencl_platform") == ""
        with pytest.raises(ValueError, match="UHOP_POLICY must be one of background, tune, fast, got 'no-such-policy'"):
            config.reload()
        m.delenv("UHOP_POLICY")
        s = config.reload()
        assert (s.threads, s.metrics_port) == ("default", 9100)


@pytest.mark.parametrize(
    "var, raw, message",
    [
        ("UHOP_BENCH_REPEAT", "seven", "UHOP_BENCH_REPEAT must be an integer, got 'seven'"),
        ("UHOP_METRICS_PORT", "abc", "UHOP_METRICS_PORT must be a port number, got 'abc'"),
        ("UHOP_METRICS_SAMPLE_EVERY", "0", "UHOP_METRICS_SAMPLE_EVERY must be an integer >= 1, got 0"),
        ("UHOP_SPOTCHECK_RATE", "2", "UHOP_SPOTCHECK_RATE must be in [0, 1], got 2.0"),
        ("UHOP_THREADS", "spin", "UHOP_THREADS must be one of brief, passive, default, got 'spin'"),
        ("UHOP_LOG", "loud", "UHOP_LOG must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch, var, raw, message):
    with monkeypatch.context() as m, pytest.raises(ValueError) as exc:
        m.setenv(var, raw)
        config.reload()
    assert str(exc.value) == message


def test_secrets_stay_out_of_the_repr():
    s = dataclasses.replace(config.Settings(), serve_token="s3cret-token-0123456789", ai_api_key="sk-live-abc")
    assert "s3cret" not in repr(s) and "sk-live" not in repr(s)


@pytest.mark.parametrize("var, raw", [("UHOP_THREADS", "spin"), ("UHOP_POLICY", "bad"), ("UHOP_BENCH_REPEAT", "x")])
def test_the_uhop_command_reports_a_bad_setting_in_one_line(tmp_path, var, raw):
    """Even one read at ``import uhop`` (UHOP_THREADS): one line on stderr, exit code 2."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, UHOP_HOME=str(tmp_path), PYTHONPATH=str(ROOT), **{var: raw})
    env.pop("UHOP_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", "from uhop.cli import main; main(['cache', 'ls'])"], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {var} must be"), r.stderr


def test_thread_policy_reaches_libraries_loaded_after_import_uhop():
    """``import uhop`` sets the pools' idle policy before numpy (OpenBLAS) or numba load: by
    default a brief spin, ``passive`` sleeps at once; a value the user set wins."""
    import os
    import subprocess
    import sys

    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OPENBLAS_THREAD_TIMEOUT")
    code = ("import os, sys; import uhop; assert 'numpy' in sys.modules; "
            f"print(*(os.environ.get(k, '-') for k in {keys!r}))")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in (*keys, "UHOP_THREADS")}

    def run(**extra: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        return out.stdout.split() or [out.stderr[-500:]]

    assert run() == ["-", "3000", "1", "4"]
    assert run(OPENBLAS_THREAD_TIMEOUT="10", GOMP_SPINCOUNT="50") == ["-", "50", "1", "10"]
    assert run(OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "-", "-", "4"]  # the user's wait policy: no spin count of ours
    assert run(UHOP_THREADS="passive") == ["PASSIVE", "-", "0", "4"]
    assert run(UHOP_THREADS="default") == ["-", "-", "-", "-"]


def test_libraries_imported_before_uhop_are_named_once_at_the_first_cpu_tuning(tmp_path):
    """The policy cannot reach a pool loaded before it: the first CPU tuning run says which."""
    import os
    import subprocess
    import sys

    code = ("import logging, sys\n"
            "if sys.argv[1] == 'numpy-first': import numpy\n"
            "import uhop, numpy as np\n"
            "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "for n in (8, 9):\n"
            "    uhop.ops.softmax(np.ones((4, n), np.float32))\n"
            "uhop.wait()")  # fmt: skip
    env = {**os.environ, "UHOP_HOME": str(tmp_path), "UHOP_TUNE_BUDGET_S": "1", "UHOP_BACKENDS": "numpy"}
    for v in ("UHOP_THREADS", "OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_WAIT_POLICY"):
        env.pop(v, None)  # this process's import of uhop set some: a child would inherit them
    said = []
    for order in ("numpy-first", "uhop-first"):
        r = subprocess.run([sys.executable, "-c", code, order], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-800:]
        said.append([ln for ln in r.stderr.splitlines() if "thread policy" in ln])
    assert len(said[0]) == 1 and "UhopWarning: thread policy 'brief' does not reach numpy: imported before uhop" in said[0][0]
    assert "Import uhop first, or start Python with GOMP_SPINCOUNT=3000 OPENBLAS_THREAD_TIMEOUT=4" in said[0][0]
    assert said[1] == []
    # set in the environment before Python started: the pool got it whatever the import order
    r = subprocess.run([sys.executable, "-c", code, "numpy-first"], env={**env, "OPENBLAS_THREAD_TIMEOUT": "4"},
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and "thread policy" not in r.stderr, r.stderr[-800:]


def test_the_brief_policy_keeps_small_torch_ops_fast_when_torch_loads_after_uhop():
    """The measured cost of ``passive``: with torch imported after UHOP each parallel region
    woke sleeping threads (55-60 us for a 64x64 torch op on the 2-core VM, 2-5 us otherwise).
    Under the default policy a small torch op imported after UHOP is as fast as one imported
    first (same process kind, interleaved; generous bound for noisy CI)."""
    import os
    import subprocess
    import sys

    code = ("import sys, time\n"
            "if sys.argv[1] == 'after': import uhop\n"
            "import torch\n"
            "y = torch.randn(64, 64)\n"
            "best = 1e9\n"
            "for _ in range(7):\n"
            "    t = time.perf_counter()\n"
            "    for _ in range(300): torch.nn.functional.layer_norm(y @ y, (64,))\n"
            "    best = min(best, (time.perf_counter() - t) / 300)\n"
            "print(best)")  # fmt: skip
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "UHOP_THREADS")}  # fmt: skip
    pytest.importorskip("torch")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: torch runs no parallel region to wake")
    t = {"first": [], "after": []}
    for _ in range(2):
        for order in t:
            r = subprocess.run([sys.executable, "-c", code, order], env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr[-500:]
            t[order].append(float(r.stdout))
    assert min(t["after"]) < 3 * min(t["first"]) + 5e-6, t
