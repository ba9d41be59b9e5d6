"""UHOP: the Universal Hardware Optimization Platform.

Public API::

    import uhop

    @uhop.optimize("matmul")
    def mm(a, b):
        return a @ b

    uhop.ops.softmax(x)                     # direct use of an op
    uhop.tune("matmul", dims=..., dtype=...)  # tune a problem ahead of time
    uhop.wait()                             # block until background tuning is done

    @uhop.jit                               # a whole numpy (or torch) function as a graph
    def forward(x, w): ...
    torch.compile(model, backend="uhop")    # a whole model
"""

__version__ = "0.1.0"

from uhop.threads import apply as _apply_thread_policy  # noqa: E402

_apply_thread_policy()  # before any library UHOP uses starts a thread pool

from uhop import ops  # noqa: E402
from uhop.buffer import Buffer  # noqa: E402
from uhop.dispatch import optimize, wait  # noqa: E402
from uhop.tune.tuner import tune  # noqa: E402


def jit(fn=None, **kwargs):  # noqa: ANN001, ANN201 - the signature is uhop.compile.jit's
    """``uhop.compile.jit``: compile a whole numpy or torch function through backend='uhop'
    (imported on first use: torch loads only when asked for)."""
    from uhop.compile.jit import jit as _jit

    return _jit(fn, **kwargs)


__all__ = ["Buffer", "__version__", "jit", "ops", "optimize", "tune", "wait"]
