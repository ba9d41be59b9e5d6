"""Honest RMSNorm in torch (tensors in, tensor out)."""
import torch

OP = "rmsnorm"
ARRAY = "torch"


def run(x, weight=None):
    y = x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + 1e-6)
    return y * weight if weight is not None else y
