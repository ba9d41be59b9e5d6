"""torch backend: the vendor paths exposed as candidates (MKL/oneDNN on CPU; cuBLAS, cuDNN and
SDPA/flash attention on CUDA), with torch's eager ops for norms, softmax and chains.

CUDA-only candidates (the "library baseline" a generated kernel must beat):

* matmul ``lt_epilogue``: ``torch._addmm_activation``, cuBLASLt's fused bias + relu/gelu
  epilogue. Its gelu is the tanh form: exact for ``gelu_tanh`` (GPT-2's MLP) in every dtype;
  for the erf ``gelu`` within bf16/fp16 rounding, so offered for those dtypes only (and
  validated like everything else).
* matmul ``pad``: a misaligned GEMM (K or N not a multiple of 8 elements in 16-bit, 4 in fp32)
  runs 3-5x slower in cuBLAS; zero-pad K and N up to a multiple of ``to``, multiply, and copy
  the (M, N) corner out.
* conv2d ``channels_last``: cuDNN's NHWC kernels (the tensor-core path) after a format change;
  ``cudnn_benchmark``: cuDNN's own algorithm search for the shape.
* attention ``sdpa`` with ``impl`` in flash / cudnn / efficient: one SDPA backend pinned.
"""

from __future__ import annotations

import functools
from typing import Any

from uhop.backends.base import Backend, Candidate, Kernel
from uhop.ops import expr as ex
from uhop.problem import Problem

_TORCH_FUNCS: dict[str, Any] = {}


def _torch_funcs() -> dict[str, tuple[int, Any]]:
    if not _TORCH_FUNCS:
        import torch
        import torch.nn.functional as F

        table = {
            "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
            "maximum": lambda a, b: torch.clamp_min(a, b) if not torch.is_tensor(b) else torch.maximum(a, b),
            "minimum": lambda a, b: torch.clamp_max(a, b) if not torch.is_tensor(b) else torch.minimum(a, b),
            "neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
            "rsqrt": torch.rsqrt, "tanh": torch.tanh, "sin": torch.sin, "cos": torch.cos,
            "sigmoid": torch.sigmoid, "relu": torch.relu, "silu": F.silu, "gelu": F.gelu, "erf": torch.erf,
            "square": torch.square, "reciprocal": torch.reciprocal,
        }  # fmt: skip
        for k, f in table.items():
            _TORCH_FUNCS[k] = (ex.FUNCS[k][0], f)
    return _TORCH_FUNCS


def evaluate_expr(e: Any, xs: Any) -> Any:
    """An expression tree on torch tensors (eager: one torch op per node), as a new tensor of the
    inputs' broadcast shape also when the expression is a constant or an input itself. The torch backend's chain
    kernel and the elementwise op's float64 torch reference."""
    import torch

    out = ex.evaluate(e, xs, _chain_funcs())
    x0 = xs[0]
    if not torch.is_tensor(out) or any(out.data_ptr() == x.data_ptr() for x in xs):
        shape = torch.broadcast_shapes(*[x.shape for x in xs])
        out = torch.broadcast_to(torch.as_tensor(out, dtype=x0.dtype, device=x0.device), shape).clone()
    return out


@functools.cache
def _chain_funcs() -> dict[str, tuple[int, Any]]:
    """:func:`_torch_funcs` with the scalar-first binaries rewritten (``1.0 - t``)."""
    funcs = dict(_torch_funcs())
    for k in ("sub", "div", "pow"):
        funcs[k] = (2, _scalar_first(funcs[k][1]))
    return funcs


def _scalar_first(f):
    """torch.sub(1.0, t) etc. need a tensor first; rewrite scalar-first binaries."""
    import torch

    def g(a, b):
        if not torch.is_tensor(a) and torch.is_tensor(b):
            return f(torch.full_like(b, a), b)
        return f(a, b)

    return g


def _with_tf32(kernel: Kernel, allow: bool) -> Kernel:
    """Run a cuBLAS float32 kernel at the problem's precision, whatever the caller's global
    ``allow_tf32`` says (an ``ieee`` problem must not get tf32 products, nor the reverse)."""
    import torch

    flags = torch.backends.cuda.matmul

    def run(*args: Any) -> Any:
        prev = flags.allow_tf32
        flags.allow_tf32 = allow
        try:
            return kernel(*args)
        finally:
            flags.allow_tf32 = prev

    return run


def _sdpa(q, k, v, mask, causal, scale=None, gqa=False):
    """SDPA with UHOP's attention semantics: a mask and ``causal`` may come together (torch's SDPA
    refuses both, so the causal part joins the mask); 3-D inputs run as one 4-D batch; ``gqa``:
    SDPA's ``enable_gqa`` (k/v heads in dim -3, or the flattened batch of 3-D inputs; the keyword
    passed only then, torch before 2.5 has none)."""
    import torch
    import torch.nn.functional as F

    if mask is not None and causal:
        S, L = q.shape[-2], k.shape[-2]
        keep = torch.ones(S, L, dtype=torch.bool, device=q.device).tril()
        mask = (mask & keep) if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf"))
        causal = False
    extra = {"enable_gqa": True} if gqa else {}
    if q.dim() == 3:
        # the fused kernels want (batch, heads, seq, dim): 3-D inputs take the math path (on CPU
        # 2-9x slower than the flash kernel at 12-96 x 64 x 64, so the tuner saw SDPA tie with
        # eager matmul+softmax and served that to 4-D callers, where SDPA is the flash kernel)
        q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, **extra).squeeze(0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, **extra)


