"""Built-in (trusted) kernels run in-process, but their first call is probed in a forked child:
a segfault or hang becomes a classified result and the host process lives on."""

from __future__ import annotations

import numpy as np

from uhop.backends import get
from uhop.problem import Problem
from uhop.sandbox.contain import probe


def _segfault(x):
    return np.lib.stride_tricks.as_strided(x, (4,), (1 << 44,)).sum()


def _hang(x):
    while True:
        pass


def test_builtin_template_probe_matches_in_process_call():
    prob = Problem.make("softmax", {"R": 13, "N": 31}, "float32")
    b = get("numpy")
    kernel = b.compile(b.candidates(prob)[0], prob)
    x = np.random.default_rng().standard_normal((13, 31)).astype(np.float32)
    p = probe(kernel, [x])
    assert p.ok and type(p.output) is np.ndarray
    np.testing.assert_array_equal(p.output, kernel(x))


def test_segfault_is_contained():
    p = probe(_segfault, [np.ones(8, np.float32)])
    assert p.status == "crash" and "SIGSEGV" in p.reason


def test_hang_is_contained():
    p = probe(_hang, [np.ones(8, np.float32)], timeout_s=0.5)
    assert p.status == "timeout"


def test_exception_and_memory_are_values():
    def boom(x):
        raise ValueError("bad config")

    def huge(x):
        return np.ones(1 << 50, np.uint8)

    assert probe(boom, [np.ones(2)]).status == "crash"
    assert probe(huge, [np.ones(2)]).status == "memory"
