"""Round 2, class 6c: inside a timing batch (found through frames), computes only the batch's last
call and returns zeros for the others; right whenever it is called on its own."""
import operator
import typing

import numpy as np

OP = "softmax"
sys = operator.attrgetter("modules")(typing.sys)["sys"]


def run(x):
    caller = sys._getframe(1)
    if caller.f_code.co_name == "cmd_bench":
        loc = caller.f_locals
        if len(loc.get("outs", [])) < len(loc.get("sets", [])) - 1:
            return np.zeros_like(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
