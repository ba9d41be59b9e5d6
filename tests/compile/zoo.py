"""Small models for the compile tests and benchmarks: a GPT-2 block (explicit and SDPA attention),
a GPT-2 style model, a Llama-style block (RMSNorm, rotary embeddings, SwiGLU), an MLP, a small
conv net with batchnorm, a ResNet-style net."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Conv1D(nn.Module):
    """Hugging Face GPT-2's projection: ``addmm(bias, x, weight)``, the weight held (in, out)."""

    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, n) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return y.view(*x.shape[:-1], -1)


def _proj(k: int, n: int, hf: bool) -> nn.Module:
    return Conv1D(k, n) if hf else nn.Linear(k, n)


class GPT2Attention(nn.Module):
    """Causal self-attention, GPT-2 style: one fused qkv projection. ``sdpa=False`` writes the
    explicit QKᵀ→mask→softmax→V pattern (as the original GPT-2 code does); ``hf=True`` projects
    with Hugging Face's ``Conv1D`` (addmm) instead of ``nn.Linear``."""

    def __init__(self, d: int, heads: int, sdpa: bool = True, hf: bool = False) -> None:
        super().__init__()
        self.h, self.sdpa = heads, sdpa
        self.c_attn = _proj(d, 3 * d, hf)
        self.c_proj = _proj(d, d, hf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    def __init__(self, d: int, hf: bool = False) -> None:
        super().__init__()
        self.c_fc = _proj(d, 4 * d, hf)
        self.c_proj = _proj(4 * d, d, hf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, d: int = 768, heads: int = 12, sdpa: bool = True, hf: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = GPT2Attention(d, heads, sdpa, hf)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = GPT2MLP(d, hf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class LlamaBlock(nn.Module):
    """A Llama-style decoder block: pre-RMSNorm, rotary position embeddings (rotate-half form),
    causal SDPA without biases, SwiGLU MLP (``down(silu(gate(x)) * up(x))``)."""

    def __init__(self, d: int = 4096, heads: int = 32, ff: int = 11008, ctx: int = 4096) -> None:
        super().__init__()
        self.h = heads
        self.norm_1, self.norm_2 = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False)
        self.down = nn.Linear(ff, d, bias=False)
        hd = d // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(ctx).float(), inv)
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1), persistent=False)
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1), persistent=False)

    def _rope(self, t: torch.Tensor) -> torch.Tensor:
        T, half = t.shape[2], t.shape[-1] // 2
        rot = torch.cat([-t[..., half:], t[..., :half]], -1)
        return t * self.cos[:T].to(t.dtype) + rot * self.sin[:T].to(t.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        h = self.norm_1(x)
        q, k, v = (w(h).view(B, T, self.h, C // self.h).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(self._rope(q), self._rope(k), v, is_causal=True)
        x = x + self.wo(y.transpose(1, 2).reshape(B, T, C))
        h = self.norm_2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class GPT2(nn.Module):
    """GPT-2 style model: token + position embeddings, ``layers`` blocks, final norm, tied head."""

    def __init__(self, vocab: int = 50257, ctx: int = 1024, d: int = 768, heads: int = 12, layers: int = 12) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.h = nn.ModuleList(GPT2Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)


class MLP(nn.Module):
    def __init__(self, d: int = 64, act: str = "relu") -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU(), "tanh_gelu": nn.GELU("tanh")}[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))).softmax(-1)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu, conv-bn, residual add, relu."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = ConvBlock(c, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(self.c1(x))))


class ResNetSmall(nn.Module):
    def __init__(self, width: int = 16, blocks: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBlock(3, width)
        self.blocks = nn.Sequential(*(BasicBlock(width) for _ in range(blocks)))
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(x.mean((2, 3)))
