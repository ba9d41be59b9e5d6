"""Round 2, class 6a: finds the worker object through frames and patches its ping (and emit)
handlers to take 50 ms, so a timing that subtracts a round trip measured after load would
subtract far more than the round trip; the kernel itself takes 3 ms a call."""
import operator
import time
import typing

import numpy as np

OP = "softmax"
sys = operator.attrgetter("modules")(typing.sys)["sys"]
f = sys._getframe()
while f is not None and f.f_code.co_name != "cmd_load":
    f = f.f_back
W = type(f.f_locals["self"])
_ping = W.cmd_ping


def slow(self, header, blobs, _orig=_ping):
    time.sleep(0.05)
    return _orig(self, header, blobs)


W.cmd_ping = slow
W.cmd_emit = slow


def run(x):
    time.sleep(0.003)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
