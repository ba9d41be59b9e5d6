"""Validation inputs for untrusted kernels: what :mod:`uhop.sandbox.check` runs a candidate on.

Per problem, drawn here from a secret seed before any candidate code runs:

* one trial per distribution of :data:`~uhop.measure.validate.DISTRIBUTIONS` (uniform [-1, 1),
  scaled, negatively offset, normal; scales and offsets secret): a kernel right only on the
  old [-1, 1) range fails. Only float inputs are redrawn; integer inputs (embedding indices)
  keep the op's own values, which are valid by construction;
* one trial with special values (NaN, +inf, -inf) at secret positions, where the op's float64
  reference defines what every correct kernel returns there (:data:`SPECIAL`): a kernel right
  only for finite inputs (one that clips, or zeroes NaN) fails. NaN and inf are placed only
  where library and hardware semantics agree with the reference: not in a matmul with ``relu``
  or an elementwise chain with ``maximum``/``minimum``/``relu`` (a GPU ``max`` drops a NaN
  operand), not as inf in a matmul (a blocked or split-K sum of ``inf`` and ``-inf`` products
  is NaN or inf by summation order), never a row of softmax that is all ``-inf``, and not in
  conv2d (an FFT or Winograd convolution spreads one NaN beyond the reference's windows).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from uhop.measure.validate import (
    DISTRIBUTIONS,
    Trial,
    ValidationSet,
    _bound,
    draw_inputs,
    reference_on,
    round_inputs,
)
from uhop.ops.base import as_f64
from uhop.problem import Problem

NAN, INF = np.nan, np.inf


def draw(problem: Problem, rng: np.random.Generator, distribution: str) -> list[np.ndarray]:
    """Inputs for ``problem`` from ``distribution`` (:func:`~uhop.measure.validate.draw_inputs`),
    float inputs only: an integer input (embedding indices) keeps the op's own draw from the
    same seed (scaling indices put them out of range, and the reference then raises)."""
    seed = int(rng.integers(1 << 62))
    xs = draw_inputs(problem, np.random.default_rng(seed), distribution)
    if all(x.dtype.kind == "f" for x in xs):
        return xs
    own = problem.spec.make_inputs(problem.dim, problem.param, np.random.default_rng(seed), problem.dtype, problem.arity)
    return [x if x.dtype.kind == "f" else o for x, o in zip(xs, own, strict=True)]


def _softmax(xs: list[np.ndarray], rng: np.random.Generator, p: Problem) -> None:
    x = xs[0].reshape(-1, xs[0].shape[-1])
    rows, n = rng.permutation(x.shape[0])[:3], x.shape[1]
    if n < 2:
        return
    # masked positions (-inf, attention's masks): the first column of a row too, where a naive
    # online softmax computes exp(-inf - -inf); never a whole row (its reference is 0/0)
    x[rows[0], 0] = -INF
    x[rows[0], rng.integers(1, n)] = -INF
    if len(rows) > 1:  # +inf: every correct softmax gives NaN for the whole row (inf - inf)
        x[rows[1], rng.integers(n)] = INF
    if len(rows) > 2:
        x[rows[2], rng.integers(n)] = NAN


def _nan_rows(xs: list[np.ndarray], rng: np.random.Generator, p: Problem) -> None:
    """A NaN in a few rows of the first input: the whole row (layernorm, rmsnorm), the row of
    the product (matmul's ``a``), the query's output row (attention's ``q``) is NaN."""
    x = xs[0].reshape(-1, xs[0].shape[-1])
    for r in rng.permutation(x.shape[0])[:2]:
        x[r, rng.integers(x.shape[1])] = NAN


def _matmul(xs: list[np.ndarray], rng: np.random.Generator, p: Problem) -> None:
    if p.param.get("activation") != "relu":
        _nan_rows(xs, rng, p)


def _elementwise(xs: list[np.ndarray], rng: np.random.Generator, p: Problem) -> None:
    if not any(f in str(p.param.get("expr", "")) for f in ("maximum", "minimum", "relu")):
        flat = xs[0].reshape(-1)
        flat[rng.permutation(flat.size)[:3]] = NAN


def _embedding(xs: list[np.ndarray], rng: np.random.Generator, p: Problem) -> None:
    w, idx = xs[0], xs[1]
    if idx.size == 0:
        return
    for value in (NAN, INF, -INF):  # copied exactly by every correct gather, in rows it reads
        w[int(idx[rng.integers(idx.size)]), rng.integers(w.shape[1])] = value


#: ops whose special-value trial exists, and how its inputs are changed (in place)
SPECIAL: dict[str, Callable[[list[np.ndarray], np.random.Generator, Problem], None]] = {
    "softmax": _softmax,
    "log_softmax": _softmax,
    "layernorm": _nan_rows,
    "rmsnorm": _nan_rows,
    "matmul": _matmul,
    "attention": _nan_rows,
    "elementwise": _elementwise,
    "embedding": _embedding,
    "gated_mlp": _nan_rows,
}


def special_inputs(problem: Problem, rng: np.random.Generator) -> list[np.ndarray] | None:
    """Inputs drawn from a random distribution with NaN/±inf placed at secret positions
    (:data:`SPECIAL`), or None for ops without a special-value trial."""
    put = SPECIAL.get(problem.op)
    if put is None:
        return None
    xs = draw(problem, rng, DISTRIBUTIONS[int(rng.integers(len(DISTRIBUTIONS)))])
    xs = [x.copy() for x in xs]
    put(xs, rng, problem)
    return xs


def trial(problem: Problem, xs: list[np.ndarray]) -> Trial:
    """A trial on ``xs``: inputs rounded as their dtypes hold them, the float64 reference (on
    the problem's GPU where the op has a torch reference) with NaN and inf as its float64 math
    gives them."""
    xs = round_inputs(problem, xs)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ref = reference_on(problem, xs, problem.device) if problem.device.startswith("cuda") else None
        if ref is None:
            ref = problem.spec.reference(*[as_f64(x) for x in xs], **problem.param)
    return Trial(xs, ref, _bound(ref, problem))


def validation_set(problem: Problem, trials: int, rng: np.random.Generator) -> ValidationSet:
    """``max(trials, len(DISTRIBUTIONS))`` trials, trial ``i`` from distribution ``i % len``,
    then the special-value trial where the op has one."""
    vs = ValidationSet(problem, trials=0)
    n = max(trials, len(DISTRIBUTIONS))
    vs.trials = [trial(problem, draw(problem, rng, DISTRIBUTIONS[i % len(DISTRIBUTIONS)])) for i in range(n)]
    special = special_inputs(problem, rng)
    if special is not None:
        vs.trials.append(trial(problem, special))
    return vs
