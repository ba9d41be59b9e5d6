"""Host cost per call of UHOP's Triton GEMM-family kernels (matmul ``ptr``, attention, conv2d,
gated MLP ``ptr``) launched directly (``triton_kernels.launch.Launcher``, seventeenth session)
vs through Triton's JIT, interleaved rounds in one process, on small problems where the host
cost is the call's cost; and the two paths' outputs compared. Times kernels directly (not the
product path).

    OUT=/tmp python3 benchmarks/diagnosis/seventeenth_launch.py
"""
import json, os, statistics, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
import torch
from uhop import backends as bk
from uhop.backends.triton_kernels import attention, conv2d, matmul, swiglu
from uhop.measure.validate import ValidationSet
from uhop.problem import Problem
from hosttime import host_us  # noqa: E402
from width_sweep import environment  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CASES = [  # (op, dims, params, arity, template, module's Launcher)
    ("matmul", {"B": 1, "M": 64, "N": 64, "K": 64}, {"activation": "none"}, 2, "ptr", matmul._mm_ptr),
    ("matmul", {"B": 1, "M": 128, "N": 768, "K": 768}, {"activation": "gelu"}, 3, "ptr", matmul._mm_ptr),
    ("attention", {"B": 1, "S": 128, "L": 128, "D": 64, "E": 64}, {"causal": True}, 3, None, attention._attn),
    ("conv2d", {"N": 1, "C": 16, "H": 16, "W": 16, "K": 16, "R": 3, "S": 3}, {"stride": 1, "padding": 1}, 3, None,
     conv2d._conv),
    ("gated_mlp", {"M": 16, "N": 256, "K": 128}, {"activation": "silu"}, 3, "ptr", swiglu._swiglu_ptr),
]
b = bk.get("triton")
res = {"env": environment(), "cases": []}


def per_call_us(fn, args, n=400):
    return host_us(lambda: fn(*args), n, warm=20)


for op, dims, params, arity, template, launcher in CASES:
    row = {"op": op, "dims": dims}
    try:
        p = Problem.make(op, dims, "bfloat16", params, arity=arity, device="cuda:0", array="torch")
        cands = [c for c in b.candidates(p) if template is None or c.template == template]
        c = cands[0]
        k = b.compile(c, p)
        vs = ValidationSet(p, trials=1, seed=0)
        xs = vs.native_inputs(vs.trials[0], "torch", "cuda:0")
        y_direct = k(*xs)
        y_direct = k(*xs).clone()  # the second call: the direct launch
        launcher._direct = False
        y_jit = k(*xs).clone()
        row["cand"] = c.id
        row["same_output"] = bool(torch.equal(y_direct, y_jit))
        d, j = [], []
        for _ in range(5):
            launcher._direct = True
            d.append(per_call_us(k, xs))
            launcher._direct = False
            j.append(per_call_us(k, xs))
        launcher._direct = True
        row.update(direct_us=round(statistics.median(d), 1), jit_us=round(statistics.median(j), 1))
    except Exception as exc:  # noqa: BLE001 - a case that fails is a result
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    print(row, flush=True)
    res["cases"].append(row)
    json.dump(res, open(f"{OUT}/diagnosis_seventeenth_launch.json", "w"), indent=1)
