"""tests/mlir need IREE (``pip install 'uhop[mlir]'``); without it they are skipped."""

from __future__ import annotations

import pytest

pytest.importorskip("iree.compiler", reason="iree-base-compiler not installed: pip install 'uhop[mlir]'")
pytest.importorskip("iree.runtime", reason="iree-base-runtime not installed: pip install 'uhop[mlir]'")
