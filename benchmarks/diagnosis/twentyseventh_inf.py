"""Does a top-k filtered row of logits (all -inf but 40 entries) come out NaN from the cluster row
kernels without the all -inf guard in ``cuda_rows.HELPERS``'s ``st_add``, and finite with it?
Prints one JSON line: NaN rows out of 64, per kernel source."""

import json

import torch

from uhop.backends import cuda_rows

GUARD = "  if (m == NEG_INF) return;"
fixed_source = cuda_rows.source


def unguarded(*a, **k):
    src = fixed_source(*a, **k)
    assert GUARD in src
    return src.replace(GUARD, "")


torch.manual_seed(0)
x = torch.full((64, 50257), float("-inf"), device="cuda", dtype=torch.bfloat16)
keep = torch.randint(0, 50257, (64, 40), device="cuda")
x.scatter_(1, keep, torch.randn(64, 40, device="cuda", dtype=torch.bfloat16) * 3)
out = {}
for name, src in (("without_guard", unguarded), ("with_guard", fixed_source)):
    cuda_rows.source = src
    run = cuda_rows.launcher({"CL": 2, "threads": 512, "U": 4}, cuda_rows.OPS["softmax"], 0.0, "cuda:0")
    y = run(x)
    out[name] = {"nan_rows": int(torch.isnan(y).any(-1).sum()), "of": 64}
cuda_rows.source = fixed_source
print(json.dumps(out))
