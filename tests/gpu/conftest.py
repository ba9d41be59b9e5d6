"""Every test in this directory needs a CUDA GPU running real kernels: marked ``gpu`` and skipped,
with the reason, on a machine without one or under ``TRITON_INTERPRET=1``. (Files written before
this conftest still carry the same marks themselves.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _why_not() -> str | None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "GPU tests, not the interpreter"
    try:
        import torch
    except ImportError:
        return "needs torch with CUDA"
    return None if torch.cuda.is_available() else "needs a CUDA GPU (torch.cuda.is_available() is False)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [i for i in items if Path(i.path).parent == HERE]
    if not mine:
        return
    why = _why_not()
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if why:
            item.add_marker(pytest.mark.skip(reason=why))
