"""Shared helpers of the sandbox tests: the hostile and honest kernel files and their expectations."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
HOSTILE = sorted((HERE / "hostile").glob("*.py"))
HONEST = sorted((HERE / "honest").glob("*.py"))
SECRET = "hunter2-uhop-test-secret"


def expectations(path: Path) -> dict[str, str]:
    """``# expect: CAT`` (static check on), ``# expect-unchecked: CAT`` (static check off: what
    the OS layer and the validator catch), ``# timed: yes`` (fails only while timing)."""
    text = path.read_text()
    return {k: m.group(1) for k in ("expect", "expect-unchecked", "timed") if (m := re.search(rf"^# {k}: (\S+)", text, re.M))}


def written(path: Path) -> bool:
    """Whether ``path`` exists; a path this test process may not look into (``/root`` for a
    normal user) counts as not written: a candidate, which runs with fewer rights, cannot write it."""
    try:
        return path.exists()
    except PermissionError:
        return False
