"""Honest softmax on a CUDA device (tensors in, tensor out); the sandbox keeps GPU access."""
import torch

OP = "softmax"
ARRAY = "torch"
DEVICE = "cuda"


def run(x):
    return torch.softmax(x, dim=-1)
