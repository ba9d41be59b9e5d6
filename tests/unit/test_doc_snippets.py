"""Every ```python and ```bash block of README.md and docs/*.md runs, as written.

A block runs in a fresh process, in a scratch directory that links the repository's ``uhop/``,
``benchmarks/``, ``scripts/`` and ``pyproject.toml`` (so repo-relative paths work) with a private
``UHOP_HOME``; ``uhop`` and ``python`` on its PATH are this checkout's. The text is never edited:
only the environment is made quick (``UHOP_TUNE_BUDGET_S=1``, short timing), as a user may set it.

An HTML comment on the line before a block says what it needs (nothing: it runs here):

- ``<!-- snippet: file NAME -->``  the block is the content of file NAME, which the document's
  other blocks use (written to the scratch directory before any block runs);
- ``<!-- snippet: gpu -->``  needs a CUDA GPU: skipped without one, with the reason;
- ``<!-- snippet: skip REASON -->``  cannot run in a test (installs packages, needs a cluster or an
  interrupted run, or is the test command itself): skipped with REASON;
- ``<!-- snippet: slow -->``  minutes of benchmarking: runs only with ``UHOP_DOC_SNIPPETS=all``.

Untagged fences are output, diagrams or synopses, never commands to run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*snippet:\s*(\w+)\s*(.*?)\s*-->\s*$")
SHELLS = {"bash", "sh", "shell", "console"}


def snippets(doc: Path) -> list[dict]:
    """The fenced blocks of ``doc``: language, text, line, and the mark on the line before."""
    out, lines, i = [], doc.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        mark = MARK.match(lines[start - 1]) if start > 0 else None
        out.append({"doc": doc, "lang": lang, "line": start + 1, "text": "\n".join(lines[start + 1:j]) + "\n",
                    "mark": mark.group(1) if mark else None, "arg": mark.group(2) if mark else ""})  # fmt: skip
        i = j + 1
    return out


def runnable() -> list[dict]:
    return [s for d in DOCS for s in snippets(d) if s["lang"] == "python" or s["lang"] in SHELLS]


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """Per document: a scratch directory with the repo's paths linked and its ``file`` blocks
    written; a bin directory whose ``uhop`` and ``python`` are this checkout's."""
    base = tmp_path_factory.mktemp("snippets")
    bindir = base / "bin"
    bindir.mkdir()
    for name, cmd in (("uhop", f'exec "{sys.executable}" -m uhop "$@"'), ("python", f'exec "{sys.executable}" "$@"'),
                      ("python3", f'exec "{sys.executable}" "$@"')):  # fmt: skip
        p = bindir / name
        p.write_text(f"#!/bin/sh\n{cmd}\n")
        p.chmod(0o755)
    dirs: dict[Path, Path] = {}

    def workdir(doc: Path) -> Path:
        if doc not in dirs:
            d = base / doc.stem
            d.mkdir()
            for name in ("uhop", "benchmarks", "scripts", "pyproject.toml", "requirements"):
                (d / name).symlink_to(ROOT / name)
            for s in snippets(doc):
                if s["mark"] == "file":
                    (d / s["arg"]).write_text(s["text"])
            dirs[doc] = d
        return dirs[doc]

    return bindir, workdir


def _env(bindir: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UHOP_")}
    env.update({
        "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(ROOT), "UHOP_HOME": str(home),
        "UHOP_TUNE_BUDGET_S": "1", "UHOP_BENCH_MIN_S": "0.01", "UHOP_BENCH_REPEAT": "3", "COLUMNS": "80",
    })  # fmt: skip
    return env


@pytest.mark.parametrize("snip", runnable(), ids=lambda s: f"{s['doc'].name}:{s['line']}")
def test_snippet_runs_as_written(snip, sandbox, tmp_path):
    mark = snip["mark"]
    if mark == "file":
        compile(snip["text"], snip["arg"], "exec") if snip["lang"] == "python" else None
        return  # used by the document's other blocks
    if mark == "skip":
        pytest.skip(snip["arg"] or "marked skip in the document")
    if mark == "gpu" and not _has_cuda():
        pytest.skip("needs a CUDA GPU (marked gpu in the document)")
    if mark == "slow" and os.environ.get("UHOP_DOC_SNIPPETS") != "all":
        pytest.skip("minutes of benchmarking: UHOP_DOC_SNIPPETS=all runs it")
    assert mark in (None, "gpu", "slow"), f"unknown snippet mark {mark!r}"
    bindir, workdir = sandbox
    cwd = workdir(snip["doc"])
    home = tmp_path / "home"
    if snip["lang"] == "python":
        argv = [sys.executable, "-c", snip["text"]]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", snip["text"]]
    res = subprocess.run(argv, cwd=cwd, env=_env(bindir, home), capture_output=True, text=True, timeout=600)
    where = f"{snip['doc'].name}:{snip['line']}"
    assert res.returncode == 0, f"{where} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, f"{where}\n{res.stderr[-3000:]}"


def test_every_document_block_is_seen():
    """The parser finds the README's blocks (a broken fence would silently skip every snippet)."""
    readme = snippets(ROOT / "README.md")
    assert any(s["lang"] == "python" for s in readme) and any(s["lang"] == "bash" for s in readme)
    for s in runnable():
        assert s["mark"] in (None, "file", "gpu", "skip", "slow"), f"{s['doc'].name}:{s['line']}: {s['mark']}"
