"""attention (softmax(Q K^T * scale [+ mask] [+ causal mask]) V) and conv2d (NCHW, stride, padding)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from uhop.errors import InputError, UnsupportedDtype
from uhop.ops.base import ITEMSIZE, Op, Param


def apply_mask(s: Any, mask: Any, causal: bool) -> Any:
    """Scores (..., S, L) with ``mask`` applied as torch's SDPA does: a boolean mask keeps True
    (False -> -inf), a float mask is added; either broadcasts. ``causal`` hides keys after the
    query (top-left aligned). numpy or torch arrays."""
    if causal:
        S, L = s.shape[-2], s.shape[-1]
        hide = np.triu(np.ones((S, L), dtype=bool), k=1)
        if not isinstance(s, np.ndarray):
            import torch

            hide = torch.from_numpy(hide).to(s.device)
            s = s.masked_fill(hide, float("-inf"))
        else:
            s = np.where(hide, -np.inf, s)
    if mask is None:
        return s
    if mask.dtype == bool or str(mask.dtype) == "torch.bool":
        if isinstance(s, np.ndarray):
            return np.where(mask, s, -np.inf)
        return s.masked_fill(~mask, float("-inf"))
    return s + mask


def expand_kv(t: Any, groups: int | None) -> Any:
    """k or v of grouped-query attention as one head per query head: each of its heads (dim -3,
    or the flattened batch of a 3-D problem) repeated ``groups`` times in place, so that query
    head ``i`` meets key/value head ``i // groups``, as torch's SDPA ``enable_gqa`` has it."""
    if not groups or groups == 1:
        return t
    if isinstance(t, np.ndarray):
        return np.repeat(t, groups, axis=-3)
    return t.repeat_interleave(groups, dim=-3)


def kv_groups_of(q_shape: Sequence[int], k_shape: Sequence[int]) -> int | None:
    """``kv_groups`` for q and k as SDPA's ``enable_gqa`` takes them (heads in dim -3): None where
    the heads are equal; ``InputError`` unless k's heads divide q's."""
    q_shape, k_shape = tuple(q_shape), tuple(k_shape)
    if len(q_shape) < 3 or len(k_shape) < 3 or not k_shape[-3] or q_shape[-3] % k_shape[-3]:
        raise InputError(f"attention: enable_gqa needs q and k with heads in dim -3, q's a multiple of k's; "
                         f"got q {q_shape}, k {k_shape}")  # fmt: skip
    return None if q_shape[-3] == k_shape[-3] else q_shape[-3] // k_shape[-3]


def softmax_scale(scale: float | None, D: int) -> float:
    """The factor of q k^T: ``scale`` when given (as torch's SDPA takes it), else 1/sqrt(D)."""
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


def explicit_scale(scale: float | None, D: int) -> float | None:
    """``scale`` as the op's parameter: None where it is 1/sqrt(D) (to float32 rounding), so that a
    call passing the default explicitly poses the default problem and finds its store entries."""
    if scale is None or (D > 0 and math.isclose(float(scale) * math.sqrt(D), 1.0, rel_tol=1e-6)):
        return None
    return float(scale)


