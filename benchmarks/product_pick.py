"""One problem through the product path on a GPU, for a short device call: the first call of
``uhop.ops.<op>`` with default settings and an empty store, ``uhop.wait()``, then the product call
and torch eager re-timed interleaved (CUDA events). Prints one JSON line per case. Describes the
product (its pick and its rate), not the candidates: no oracle here (``tuner_vs_oracle.py`` has it).

    PYTHONPATH=. python3 benchmarks/product_pick.py layernorm:32768x5120:bfloat16:3 conv2d:64x256x56x56x256x3x3:bfloat16:2

A fifth field ``channels_last`` passes the 4-D inputs channels-last (uhop and eager alike), as a
PyTorch vision model in that memory format does:
``conv2d:64x64x56x56x64x3x3:bfloat16:2:channels_last``. Fields ``name=value`` are the op's
params (ints, floats, ``true``/``false``), e.g. Llama 3 8B's grouped-query attention at 2048
tokens, 32 query heads over 8 key/value heads (4-D inputs, batch 1; eager is SDPA with
``enable_gqa``): ``attention:1x32x2048x128:bfloat16:3:causal=true:kv_groups=4``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time


def _commit() -> str:
    """The checkout's commit (results name the code they measured), or "" outside a git checkout."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except Exception:
        return ""


def _param(field: str) -> tuple[str, object]:
    name, text = field.split("=", 1)
    low = text.lower()
    if low in ("true", "false"):
        return name, low == "true"
    try:
        return name, int(text)
    except ValueError:
        try:
            return name, float(text)
        except ValueError:
            return name, text


def main(specs: list[str], device: str = "cuda:0") -> None:
    os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
    import torch

    import uhop
    from uhop.ops import get as get_op
    from uhop.problem import Problem
    from uhop.store import open_store
    from uhop.tune.retime import interleaved

    cuda = device.startswith("cuda")
    versions = {"torch": torch.__version__, "python": sys.version.split()[0], "uhop_commit": _commit()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    from tuner_vs_oracle import _TuningLog  # the tuner's "where the time went" log record

    grab = _TuningLog()
    lg = logging.getLogger("uhop")
    lg.setLevel(logging.INFO)
    lg.addHandler(grab)
    for spec in specs:
        op, shape, dtype, arity, *rest = spec.split(":")
        layout = next((f for f in rest if "=" not in f), "contiguous")
        params = dict(_param(f) for f in rest if "=" in f)
        dims = get_op(op).parse_shape(shape)
        p = Problem.make(op, dims, dtype, params, arity=int(arity), layout=layout, device=device, array="torch")
        g = torch.Generator(device=device).manual_seed(0)
        xs = [torch.rand(s, device=device, generator=g, dtype=torch.float32).mul_(2).sub_(1).to(getattr(torch, dtype))
              for s in p.spec.shapes_from_dims(p.dim, p.param, int(arity))]  # fmt: skip
        if op == "attention":  # (batch 1, heads, seq, dim) as models call SDPA: 3-D takes its math path
            xs = [x.unsqueeze(0) for x in xs]
        if layout == "channels_last":
            xs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xs]
        fn = getattr(uhop.ops, op)
        grab.overhead = None
        t0 = time.perf_counter()
        fn = (lambda *a, _f=fn, _p=dict(p.param): _f(*a, **{k: v for k, v in _p.items() if v is not None})) if params else fn
        fn(*xs)
        sync()
        first = time.perf_counter() - t0
        uhop.wait()
        tuned = time.perf_counter() - t0
        from uhop.config import settings

        entries = open_store().entries(op)
        key = p.key(settings().shape_buckets)
        entry = next((e for e in entries if e.key == key), entries[-1] if entries else None)
        eager = {"layernorm": lambda x, w, b: torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b),
                 "rmsnorm": lambda x, w=None: torch.nn.functional.rms_norm(x, (x.shape[-1],), w),
                 "softmax": lambda x: torch.softmax(x, -1),
                 "conv2d": lambda x, w, *b: torch.nn.functional.conv2d(x, w, *b),
                 # what eager PyTorch code runs for a gated MLP: two GEMMs, the gate, the product
                 "gated_mlp": lambda x, wg, wu: torch.nn.functional.silu(x @ wg.T) * (x @ wu.T),
                 "attention": lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
                     q, k, v, is_causal=bool(params.get("causal")), scale=params.get("scale"),
                     enable_gqa=bool(params.get("kv_groups")))}[op]  # fmt: skip
        s = interleaved([fn, eager], [[xs], [xs]], sync=sync if cuda else None, rounds=7, min_time_s=0.05, cuda_events=cuda)
        m = [statistics.median(r) for r in s]
        print(json.dumps({"problem": p.describe(), "layout": layout, "pick": entry.candidate if entry else None, "first_call_s": round(first, 3),
                          "tuned_s": round(tuned, 2), "overhead_s": grab.overhead,
                          "uhop_ms": m[0] * 1e3, "eager_ms": m[1] * 1e3, "eager_over_uhop": m[1] / m[0],
                          "uhop_gbps": p.bytes() / m[0] / 1e9, "device": torch.cuda.get_device_name() if cuda else "cpu",
                          "versions": versions}), flush=True)  # fmt: skip


if __name__ == "__main__":
    args = sys.argv[1:]
    dev = "cuda:0"
    if args and args[0].startswith("--device="):
        dev, args = args[0].split("=", 1)[1], args[1:]
    main(args, dev)