def _gelu_tanh_(y):
    import torch

    return torch._C._nn.gelu_(y, approximate="tanh")


def _silu_(y):
    import torch.nn.functional as F

    return F.silu(y, inplace=True)


def _gelu_tanh(y):
    import torch.nn.functional as F

    return F.gelu(y, approximate="tanh")


def _reading_b_transposed(kernel: Kernel) -> Kernel:
    """matmul with trans_b: b is (N, K); its .mT view goes to BLAS as a transposed operand."""

    def kernel_nk(a, b, bias=None):
        # no bias: two arguments (the bias-free kernel is torch.matmul itself, which takes two)
        return kernel(a, b.mT) if bias is None else kernel(a, b.mT, bias)

    return kernel_nk


def _padded_matmul(activation: str, to: int) -> Kernel:
    """cuBLAS on operands zero-padded so K and N are multiples of ``to`` (aligned rows)."""
    import torch
    import torch.nn.functional as F

    act = {"none": None, "relu": torch.relu, "gelu": F.gelu, "silu": F.silu, "gelu_tanh": _gelu_tanh}[activation]

    def mm(a, b, bias=None):
        K, N = b.shape[-2], b.shape[-1]
        kp, np_ = -K % to, -N % to
        a_p = F.pad(a, (0, kp)) if kp else a
        b_p = F.pad(b, (0, np_, 0, kp)) if (kp or np_) else b
        if bias is not None:
            bias_p = F.pad(bias, (0, np_)) if np_ else bias
            y = torch.addmm(bias_p, a_p, b_p) if a_p.dim() == 2 else torch.matmul(a_p, b_p) + bias_p
        else:
            y = torch.matmul(a_p, b_p)
        if act is not None:
            y = act(y)
        return y[..., :N].contiguous() if np_ else y

    return mm