class Attention(Op):
    name = "attention"
    #: ``mask`` (optional): boolean (True = attend) or additive float, broadcastable to (..., S, L)
    inputs = ("q", "k", "v", "mask")
    optional = 1
    #: ``scale``: the factor of q k^T (None: 1/sqrt(D)); T5 uses 1, models with a query pre-scale others
    #: ``kv_groups``: query heads per key/value head (grouped-query attention: k and v have
    #: ``heads / kv_groups`` heads in dim -3, query head i reads k/v head i // kv_groups; None: 1)
    params = (Param("causal", False, (False, True), bool), Param("scale", None, None, float),
              Param("kv_groups", None, None, int))
    dims = ("B", "S", "L", "D", "E")
    description = ("softmax(q k^T * scale [+ mask]) v over (..., S, D) x (..., L, D) x (..., L, E); scale 1/sqrt(D) "
                   "unless given; mask boolean (True = attend) or additive, broadcastable to (..., S, L); causal optional; "
                   "kv_groups: query heads per k/v head (grouped-query attention, k/v with fewer heads in dim -3)")

    def normalize_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        out = super().normalize_params(given)
        s = out["scale"]
        if s is not None and not (math.isfinite(s) and s > 0):
            raise InputError(f"attention: scale must be a positive finite number; got {given.get('scale')!r}")
        g = out["kv_groups"]
        if g is not None and g < 1:
            raise InputError(f"attention: kv_groups must be a positive int (query heads per key/value head); "
                             f"got {given.get('kv_groups')!r}")
        if g == 1:
            out["kv_groups"] = None  # the default problem: its key as before the parameter existed
        return out

    def defaulted_dims(self) -> dict[str, int]:
        return {"B": 1}

    def parse_shape(self, text: str) -> dict[str, int]:
        """``BxHxSxD`` (the field's usual spelling: batch, heads, seq, head dim) or the canonical dims."""
        values = [v for v in text.lower().split("x") if v]
        if len(values) == 4:
            b, h, s, d = (int(v) for v in values)
            if min(b, h, s, d) <= 0:
                raise InputError(f"shape dims must be positive, got {text!r}")
            return {"B": b * h, "S": s, "L": s, "D": d, "E": d}
        return super().parse_shape(text)

    def check(self, args: Sequence[Any], params: Mapping[str, Any]) -> dict[str, int]:
        self.check_arrays(args)
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else None
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.ndim < 2:
                raise InputError(f"attention: {name} must have at least 2 dims (..., seq, dim), got {tuple(t.shape)}")
        g = params.get("kv_groups") or 1
        if k.shape[:-2] != v.shape[:-2]:
            raise InputError(f"attention: k and v must have the same batch dims, got {tuple(k.shape)} and {tuple(v.shape)}")
        if g > 1:
            if not (q.ndim >= 3 and q.shape[:-3] == k.shape[:-3] and k.ndim == q.ndim and q.shape[-3] == g * k.shape[-3]):
                raise InputError(
                    f"attention: with kv_groups={g}, q's heads (dim -3) must be {g}x k's and v's, other batch dims "
                    f"equal: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")  # fmt: skip
        elif q.shape[:-2] != k.shape[:-2]:
            hint = ""
            if q.ndim >= 3 and q.ndim == k.ndim and q.shape[:-3] == k.shape[:-3] and k.shape[-3] and q.shape[-3] % k.shape[-3] == 0:
                hint = " (grouped-query attention: pass enable_gqa=True, as to torch's SDPA)"
            raise InputError(
                f"attention: batch dims must match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}{hint}"
            )
        if q.shape[-1] != k.shape[-1]:
            raise InputError(f"attention: q's last dim ({q.shape[-1]}) must equal k's ({k.shape[-1]})")
        if k.shape[-2] != v.shape[-2]:
            raise InputError(f"attention: k and v must have the same seq length, got {k.shape[-2]} and {v.shape[-2]}")
        S, L = q.shape[-2], k.shape[-2]
        if mask is not None:
            target = (*q.shape[:-2], S, L)
            try:
                ok = np.broadcast_shapes(tuple(mask.shape), target) == target
            except ValueError:
                ok = False
            if not ok:
                raise InputError(f"attention: mask of shape {tuple(mask.shape)} does not broadcast to scores {target}")
        return {"B": math.prod(q.shape[:-2]), "S": S, "L": L, "D": q.shape[-1], "E": v.shape[-1]}

    def output_shape(self, shapes, params):
        return (*shapes[0][:-1], shapes[2][-1])

    def canonical_dims(self, dims, params):
        g = params.get("kv_groups") or 1
        if "B" in dims and dims["B"] % g:
            raise InputError(f"attention: with kv_groups={g} the batch x heads dim B ({dims['B']}) must be a multiple of {g}")
        return dims

    def shapes_from_dims(self, dims, params, arity):
        B, S, L, D, E = (dims[d] for d in self.dims)
        Bkv = B // (params.get("kv_groups") or 1)  # flattened (batch, heads): query head i reads kv head i // g
        return [(B, S, D), (Bkv, L, D), (Bkv, L, E), (S, L)][:arity]

    def check_dtypes(self, args: Sequence[Any]) -> str:
        """q, k, v share a dtype; a mask is boolean or of that dtype."""
        dtype = super().check_dtypes(args[:3])
        if len(args) > 3 and args[3] is not None:
            md = str(args[3].dtype).removeprefix("torch.")
            if md not in ("bool", dtype):
                raise UnsupportedDtype(f"attention: mask has dtype {md}; expected bool or {dtype} (the dtype of q)")
        return dtype

    def reference(self, q, k, v, mask=None, causal=False, scale=None, kv_groups=None, **_: Any) -> np.ndarray:
        k, v = expand_kv(k, kv_groups), expand_kv(v, kv_groups)
        s = np.matmul(q, np.swapaxes(k, -1, -2)) * softmax_scale(scale, q.shape[-1])
        s = apply_mask(s, mask, causal)  # top-left aligned causal, as torch's SDPA
        s = s - s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=-1, keepdims=True)
        return np.matmul(p, v)

    def reference_torch(self, q, k, v, mask=None, causal=False, scale=None, kv_groups=None, **_: Any) -> Any:
        """:meth:`reference` on float64 torch tensors (the same math, not a fused SDPA kernel)."""
        k, v = expand_kv(k, kv_groups), expand_kv(v, kv_groups)
        s = (q @ k.mT) * softmax_scale(scale, q.shape[-1])
        s = apply_mask(s, mask, causal)
        s = s - s.amax(dim=-1, keepdim=True)
        p = s.exp()
        p = p / p.sum(dim=-1, keepdim=True)
        return p @ v

    def flops(self, dims, params) -> float:
        B, S, L, D, E = (dims[d] for d in self.dims)
        f = 2.0 * B * S * L * (D + E)
        return f / 2 if params.get("causal") else f

    def bytes(self, dims, dtype, params) -> float:
        B, S, L, D, E = (dims[d] for d in self.dims)
        Bkv = B // (params.get("kv_groups") or 1)
        return ITEMSIZE[dtype] * (B * (S * D + S * E) + Bkv * (L * D + L * E))

    def error_scale(self, dims, params) -> float:
        # a dot product of D terms; a scale above 1/sqrt(D) sharpens the softmax by as much
        D = dims["D"]
        return math.sqrt(D) * max(1.0, softmax_scale(params.get("scale"), D) * math.sqrt(D))


