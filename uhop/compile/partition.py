"""The FX partitioner: find the regions UHOP serves in a Dynamo graph and replace each with one
``torch.ops.uhop.<kind>`` call; everything else stays for Inductor (or eager).

Regions: linear / matmul (+ activation, incl. tanh-GELU), a gated MLP's projections
(``act(linear(x, wg)) * linear(x, wu)``), layer_norm, rms_norm, softmax,
attention (SDPA, or the explicit QKᵀ → scale → mask → softmax → V pattern), embedding,
conv2d (+ eval batchnorm folded in, inference only) (+ activation). An op whose intermediate has
other users is not fused into the region after it (its value is needed anyway).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from uhop.compile.report import RegionFound

U = torch.ops.uhop
LINEAR = {torch._C._nn.linear, F.linear}
ADDMM = {torch.addmm, "addmm"}
MATMUL = {operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm", "__matmul__"}
LAYER_NORM = {F.layer_norm, torch.layer_norm}
RMS_NORM = {F.rms_norm, getattr(torch, "rms_norm", F.rms_norm)}
SOFTMAX = {F.softmax, torch.softmax, "softmax"}
LOG_SOFTMAX = {F.log_softmax, torch.log_softmax, "log_softmax"}
SDPA = {F.scaled_dot_product_attention}
RESHAPE = {torch.reshape, "reshape", "view"}
DROPOUT = {F.dropout, torch.dropout, "dropout"}
EXPAND = {"expand"}
EMBEDDING = {F.embedding}
CONV2D = {torch.conv2d, F.conv2d}
BATCH_NORM = {F.batch_norm}
TRANSPOSE = {torch.transpose, "transpose", "ndarray.transpose"}
EXP = {torch.exp, "exp"}
SUB = {operator.sub, torch.sub, "sub"}
DIV = {operator.truediv, torch.div, torch.true_divide, "div", "true_divide"}
ROW_MAX = {torch.amax, "amax", "ndarray.max", "max"}  # "max": np.max (a function, not Tensor.max)
ROW_SUM = {torch.sum, "sum", "ndarray.sum"}
GELU = {F.gelu, torch._C._nn.gelu, "gelu"}
RELU = {F.relu, torch.relu, "relu"}
SILU = {F.silu}
POW = {operator.pow, torch.pow, "pow", "power", "__pow__"}
#: elementwise ops Inductor fuses with an activation before them (SwiGLU's ``silu(gate) * up``)
POINTWISE = SUB | DIV | {operator.mul, operator.add, torch.mul, torch.add, "mul", "add", "multiply"}
MUL = {operator.mul, torch.mul, "mul"}
#: the activations of a gated MLP's gate (SwiGLU's silu, GeGLU's gelu)
GATED = ("silu", "gelu", "gelu_tanh")
#: integer exponents written out as multiplications (:meth:`Partitioner._small_powers`)
SMALL_POWERS = (2, 3, 4)


def _target(node: fx.Node) -> Any:
    """The call's target; numpy code traced by Dynamo (``uhop.jit``) calls wrappers of
    ``torch._numpy`` on tensors: ``a @ b`` is a wrapper of ``operator.matmul``, ``np.matmul`` one of
    a function named ``matmul`` (matched by name, as a method is), ``s.max(-1)`` one of the
    ndarray method ``max`` (kept apart from torch's ``Tensor.max``, which returns indices too)."""
    t = node.target
    kind = type(t).__name__
    if kind == "numpy_operator_wrapper":
        return t.op
    if kind == "numpy_to_tensor_wrapper":
        return t.f.__name__
    if kind == "numpy_method_wrapper":
        return "ndarray." + t.method
    return t


def _is(node: fx.Node, targets: set) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    try:
        return _target(node) in targets
    except TypeError:  # an unhashable target
        return False


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` (or keyword ``name``) of a call node; for call_method, ``i`` counts self."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _val(n: Any) -> Any:
    return n.meta.get("example_value") if isinstance(n, fx.Node) else None


def _nbytes(n: Any) -> int:
    """Bytes of a node's value at the example shape; 0 if unknown. Never calls int() on a
    symbolic size: that would specialize it (a guard per length: a recompile per token)."""
    v = _val(n)
    if not isinstance(v, torch.Tensor):
        return 0
    dims = [s.node.hint if isinstance(s, torch.SymInt) else s for s in v.shape]
    if any(not isinstance(d, int) for d in dims):
        return 0
    return math.prod(dims) * v.element_size()


def _activation_of(node: fx.Node) -> str | None:
    """The activation a node applies to its only tensor input, in UHOP's spelling, or None."""
    if _is(node, GELU):
        approx = _arg(node, 1, "approximate", "none")
        return "gelu_tanh" if approx == "tanh" else "gelu" if approx == "none" else None
    if _is(node, RELU) and not node.kwargs.get("inplace", False) and len(node.args) == 1:
        return "relu"
    if _is(node, SILU) and not node.kwargs.get("inplace", False) and len(node.args) == 1:
        return "silu"
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


#: ``_replace``'s default: ask ``leave`` (a caller that already asked passes its answer, None included)
_ASK = object()


def _is_cast(node: fx.Node) -> bool:
    """``t.to(dtype)`` / ``t.to(dtype=...)`` / ``t.type(dtype)``: a dtype change and nothing else."""
    if not _is(node, {"to", "type"}) or len(node.args) > 2:
        return False
    if len(node.args) == 2:
        return isinstance(node.args[1], torch.dtype) and not node.kwargs
    return set(node.kwargs) == {"dtype"} and isinstance(node.kwargs["dtype"], torch.dtype)


def _is_no_dropout(node: fx.Node) -> bool:
    """Dropout that drops nothing: p = 0, or not training."""
    if not _is(node, DROPOUT) or node.kwargs.get("inplace", False) or (len(node.args) > 3 and node.args[3]):
        return False
    return _arg(node, 1, "p", 0.5) in (0, 0.0) or _arg(node, 2, "training", True) is False


def _same_size(a: Any, b: Any) -> bool:
    """Sizes equal without a guard: ints by value, symbolic sizes by their expression."""
    return str(a) == str(b)


def _repeated_kv(node: Any, user: fx.Node) -> tuple[fx.Node, int, list[fx.Node]] | None:
    """``(x, n, nodes)`` where ``node`` is x (B, H, L, D) with each head repeated n times in place,
    as transformers' ``repeat_kv`` writes it (``x[:, :, None].expand(B, H, n, L, D).reshape(B, H*n,
    L, D)``, or ``unsqueeze(2)``), used by ``user`` alone; else None."""
    if not (isinstance(node, fx.Node) and _is(node, RESHAPE) and set(node.users) == {user}):
        return None
    e = node.args[0]
    if not (isinstance(e, fx.Node) and _is(e, EXPAND) and set(e.users) == {node}):
        return None
    u = e.args[0]
    if not (isinstance(u, fx.Node) and set(u.users) == {e}):
        return None
    full = slice(None, None, None)
    if _is(u, {operator.getitem}):
        if not (isinstance(u.args[1], tuple) and len(u.args[1]) >= 3 and u.args[1][2] is None
                and all(i == full for j, i in enumerate(u.args[1]) if j != 2)):  # fmt: skip
            return None
    elif not (_is(u, {torch.unsqueeze, "unsqueeze"}) and _arg(u, 1, "dim") == 2):
        return None
    x = u.args[0]
    vx, vu, ve, vr = _val(x), _val(u), _val(e), _val(node)
    if not all(isinstance(t, torch.Tensor) for t in (vx, vu, ve, vr)) or vx.dim() != 4:
        return None
    (b, h, length, d), n = vx.shape, ve.shape[2]
    if not (isinstance(h, int) and isinstance(n, int) and n > 1 and tuple(vu.shape)[2] == 1):
        return None
    want_e, want_r = (b, h, n, length, d), (b, h * n, length, d)
    if not (ve.dim() == 5 and all(map(_same_size, ve.shape, want_e)) and vr.dim() == 4
            and all(map(_same_size, vr.shape, want_r))):  # fmt: skip
        return None
    return x, n, [u, e, node]


def _folded_kv(q: Any, k: Any, v: Any, k_user: fx.Node, v_user: fx.Node) -> tuple[fx.Node, fx.Node, list[fx.Node]] | None:
    """k and v as their key/value heads before :func:`_repeated_kv` (same n for both), where the
    repeated ones have exactly q's batch and head dims (not broadcast against them); else None."""
    rk, rv = _repeated_kv(k, k_user), _repeated_kv(v, v_user)
    vq, vk = _val(q), _val(k)
    if rk is None or rv is None or rk[1] != rv[1] or not isinstance(vq, torch.Tensor) or vq.dim() != 4:
        return None
    if not all(map(_same_size, tuple(vq.shape)[:2], tuple(vk.shape)[:2])):
        return None
    return rk[0], rv[0], [*rk[2], *rv[2]]


class Partitioner:
    """Rewrites one graph in place. ``inference``: fusions valid only without autograd allowed."""

    def __init__(self, gm: fx.GraphModule, inference: bool,
                 leave: Callable[[str, list[Any]], str | None] | None = None, fusing_rest: bool = True,
                 weights: set[str] | frozenset[str] = frozenset()) -> None:
        self.gm, self.g, self.inference = gm, gm.graph, inference
        #: placeholders bound to parameters: their CPU float32 linears run on packed weights
        self.weights = weights
        self.leave = leave
        #: the rest of the graph goes to a fusing compiler (Inductor), not run eagerly
        self.fusing_rest = fusing_rest
        self.regions: list[RegionFound] = []
        #: graph rewrites other than regions, for the fusion report ("x**3 -> x*x*x")
        self.rewrites: list[str] = []

    def run(self) -> list[RegionFound]:
        self._small_powers()
        # softmax written out (exp(x - max) / sum) first, as one softmax node; then attention: its
        # QKᵀ and PV matmuls and its softmax must not become regions alone
        # a gated MLP's two projections and their product before the linear rule takes each alone
        for rules in ((self._softmax_written_out,), (self._attention_explicit,), (self._gated_mlp,),
                      (self._sdpa, self._linear, self._addmm, self._matmul, self._norm, self._softmax, self._log_softmax, self._embedding,
                       self._conv)):
            for node in list(self.g.nodes):
                if node.op not in ("call_function", "call_method") or not node.users:
                    continue
                for rule in rules:
                    if rule(node):
                        break
            self.g.eliminate_dead_code(is_impure_node=_impure)
        self.g.eliminate_dead_code(is_impure_node=_impure)
        self.g.lint()
        self.gm.recompile()
        return self.regions

    def _small_powers(self) -> None:
        """``x ** n`` (n = 2, 3, 4, an int or an integral float) on a float32/float64 tensor, written
        out as multiplications. Numpy code traced by Dynamo reaches Inductor with the exponent lifted to a
        tensor, which Inductor computes with a vector ``pow``: the tanh-GELU of a numpy GPT-2
        (``x**3``) took 4.3 ms of 256 x 3072 on the 2-core CPU, its layer norms' ``(x - mu)**2``
        0.7 ms each. Products round the same as numpy's float ``pow`` to within an ulp or two."""
        for node in list(self.g.nodes):
            if not _is(node, POW) or len(node.args) != 2 or node.kwargs:
                continue
            x, n = node.args
            vx = _val(x)
            # float32/64 only: a half-precision product rounds after each multiply when the graph
            # runs eagerly (rest="eager"), pow once
            if not (isinstance(vx, torch.Tensor) and vx.dtype in (torch.float32, torch.float64)) or isinstance(n, bool):
                continue
            if not (isinstance(n, (int, float)) and n in SMALL_POWERS):
                continue
            out = _val(node)
            with self.g.inserting_before(node):
                sq = y = self.g.call_function(torch.mul, (x, x))
                if int(n) > 2:
                    y = self.g.call_function(torch.mul, (sq, x if int(n) == 3 else sq))
            for m in {sq, y}:
                m.meta["example_value"] = out
            node.replace_all_uses_with(y)
            self.g.erase_node(node)
            self.rewrites.append(f"{node.name}: x**{int(n)} as {'*'.join('x' * int(n))}")

    # ---- helpers -----------------------------------------------------------------------------
    def _left_why(self, kind: str, args: tuple) -> str | None:
        """Why a region of ``kind`` on ``args`` is better left as written for Inductor, or None
        (``leave``: :func:`uhop.compile.runtime.leave_as_written`)."""
        if self.leave is None:
            return None
        return self.leave(kind, [_val(a) if isinstance(a, fx.Node) else a for a in args])

    def _replace(self, last: fx.Node, fused: list[fx.Node], kind: str, args: tuple, saved: int = 0,
                 as_written: bool = True, why: str | None | object = _ASK) -> None:
        """Replace ``fused`` (ending at ``last``) by one region op, unless the nodes as written
        (``as_written``: not a rewrite such as the explicit attention pattern) are better left to
        Inductor (``why``: :meth:`_left_why`, asked here unless the caller already did)."""
        if as_written:
            why = self._left_why(kind, args) if why is _ASK else why
            if why:
                self.regions.append(RegionFound(kind, [_name(n) for n in fused], 0, f"left as written: {why}"))
                return
        with self.g.inserting_before(last):
            new = self.g.call_function(getattr(U, kind).default, args)
        new.meta.update(last.meta)
        last.replace_all_uses_with(new)
        self.regions.append(RegionFound(kind, [_name(n) for n in fused], saved))

    def _with_activation(self, node: fx.Node) -> tuple[fx.Node, str, list[fx.Node]]:
        """The activation applied to ``node`` alone, fused into its region; not one whose only
        user is an elementwise op when Inductor compiles the rest: there the activation fuses into
        that op's kernel (SwiGLU's ``silu(gate(h)) * up(h)``: one pass reading both products),
        while in a region served by a GEMM without that epilogue it is a pass of its own
        (2048 x 11008 bf16 on a GPU: about 30 us per block)."""
        user = _only_user(node)
        act = _activation_of(user) if user is not None else None
        if act is None:
            return node, "none", []
        after = _only_user(user)
        if self.fusing_rest and after is not None and _is(after, POINTWISE):
            return node, "none", []
        return user, act, [user]

    # ---- rules ---------------------------------------------------------------------------------
    def _linear(self, node: fx.Node) -> bool:
        if not _is(node, LINEAR):
            return False
        x, w, b = node.args[0], node.args[1], _arg(node, 2, "bias")
        last, act, extra = self._with_activation(node)
        args = (x, w, b, act)
        why = self._left_why("linear", args)
        if why and self._packable(x, w):
            self._packed_linear(node, x, w, b, extra, why)
        else:
            self._replace(last, [node, *extra], "linear", args, 2 * _nbytes(node) if extra else 0, why=why)
        return True

    def _addmm(self, node: fx.Node) -> bool:
        """``addmm(b, x, w)`` with ``w`` a parameter held (in, out) (Hugging Face GPT-2's
        ``Conv1D``): on a CPU, in inference, on ``w``'s transpose packed for MKL (each op alone on
        the 2-core CI machine, d768 layers: 0.64-0.71x addmm's time at 16 rows, 0.80-0.94x at 256).
        Anything else (beta/alpha, a GPU, training) stays as written."""
        if not _is(node, ADDMM) or len(node.args) != 3 or node.kwargs or node.op != "call_function":
            return False
        b, x, w = node.args
        vb, vx = _val(b), _val(x)
        if not (isinstance(vb, torch.Tensor) and vb.dim() == 1 and isinstance(vx, torch.Tensor) and vx.dim() == 2
                and self._packable(x, w)):  # fmt: skip
            return False
        from uhop.compile import packed

        self._on_packed(node, packed.ADDMM, (b, x, w), w, [node], "addmm on (in, out) weights", "addmm")
        return True

    def _packable(self, x: Any, w: Any) -> bool:
        """On a CPU, inference, float32, ``w`` a parameter: the linear can run on ``w`` packed for
        MKL (:mod:`uhop.compile.packed`)."""
        if not (self.inference and isinstance(w, fx.Node) and w.op == "placeholder" and w.name in self.weights):
            return False
        vx, vw = _val(x), _val(w)
        return (isinstance(vx, torch.Tensor) and isinstance(vw, torch.Tensor) and vw.dim() == 2
                and vx.device.type == "cpu" and vx.dtype == vw.dtype == torch.float32)  # fmt: skip

    def _packed_linear(self, node: fx.Node, x: Any, w: Any, b: Any, extra: list[fx.Node], why: str) -> None:
        """A linear left as written for aten's op (UHOP measured nothing faster: ``why``) runs on its
        parameter packed for MKL once (Inductor's freezing without frozen weights); an activation
        after it stays for Inductor to fuse. A region UHOP serves with its own kernel stays one."""
        from uhop.compile import packed

        self._on_packed(node, packed.OP, (x, w, b), w, [node, *extra], why, "linear")

    def _on_packed(self, node: fx.Node, op: Any, args: tuple, w: fx.Node, nodes: list[fx.Node], why: str,
                   what: str) -> None:  # fmt: skip
        """``node`` replaced by ``op(*args)``, a :mod:`uhop.compile.packed` op on the parameter
        ``w``, reported as a linear left as written (``why``) on the packed weight."""
        with self.g.inserting_before(node):
            new = self.g.call_function(op, args)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        self.regions.append(RegionFound("linear", [_name(n) for n in nodes], 0,
                                        f"left as written: {why}; the {what} on the MKL-packed weight"))  # fmt: skip
        self.rewrites.append(f"{_name(node)}: {what} on the MKL-packed weight {w.name}")

    def _gated_mlp(self, node: fx.Node) -> bool:
        """``act(linear(x, wg)) * linear(x, wu)`` (SwiGLU, GeGLU; no biases, one input ``x``, the
        intermediates used only here) -> one ``gated_mlp`` region: UHOP's one-kernel form writes
        only the product, where two GEMMs write both projections and read them back."""
        if not _is(node, MUL) or len(node.args) != 2 or node.kwargs:
            return False
        for gated, up in (node.args, node.args[::-1]):
            if not (isinstance(gated, fx.Node) and isinstance(up, fx.Node)):
                continue
            act = _activation_of(gated)
            gate = gated.args[0] if act in GATED and gated.args else None
            if not (isinstance(gate, fx.Node) and _is(gate, LINEAR) and _is(up, LINEAR)):
                continue
            if _only_user(gate) is not gated or _only_user(gated) is not node or _only_user(up) is not node:
                continue
            x, wg, wu = _arg(gate, 0, "input"), _arg(gate, 1, "weight"), _arg(up, 1, "weight")
            if _arg(up, 0, "input") is not x or _arg(gate, 2, "bias") is not None or _arg(up, 2, "bias") is not None:
                continue
            vx, vg, vu = _val(x), _val(wg), _val(wu)
            if not all(isinstance(v, torch.Tensor) for v in (vx, vg, vu)) or vg.dim() != 2:
                continue
            if tuple(vg.shape) != tuple(vu.shape) or not (vx.dtype == vg.dtype == vu.dtype):
                continue
            saved = 2 * (_nbytes(gate) + _nbytes(gated) + _nbytes(up))  # vs each op writing and reading its output
            self._replace(node, [gate, gated, up, node], "gated_mlp", (x, wg, wu, act), saved)
            return True
        return False

    def _matmul(self, node: fx.Node) -> bool:
        if not _is(node, MATMUL) or len(node.args) != 2:
            return False
        a, b = node.args
        va, vb = _val(a), _val(b)
        if va is None or vb is None or va.dim() < 2 or vb.dim() < 2 or va.dtype != vb.dtype:
            return False  # mixed dtypes: numpy code promotes (torch._numpy does it in the wrapper)
        last, act, extra = self._with_activation(node)
        self._replace(last, [node, *extra], "matmul", (a, b, act), 2 * _nbytes(node) if extra else 0)
        return True

    def _fused_by_inductor(self, node: fx.Node, kind: str) -> bool:
        """A norm whose input an elementwise op computes in this graph (the residual add of a
        pre-norm transformer block) stays as written when Inductor compiles the rest: Inductor
        fuses the add into the norm's kernel (one pass reading both addends, writing the sum and
        the norm), which a norm region would split into two passes (an extra read and write of
        the activations: about 8 us of a GPT-2 block at B8 T1024 bf16 on an H100)."""
        x = node.args[0] if node.args else None
        if not (self.fusing_rest and isinstance(x, fx.Node) and _is(x, POINTWISE)):
            return False
        note = "left as written: Inductor fuses the elementwise op before it (a residual add) into the norm"
        self.regions.append(RegionFound(kind, [_name(node)], 0, note))
        return True

    def _norm(self, node: fx.Node) -> bool:
        kind = "layer_norm" if _is(node, LAYER_NORM) else "rms_norm" if _is(node, RMS_NORM) else None
        if kind is None:
            return False
        if self._fused_by_inductor(node, kind):
            return True
        if kind == "layer_norm":
            shape = _arg(node, 1, "normalized_shape")
            if not isinstance(shape, (tuple, list)) or len(shape) != 1:
                return False
            args = (node.args[0], _arg(node, 2, "weight"), _arg(node, 3, "bias"), float(_arg(node, 4, "eps", 1e-5)))
            self._replace(node, [node], "layer_norm", args)
            return True
        shape = _arg(node, 1, "normalized_shape")
        eps = _arg(node, 3, "eps")
        if not isinstance(shape, (tuple, list)) or len(shape) != 1 or eps is None:
            return False  # eps=None means the dtype's epsilon: left to aten
        self._replace(node, [node], "rms_norm", (node.args[0], _arg(node, 2, "weight"), float(eps)))
        return True

    def _softmax_dim_ok(self, node: fx.Node, dtype_ok: bool = False) -> bool:
        dim = _arg(node, 1, "dim")
        v = _val(node.args[0])
        # a dtype (F.softmax's 4th argument, torch.softmax's and Tensor.softmax's 3rd): left to aten
        # (``dtype_ok``: the caller checks what the result's dtype becomes)
        if v is None or not dtype_ok and (any(isinstance(a, torch.dtype) for a in node.args[2:])
                                          or node.kwargs.get("dtype") is not None):  # fmt: skip
            return False
        return dim is not None and dim in (-1, v.dim() - 1)

    def _softmax(self, node: fx.Node) -> bool:
        if not _is(node, SOFTMAX) or not self._softmax_dim_ok(node):
            return False
        self._replace(node, [node], "softmax", (node.args[0],))
        return True

    def _log_softmax(self, node: fx.Node) -> bool:
        if not _is(node, LOG_SOFTMAX) or not self._softmax_dim_ok(node):
            return False
        self._replace(node, [node], "log_softmax", (node.args[0],))
        return True

    def _softmax_written_out(self, node: fx.Node) -> bool:
        """``e / e.sum(-1, keepdims)`` with ``e = exp(x - x.max(-1, keepdims))`` (numpy code,
        hand-written torch) -> ``torch.softmax(x, -1)``: not a region itself, it lets the softmax
        and attention rules see it (one pass over x instead of numpy's five temporaries)."""
        if not _is(node, DIV) or len(node.args) != 2:
            return False
        e, total = node.args
        if not (_is(e, EXP) and _is(total, ROW_SUM) and total.args[0] is e and set(e.users) == {node, total}
                and _last_dim_keepdim(total) and _only_user(total) is node):
            return False
        diff = e.args[0] if e.args else None
        if not (isinstance(diff, fx.Node) and _is(diff, SUB) and _only_user(diff) is e and len(diff.args) == 2):
            return False
        x, m = diff.args
        if not (isinstance(m, fx.Node) and _is(m, ROW_MAX) and m.args[0] is x and _only_user(m) is diff
                and _last_dim_keepdim(m)):
            return False
        if m.op == "call_method" and m.target == "max":
            return False  # Tensor.max(dim) returns (values, indices)
        vx = _val(x)
        if not isinstance(vx, torch.Tensor) or not vx.is_floating_point():
            return False
        with self.g.inserting_before(node):
            new = self.g.call_function(torch.softmax, (x, -1))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        return True

    def _sdpa(self, node: fx.Node) -> bool:
        if not _is(node, SDPA):
            return False
        q, k, v = node.args[:3]
        mask = _arg(node, 3, "attn_mask")
        if _arg(node, 4, "dropout_p", 0.0) not in (0, 0.0):
            return False
        scale, gqa = node.kwargs.get("scale"), bool(node.kwargs.get("enable_gqa", False))
        fused = [node]
        folded = None if gqa else _folded_kv(q, k, v, node, node)
        if folded is not None:
            # k and v repeated per query head (transformers' repeat_kv, with a padding mask or the
            # eager attention): the region reads the key/value heads as they are (kv_groups), not a
            # copy of them n times over
            k, v, repeats = folded
            fused, gqa = [*repeats, node], True
        args = (q, k, v, mask, bool(_arg(node, 5, "is_causal", False)), scale)
        self._replace(node, fused, "attention", (*args, True) if gqa else args)
        return True

    def _attention_explicit(self, node: fx.Node) -> bool:
        """softmax(QKᵀ·c [masked]) @ V, matched from the softmax outwards; between the softmax and
        the product, casts that end in the scores' dtype (transformers' eager attention:
        ``softmax(s, dtype=float32).to(q.dtype)``, the region's softmax accumulating in float32
        as that one does) and dropout that drops nothing (p=0, or not training)."""
        if not _is(node, SOFTMAX) or not self._softmax_dim_ok(node, dtype_ok=True):
            return False
        fused, probs = [node], node
        while (pv := _only_user(probs)) is not None and (_is_cast(pv) or _is_no_dropout(pv)):
            fused.append(pv)
            probs = pv
        if pv is None or not _is(pv, MATMUL) or pv.args[0] is not probs:
            return False
        vs, vp = _val(node.args[0]), _val(probs)
        if not (isinstance(vs, torch.Tensor) and isinstance(vp, torch.Tensor) and vs.dtype == vp.dtype):
            return False  # probabilities in another dtype than the scores: left as written
        fused, cur, mask, scale = [*fused, pv], node.args[0], None, 1.0
        if _is(cur, {"masked_fill", torch.masked_fill}) and _only_user(cur) is node:
            m, fill = cur.args[1], cur.args[2]
            if not (isinstance(fill, float) and fill == -math.inf):
                return False
            # masked_fill(m, -inf): keep where not m. SDPA's boolean mask is True = keep.
            if _is(m, {operator.invert, torch.logical_not, "logical_not", "bitwise_not"}):
                mask = m.args[0]
            else:
                with self.g.inserting_before(node):
                    mask = self.g.call_function(operator.invert, (m,))
                    mask.meta["example_value"] = _val(m)
            fused.append(cur)
            cur = cur.args[0]
        elif _is(cur, {operator.add, torch.add, "add"}) and _only_user(cur) is node and len(cur.args) == 2:
            va, vb = _val(cur.args[0]), _val(cur.args[1])
            if va is None or vb is None or vb.dtype == torch.bool:
                return False
            mask = cur.args[1]  # additive mask, broadcastable
            fused.append(cur)
            cur = cur.args[0]
        if _is(cur, {operator.mul, operator.truediv, torch.mul, torch.div, "mul", "div"}) and _only_user(cur) is not None:
            c = cur.args[1]
            if not isinstance(c, (int, float)):
                return False
            scale = float(c) if _target(cur) in (operator.mul, torch.mul, "mul") else 1.0 / float(c)
            fused.append(cur)
            cur = cur.args[0]
        if not (_is(cur, MATMUL) and _only_user(cur) is not None and len(cur.args) == 2):
            return False
        q, kt = cur.args
        if not (_is(kt, TRANSPOSE) and _swaps_last_two(kt)):
            return False
        k, v = kt.args[0], pv.args[1]
        folded = _folded_kv(q, k, v, kt, pv)
        gqa = folded is not None
        if folded is not None:  # k and v repeated per query head (repeat_kv): read as grouped-query heads
            k, v, repeats = folded
            fused += repeats
        vq, vk, vv = _val(q), _val(k), _val(v)
        if vq is None or vk is None or vv is None or not (vq.dim() == vk.dim() == vv.dim() >= 3):
            return False
        if not (vq.dtype == vk.dtype == vv.dtype):
            return False
        fused += [cur, kt]
        saved = 2 * sum(_nbytes(n) for n in fused if n is not kt and n is not pv)
        causal = _is_causal_mask(mask, vq, vk)
        if causal:
            self.rewrites.append(f"{_name(mask)}: an additive causal mask as is_causal")
            mask = None
        args = (q, k, v, mask, causal, scale)
        self._replace(pv, fused[::-1], "attention", (*args, True) if gqa else args, saved, as_written=False)
        return True

    def _embedding(self, node: fx.Node) -> bool:
        if not _is(node, EMBEDDING):
            return False
        idx, w = node.args[0], node.args[1]
        rest = [_arg(node, i, n) for i, n in ((2, "padding_idx"), (3, "max_norm"))]
        if rest[1] is not None or (rest[0] is not None and not self.inference):
            return False  # max_norm renormalizes the table in place; padding_idx changes the gradient
        self._replace(node, [node], "embedding", (w, idx))
        return True

    def _conv(self, node: fx.Node) -> bool:
        if not _is(node, CONV2D):
            return False
        x, w, b = node.args[0], node.args[1], _arg(node, 2, "bias")
        stride, pad = _uniform(_arg(node, 3, "stride", 1)), _uniform(_arg(node, 4, "padding", 0))
        dil, groups = _uniform(_arg(node, 5, "dilation", 1)), _arg(node, 6, "groups", 1)
        if stride is None or pad is None or dil != 1 or groups != 1:
            return False
        fused, last = [node], node
        bn = _only_user(node)
        if self.inference and bn is not None and _is(bn, BATCH_NORM) and bn.args[0] is node \
                and not _arg(bn, 5, "training", False):
            mean, var = _arg(bn, 1, "running_mean"), _arg(bn, 2, "running_var")
            gamma, beta, eps = _arg(bn, 3, "weight"), _arg(bn, 4, "bias"), float(_arg(bn, 7, "eps", 1e-5))
            last2, act, extra = self._with_activation(bn)
            fused += [bn, *extra]
            saved = 2 * _nbytes(node) * (1 + len(extra))
            self._replace(last2, fused, "conv_bn", (x, w, b, mean, var, gamma, beta, eps, stride, pad, act), saved)
            return True
        last, act, extra = self._with_activation(node)
        self._replace(last, [node, *extra], "conv2d", (x, w, b, stride, pad, act), 2 * _nbytes(node) if extra else 0)
        return True


def inplace(n: fx.Node) -> bool:
    """An in-place write (``x.add_(1)``, ``x[i] = v``, ``out=``): Dynamo's graphs keep them as
    written, and FX does not count a method call as a side effect."""
    if n.op not in ("call_method", "call_function"):
        return False
    if n.target in (operator.setitem, torch.Tensor.__setitem__):
        return True
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or n.kwargs.get("out") is not None


def _impure(n: fx.Node) -> bool:
    """Kept by dead-code elimination: FX's side effects and in-place writes (an unused
    ``x.add_(1)`` on an input was dropped, losing the caller's update)."""
    return n.is_impure() or inplace(n)


TRIU = {torch.triu, "triu"}
FULL = {torch.full, "full"}
#: an additive mask value that zeroes its softmax weight exactly (exp underflows to 0 in float32 and
#: float64 for any score below 1e8): such a mask is the same attention as no weight at all
MASKED = -1e9


def _is_causal_mask(mask: Any, vq: torch.Tensor, vk: torch.Tensor) -> bool:
    """Whether ``mask`` is ``triu(full((L, S), c), 1)`` with ``c`` <= -1e9 (or -inf), L and S the
    queries' and keys' lengths, of the scores' dtype: the causal mask written out (a numpy GPT-2's
    ``np.triu(np.full((T, T), -1e10), 1)``). SDPA's ``is_causal`` computes the same attention
    without reading a T x T mask (the CPU flash kernel: 17 ms instead of 24 ms for 12 x 1024 x 64)."""
    if not (isinstance(mask, fx.Node) and _is(mask, TRIU) and len(mask.args) >= 1):
        return False
    diag = _arg(mask, 1, "k", mask.kwargs.get("diagonal", 0))
    full = mask.args[0]
    if diag != 1 or not (isinstance(full, fx.Node) and _is(full, FULL)):
        return False
    fill = _arg(full, 1, "fill_value")
    vm = _val(mask)
    if not (isinstance(fill, (int, float)) and not isinstance(fill, bool) and fill <= MASKED):
        return False
    if not isinstance(vm, torch.Tensor) or vm.dim() != 2 or vm.dtype != vq.dtype:
        return False
    return tuple(vm.shape) == (vq.shape[-2], vk.shape[-2])


def _swaps_last_two(n: fx.Node) -> bool:
    """``transpose(x, d0, d1)`` (torch) or ``x.transpose(*perm)`` (numpy: a whole permutation)
    that swaps the last two dims only."""
    v = _val(n.args[0])
    dims = n.args[1:]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if v is None or not all(isinstance(d, int) for d in dims):
        return False
    nd = v.dim()
    if _target(n) == "ndarray.transpose" or len(dims) == nd > 2:  # a permutation
        return len(dims) == nd and [d % nd for d in dims] == [*range(nd - 2), nd - 1, nd - 2]
    return len(dims) == 2 and sorted(d % nd for d in dims) == [nd - 2, nd - 1]


def _last_dim_keepdim(n: fx.Node) -> bool:
    """A reduction node over the last dim only, keeping it (numpy ``axis``/``keepdims``, torch
    ``dim``/``keepdim``)."""
    v = _val(n.args[0])
    dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", n.kwargs.get("axis"))
    keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", n.kwargs.get("keepdims", False))
    if isinstance(dim, (tuple, list)) and len(dim) == 1:
        dim = dim[0]
    return v is not None and isinstance(dim, int) and dim % v.dim() == v.dim() - 1 and keep is True


def _uniform(v: Any) -> int | None:
    if isinstance(v, int):
        return v
    if isinstance(v, (tuple, list)) and len(set(v)) == 1 and isinstance(v[0], int):
        return v[0]
    return None


def _name(n: fx.Node) -> str:
    t = n.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t))


def partition(gm: fx.GraphModule, inference: bool,
              leave: Callable[[str, list[Any]], str | None] | None = None,
              rewrites: list[str] | None = None, fusing_rest: bool = True,
              weights: set[str] | frozenset[str] = frozenset()) -> list[RegionFound]:
    """Rewrite ``gm`` in place; returns the regions found. ``leave(kind, args)``: why a region's
    ops should stay as written for Inductor, or None
    (:func:`uhop.compile.runtime.leave_as_written`); such regions are reported and left alone.
    ``rewrites``, if given, receives the other rewrites made (for the fusion report).
    ``fusing_rest``: the rest goes to Inductor (False: it runs eagerly). ``weights``: names of
    placeholders bound to the model's parameters, whose float32 linear layers on a CPU run on
    MKL-packed weights when ``inference`` (:mod:`uhop.compile.packed`)."""
    p = Partitioner(gm, inference, leave, fusing_rest, weights)
    regions = p.run()
    if rewrites is not None:
        rewrites.extend(p.rewrites)
    return regions