class TorchBackend(Backend):
    name = "torch"
    requires = ("torch",)
    array = "torch"
    devices = ("cpu", "cuda")
    vendor = True
    ops = ("matmul", "softmax", "layernorm", "rmsnorm", "elementwise", "attention", "conv2d", "embedding",
           "gated_mlp", "log_softmax")
    dtypes = ("float32", "float64", "float16", "bfloat16")
    elementwise_forms = True

    def _probe(self) -> tuple[bool, str]:
        import torch

        cuda = torch.cuda.is_available()
        return True, f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if cuda else ", CPU only")

    def supports(self, problem: Problem) -> bool:
        if not super().supports(problem):
            return False
        if problem.device.startswith("cuda"):
            import torch

            return torch.cuda.is_available()
        return True

    def synchronize(self, device: str) -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def candidates(self, problem: Problem) -> list[Candidate]:
        c = Candidate.of
        cuda = problem.device.startswith("cuda")
        if problem.op == "attention":
            out = [c("torch", "sdpa")]
            if cuda:
                out += [c("torch", "sdpa", impl=i) for i in ("flash", "cudnn", "efficient")]
            return out + [c("torch", "eager")]
        out = [c("torch", "eager")]
        if not cuda:
            return out
        p, d = problem.param, problem.dim
        if problem.op == "matmul":
            half = problem.dtype in ("float16", "bfloat16")
            act = p["activation"]
            if problem.arity == 3 and (act in ("relu", "gelu_tanh") or (act == "gelu" and half)) and not p.get("batched_b"):
                out.append(c("torch", "lt_epilogue"))
            step = 16 // (4 if problem.dtype == "float32" else 2)
            if d["K"] % step or d["N"] % step:
                out += [c("torch", "pad", to=64), c("torch", "pad", to=8)]
        elif problem.op == "conv2d":
            out += [c("torch", "channels_last"), c("torch", "eager", benchmark=True),
                    c("torch", "channels_last", benchmark=True)]  # fmt: skip
        return out

    def compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        kernel = self._compile(candidate, problem)
        if problem.op == "matmul" and problem.param.get("trans_b"):
            kernel = _reading_b_transposed(kernel)
        if problem.op == "matmul" and problem.dtype == "float32" and problem.device.startswith("cuda"):
            return _with_tf32(kernel, problem.param.get("precision") == "tf32")
        return kernel

    def _compile(self, candidate: Candidate, problem: Problem) -> Kernel:
        import torch
        import torch.nn.functional as F

        p = problem.param
        op = problem.op
        cfg = candidate.cfg
        if op == "matmul" and candidate.template == "lt_epilogue":
            use_gelu = p["activation"] in ("gelu", "gelu_tanh")
            differentiable = _gelu_tanh if use_gelu else torch.relu  # _addmm_activation has no backward

            def lt(a, b, bias):
                a2 = a.reshape(-1, a.shape[-1]) if b.dim() == 2 else None
                if a2 is None:
                    raise ValueError("lt_epilogue needs a 2-D b")
                if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or bias.requires_grad):
                    y = differentiable(torch.addmm(bias, a2, b))
                else:
                    y = torch._addmm_activation(bias, a2, b, use_gelu=use_gelu)
                return y.reshape(*a.shape[:-1], b.shape[-1])

            return lt
        if op == "matmul" and candidate.template == "pad":
            return _padded_matmul(p["activation"], int(cfg["to"]))
        if op == "matmul" and p["activation"] == "none" and problem.arity == 2:
            return torch.matmul  # no Python frame between the caller and ATen
        if op == "matmul":
            # in place on the fresh product (no second output tensor) unless autograd records it
            act_ = {"none": None, "relu": torch.relu_, "gelu": torch._C._nn.gelu_, "silu": _silu_,
                    "gelu_tanh": _gelu_tanh_}[p["activation"]]
            act_out = {"none": None, "relu": torch.relu, "gelu": F.gelu, "silu": F.silu,
                       "gelu_tanh": _gelu_tanh}[p["activation"]]

            def mm(a, b, bias=None):
                if bias is not None and a.dim() == 2:
                    y = torch.addmm(bias, a, b)
                else:
                    y = torch.matmul(a, b)
                    if bias is not None:
                        y = y + bias
                if act_ is None:
                    return y
                return act_out(y) if y.requires_grad else act_(y)

            return mm
        if op == "softmax":
            return lambda x: torch.softmax(x, dim=-1)
        if op == "log_softmax":
            return lambda x: torch.log_softmax(x, dim=-1)
        if op == "gated_mlp":  # two GEMMs, the gate in place on the fresh product, one multiply
            gate_ = {"silu": _silu_, "gelu": torch._C._nn.gelu_, "gelu_tanh": _gelu_tanh_}[p["activation"]]
            gate = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": _gelu_tanh}[p["activation"]]

            def gated(x, wg, wu):
                g = F.linear(x, wg)
                g = gate(g) if g.requires_grad else gate_(g)
                return g.mul_(F.linear(x, wu)) if not g.requires_grad else g * F.linear(x, wu)

            return gated
        if op == "embedding":
            return lambda w, idx: F.embedding(idx, w)
        if op == "layernorm":
            eps = p["eps"]
            return lambda x, w=None, b=None: F.layer_norm(x, (x.shape[-1],), w, b, eps)
        if op == "rmsnorm":
            eps = p["eps"]
            if hasattr(F, "rms_norm"):
                return lambda x, w=None: F.rms_norm(x, (x.shape[-1],), w, eps)

            def rms(x, w=None):
                y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                return y * w if w is not None else y

            return rms
        if op == "attention":
            causal, scale, groups = p["causal"], p.get("scale"), p.get("kv_groups")
            gqa = groups is not None
            if candidate.template == "sdpa" and "impl" in cfg:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                           "efficient": SDPBackend.EFFICIENT_ATTENTION}[cfg["impl"]]  # fmt: skip

                def pinned(q, k, v, mask=None):
                    three = q.dim() == 3  # the fused kernels want (batch, heads, seq, dim)
                    if three:
                        q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
                    with sdpa_kernel(backend):
                        out = _sdpa(q, k, v, mask, causal, scale, gqa)
                    return out.squeeze(0) if three else out

                return pinned
            if candidate.template == "sdpa":
                return lambda q, k, v, mask=None: _sdpa(q, k, v, mask, causal, scale, gqa)

            def naive(q, k, v, mask=None):
                from uhop.ops.attention import apply_mask, expand_kv, softmax_scale

                k, v = expand_kv(k, groups), expand_kv(v, groups)
                s = apply_mask(torch.matmul(q, k.transpose(-1, -2)) * softmax_scale(scale, q.shape[-1]), mask, causal)
                return torch.matmul(torch.softmax(s, dim=-1), v)

            return naive
        if op == "conv2d":
            st, pd = p["stride"], p["padding"]
            cl = candidate.template == "channels_last"
            bench = bool(cfg.get("benchmark", False))

            def conv(x, w, b=None):
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                    w = w.contiguous(memory_format=torch.channels_last)
                if not bench:
                    return F.conv2d(x, w, b, stride=st, padding=pd)
                with torch.backends.cudnn.flags(enabled=True, benchmark=True):
                    return F.conv2d(x, w, b, stride=st, padding=pd)

            return conv
        if op == "elementwise":
            from uhop.ops.elementwise import reduce_last

            e, reduce = ex.parse(p["expr"]), p.get("reduce", "none")
            if not p.get("dtypes"):
                return lambda *xs: reduce_last(evaluate_expr(e, xs), reduce)
            dt = getattr(torch, problem.dtype)

            def mixed(*xs):
                # torch promotes as the caller's chain would; a scalar input of shape (1,) where the
                # caller's was 0-dim (which takes no part in torch's promotion) is cast back
                out = reduce_last(evaluate_expr(e, xs), reduce)
                return out if out.dtype == dt else out.to(dt)

            return mixed
        raise NotImplementedError(op)