class Conv2d(Op):
    name = "conv2d"
    inputs = ("x", "weight", "bias")
    optional = 1
    params = (Param("stride", 1, None, int), Param("padding", 0, None, int))
    dims = ("N", "C", "H", "W", "K", "R", "S")
    description = "2-D convolution, x (N,C,H,W), weight (K,C,R,S), bias (K,); stride, padding"

    def normalize_params(self, given):
        out = super().normalize_params(given)
        if out["stride"] < 1:
            raise InputError(f"conv2d: stride must be >= 1, got {out['stride']}")
        if out["padding"] < 0:
            raise InputError(f"conv2d: padding must be >= 0, got {out['padding']}")
        return out

    @staticmethod
    def out_hw(dims: Mapping[str, int], params: Mapping[str, Any]) -> tuple[int, int]:
        st, pd = params.get("stride", 1), params.get("padding", 0)
        return (dims["H"] + 2 * pd - dims["R"]) // st + 1, (dims["W"] + 2 * pd - dims["S"]) // st + 1

    def check(self, args: Sequence[Any], params: Mapping[str, Any]) -> dict[str, int]:
        self.check_arrays(args)
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else None
        if x.ndim != 4:
            raise InputError(f"conv2d: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
        if w.ndim != 4:
            raise InputError(f"conv2d: weight must be 4-D (K, C, R, S), got shape {tuple(w.shape)}")
        N, C, H, W = x.shape
        K, C2, R, S = w.shape
        if C != C2:
            raise InputError(f"conv2d: x has {C} channels but weight expects {C2} (weight shape {tuple(w.shape)})")
        if bias is not None and tuple(bias.shape) != (K,):
            raise InputError(f"conv2d: bias must have shape ({K},), got {tuple(bias.shape)}")
        dims = {"N": N, "C": C, "H": H, "W": W, "K": K, "R": R, "S": S}
        P, Q = self.out_hw(dims, params)
        if P < 1 or Q < 1:
            raise InputError(
                f"conv2d: kernel {R}x{S} is larger than the padded input {H}x{W} (padding {params.get('padding', 0)})"
            )
        return dims

    def output_shape(self, shapes, params):
        (N, _, H, W), (K, _, R, S) = shapes[0], shapes[1]
        P, Q = self.out_hw({"H": H, "W": W, "R": R, "S": S}, params)
        return (N, K, P, Q)

    def shapes_from_dims(self, dims, params, arity):
        N, C, H, W, K, R, S = (dims[d] for d in self.dims)
        return [(N, C, H, W), (K, C, R, S), (K,)][:arity]

    def reference(self, x, weight, bias=None, stride=1, padding=0, **_: Any) -> np.ndarray:
        if padding:
            x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        N, C, H, W = x.shape
        K, _, R, S = weight.shape
        P, Q = (H - R) // stride + 1, (W - S) // stride + 1
        win = np.lib.stride_tricks.sliding_window_view(x, (R, S), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :P, :Q]
        out = np.einsum("ncpqrs,kcrs->nkpq", win, weight, optimize=True)
        if bias is not None:
            out = out + bias[None, :, None, None]
        return out

    def reference_torch(self, x, weight, bias=None, stride=1, padding=0, **_: Any) -> Any:
        """:meth:`reference` on float64 torch tensors: one matmul per filter tap (R x S of them,
        (N*P*Q, C) @ (C, K) each), on the device of a CUDA problem. The host reference of a ResNet
        layer (64x256x56x56, 3x3) took 6 s of a 10 s budget on the H100 host; FP64 GEMMs take
        milliseconds. Not a convolution library's kernel: the candidates are those."""
        import torch.nn.functional as F

        if padding:
            x = F.pad(x, (padding, padding, padding, padding))
        N, C, H, W = x.shape
        K, _, R, S = weight.shape
        P, Q = (H - R) // stride + 1, (W - S) // stride + 1
        xt = x.permute(0, 2, 3, 1)  # N H W C: a tap's window is then rows of C
        out = None
        for r in range(R):
            for s in range(S):
                win = xt[:, r : r + stride * (P - 1) + 1 : stride, s : s + stride * (Q - 1) + 1 : stride, :]
                term = win.reshape(N * P * Q, C) @ weight[:, :, r, s].T
                out = term if out is None else out.add_(term)
        assert out is not None
        y = out.reshape(N, P, Q, K).permute(0, 3, 1, 2)
        if bias is not None:
            y = y + bias[None, :, None, None]
        return y.contiguous()

    def flops(self, dims, params) -> float:
        P, Q = self.out_hw(dims, params)
        return 2.0 * dims["N"] * dims["K"] * P * Q * dims["C"] * dims["R"] * dims["S"]

    def bytes(self, dims, dtype, params) -> float:
        P, Q = self.out_hw(dims, params)
        N, C, H, W, K, R, S = (dims[d] for d in self.dims)
        return ITEMSIZE[dtype] * (N * C * H * W + K * C * R * S + N * K * P * Q)

    def error_scale(self, dims, params) -> float:
        return math.sqrt(dims["C"] * dims["R"] * dims["S"])
