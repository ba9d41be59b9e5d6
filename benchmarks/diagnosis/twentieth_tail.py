"""The CUDA cluster row kernels' last wave (#20): does a launch whose rows are not whole waves lose the
rest of its last wave, and does a second launch in wider clusters for those rows (the ``tail`` config
key) win it back? For each case: every config the backend offers, each with and without ``tail``
(2x, 4x, 8x its cluster), one wave's rows from the driver's occupancy calculator, GB/s from CUDA
events over 10 calls, interleaved rounds in one process, next to a device copy of the same bytes;
outputs checked against float64 first. Times the kernels directly (a candidate study, not the
product path).

    git checkout e719fdc -- uhop/backends/cuda_rows.py && OUT=/tmp python3 benchmarks/diagnosis/twentieth_tail.py

Result (H100, ``diagnosis_twentieth_tail_h100.json``): no. 2640 rows of 50257 (whole waves of 264)
layernorm at 87.9% of a same-size copy, 2670 rows at 85.7%: the partial wave costs about 2%, and the
tail launch won none of it back (2505 -> 2508 GB/s at best); on the eight cases of other shapes the
best config with a tail was 0.7-6.2% behind the best without. The ``tail`` key existed only at e719fdc; the next commit removed it.
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
import torch  # noqa: E402
from width_sweep import copy_gbps, environment, torch_fn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hosttime import interleaved_gbps  # noqa: E402

from uhop.backends import cuda_rows  # noqa: E402
from uhop.backends.cuda import configs  # noqa: E402
from uhop.backends.triton_kernels import limits  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
# (op, rows, width): the sweep's cluster-kernel cases below 92% of a same-size copy on the H100
# (width_sweep_h100_product_nineteenth_final.json), a whole-wave neighbour, and two at >= 92%
CASES = [("layernorm", 2670, 50257), ("layernorm", 2640, 50257), ("softmax", 132, 262144), ("softmax", 512, 262144),
         ("rmsnorm", 64, 262144), ("rmsnorm", 883, 151936), ("softmax", 883, 151936), ("softmax", 16, 262144),
         ("softmax", 8192, 50257), ("softmax", 4096, 32768)]  # fmt: skip
ARITY = {"softmax": 1, "rmsnorm": 2, "layernorm": 3}
EPS = {"layernorm": 1e-5, "rmsnorm": 1e-6, "softmax": 0.0}

lim = limits("cuda:0")
cc = torch.cuda.get_device_capability(0)
res = {"env": environment(), "copy_gbps": copy_gbps(), "sm_count": lim.sm_count, "cases": []}
for op, R, N in CASES:
    g = torch.Generator(device="cuda").manual_seed(R + N)
    args = [torch.randn(R, N, device="cuda", dtype=torch.bfloat16, generator=g)]
    args += [torch.randn(N, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(ARITY[op] - 1)]
    nbytes = 2 * R * N * 2 + (ARITY[op] - 1) * N * 2
    ref = torch_fn(op)(*[a.double() for a in args])
    ks, errs, waves = {}, {}, {}
    for base in configs(R, N, 2, lim.sm_count, lim.shared_mem_bytes, cc):
        for tail in (0, *[t for t in (2 * base["CL"], 4 * base["CL"], 8 * base["CL"]) if t <= 16]):
            cfg = {**base, **({"tail": tail} if tail else {})}
            key = json.dumps(cfg, sort_keys=True)
            try:
                k = cuda_rows.launcher(cfg, cuda_rows.OPS[op], EPS[op], "cuda:0")
                y = k(*args)
                torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001 (a config the device refuses: recorded)
                errs[key] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            err = float((y.double() - ref).norm() / ref.norm())
            errs[key] = err
            if err < 2e-2:
                ks[key] = k
            main = cuda_rows.layout(N, 2, base["CL"])[1]
            kern = k.last
            waves[key] = kern.resident(base["threads"], main, base["CL"]) // base["CL"] if kern is not None else None
    x = torch.empty(nbytes // 4, dtype=torch.bfloat16, device="cuda").uniform_()
    yc = torch.empty_like(x)
    ks["copy_same"] = lambda *a, yc=yc, x=x: yc.copy_(x)
    med = interleaved_gbps(ks, args, nbytes, rounds=7)
    cs = med.pop("copy_same")
    best = max(med.items(), key=lambda kv: kv[1]) if med else (None, 0.0)
    plain = {c: v for c, v in med.items() if "tail" not in json.loads(c)}
    bp = max(plain.items(), key=lambda kv: kv[1]) if plain else (None, 0.0)
    res["cases"].append({"op": op, "R": R, "N": N, "bytes": nbytes, "gbps": med, "copy_same_gbps": cs, "err": errs,
                         "rows_per_wave": waves, "best": best[0], "best_gbps": best[1], "best_plain": bp[0],
                         "best_plain_gbps": bp[1], "best_of_copy_same": best[1] / cs, "plain_of_copy_same": bp[1] / cs})  # fmt: skip
    print(f"{op} {R}x{N}: plain {bp[1]:.0f} ({bp[1] / cs:.1%} of same-size copy {cs:.0f}) {bp[0]}  "
          f"best {best[1]:.0f} ({best[1] / cs:.1%}) {best[0]}  rows/wave {waves.get(bp[0])}", flush=True)
    with open(os.path.join(OUT, f"diagnosis_twentieth_tail_{torch.cuda.get_device_name(0).split()[1].lower()}.json"),
              "w") as f:  # fmt: skip
        json.dump(res, f, indent=1)
