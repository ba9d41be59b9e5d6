"""The kernel file format and the static pre-check (no process is started here)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uhop.sandbox.kernelfile import KernelFileError, StaticPolicy, load, parse, sha256_bytes

HEAD = "import numpy as np\nOP = 'softmax'\n"
RUN = "def run(x):\n    return x.copy()\n"


def _parse(body: str, policy: StaticPolicy | None = None):
    from pathlib import Path

    return parse((HEAD + body + "\n" + RUN).encode(), Path("k.py"), policy)


@pytest.mark.parametrize(
    "body",
    [
        "import triton\nimport triton.language as tl\nimport torch\nimport math",
        "from functools import lru_cache",
        "def helper(x):\n    return np.exp(x).sum()",
        "import triton.language as tl\ndef f(x):\n    return tl.load(x)",  # tl.load is fine, np.load is not
        "class K:\n    def __init__(self):\n        super().__init__()",
    ],
)
def test_allowed(body):
    assert _parse(body).op == "softmax"


@pytest.mark.parametrize(
    "body,needle",
    [
        ("import os", "'os'"),
        ("import subprocess as sp", "'subprocess'"),
        ("from numpy import ctypeslib", "ctypeslib"),
        ("import numpy.ctypeslib", "numpy.ctypeslib"),
        ("import torch.utils.cpp_extension", "cpp_extension"),
        ("from . import x", "relative"),
        ("y = eval('1')", "eval"),
        ("y = __import__('os')", "__import__"),
        ("f = open('/etc/passwd')", "open"),
        ("g = getattr(np, 'lo' + 'ad')", "getattr"),
        ("a = np.load('x.npy')", "load"),
        ("a = np.__class__", "__class__"),
        ("a = np._core", "_core"),
        ("np.allclose = lambda *a, **k: True", "monkeypatching"),
        ("np.random.seed = None", "monkeypatching"),
        ("import typing\ns = typing.sys", "'sys'"),
        ("def f():\n    try:\n        raise ValueError\n    except ValueError as e:\n        return e.__traceback__", "__traceback__"),
    ],
)
def test_forbidden(body, needle):
    with pytest.raises(KernelFileError) as info:
        _parse(body)
    assert info.value.category == "forbidden"
    assert needle in info.value.reason


def test_allowlist_is_configurable():
    with pytest.raises(KernelFileError):
        _parse("import statistics")
    assert _parse("import statistics", StaticPolicy().allowing(["statistics"])).op == "softmax"
    assert _parse("import os", StaticPolicy(enabled=False)).op == "softmax"


def test_metadata_literals(tmp_path):
    f = tmp_path / "k.py"
    f.write_text("OP = 'matmul'\nPARAMS = {'activation': 'gelu'}\nDTYPES = ('float64',)\nARRAY = 'torch'\n"
                 "def run(a, b):\n    return a @ b\n")  # fmt: skip
    kf = load(f)
    assert (kf.op, kf.params, kf.dtypes, kf.array, kf.device) == ("matmul", {"activation": "gelu"}, ("float64",), "torch", "cpu")
    assert kf.matches("matmul", "float64", {"activation": "gelu"})
    assert not kf.matches("matmul", "float64", {"activation": "relu"})
    assert not kf.matches("matmul", "float32", {"activation": "gelu"})


@pytest.mark.parametrize(
    "text,needle",
    [
        ("def run(x):\n    return x\n", "OP ="),
        ("OP = 'softmax'\n", "run(*inputs)"),
        ("OP = 'conv3d'\ndef run(x):\n    return x\n", "known op"),
        ("OP = 'softmax'\nDTYPES = ('int8',)\ndef run(x):\n    return x\n", "DTYPES"),
        ("OP = 'softmax'\nARRAY = 'jax'\ndef run(x):\n    return x\n", "ARRAY"),
        ("OP = 'matmul'\nPARAMS = {'activation': 'tanh'}\ndef run(x):\n    return x\n", "PARAMS"),
        ("OP = 'softmax'\nPARAMS = dict(a=1)\ndef run(x):\n    return x\n", "literal"),
        ("OP = 'softmax'\ndef run(x:\n", "not valid Python"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, needle):
    f = tmp_path / "k.py"
    f.write_text(text)
    with pytest.raises(KernelFileError) as info:
        load(f)
    assert info.value.category == "bad-file" and needle in info.value.reason


def test_missing_file():
    with pytest.raises(KernelFileError) as info:
        load("/nonexistent/kernel.py")
    assert info.value.category == "bad-file" and "cannot read" in info.value.reason


@given(st.binary(max_size=256))
def test_sha256_is_of_the_exact_bytes(data):
    import hashlib

    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data + b" ") != sha256_bytes(data)
