"""UHOP: the Universal Hardware Optimization Platform.

Public API::

    import uhop

    @uhop.optimize("matmul")
    def mm(a, b):
        return a @ b

    uhop.ops.softmax(x)                     # direct use of an op
    uhop.tune("matmul", dims=..., dtype=...)  # tune a problem ahead of time
    uhop.wait()                             # block until background tuning is done
"""

__version__ = "0.1.0"

from uhop.threads import apply as _apply_thread_policy  # noqa: E402

_apply_thread_policy()  # before any library UHOP uses starts a thread pool

from uhop import ops  # noqa: E402
from uhop.dispatch import optimize, wait  # noqa: E402
from uhop.tune.tuner import tune  # noqa: E402

__all__ = ["__version__", "ops", "optimize", "tune", "wait"]
