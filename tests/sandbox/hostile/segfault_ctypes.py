# expect: forbidden
# expect-unchecked: crash
"""Segfaults through ctypes."""
import ctypes

OP = "softmax"


def run(x):
    return ctypes.c_char.from_address(8).value
