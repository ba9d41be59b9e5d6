"""Launch A/B in one process: the kernelParams array of ctypes values (fifteenth session) vs one
struct-packed buffer through ``extra`` (now), interleaved rounds; host us per launch."""
import json, os, tempfile, ctypes
os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
import torch
from uhop.backends import nvrtc, cuda_rows
from uhop.backends.triton_kernels.rowops import OPS
OUT = os.environ.get("OUT", "/tmp")

from hosttime import host_us  # noqa: E402 - the shared timing helper, beside this script

host = host_us

x = torch.randn(1, 32768, device="cuda", dtype=torch.bfloat16)
y = torch.empty_like(x)
res = {}
KINDS = {"p": ctypes.c_void_p, "i": ctypes.c_int, "q": ctypes.c_longlong, "f": ctypes.c_float}
for CL in (1, 8):
    cl = cuda_rows.launcher({"CL": CL, "threads": 512, "U": 2}, OPS["softmax"], 0.0, "cuda:0")
    cl(x); torch.cuda.synchronize()
    k = cl.last
    vpc, smem = cuda_rows.layout(32768, 2, CL)
    s = nvrtc.current_stream(0)
    args = (x.data_ptr(), y.data_ptr(), y.data_ptr(), y.data_ptr(), y.data_ptr(), y.data_ptr(), 32768, 0, vpc, 0.0, 1)
    vals = [KINDS[c]() for c in k.signature]
    params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
    sl = k._local.slots
    drv = nvrtc.driver()
    def old():
        nvrtc._current_context(0)
        for h, v in zip(vals, args, strict=True):
            h.value = v
        if CL == 1:
            nvrtc._cu_check(drv.cuLaunchKernel(k.func, 1, 1, 1, 512, 1, 1, smem, ctypes.c_void_p(s), params, None), "l")
        else:
            cfg = sl.cfg
            cfg.gridDimX, cfg.blockDimX, cfg.sharedMemBytes, cfg.hStream = CL, 512, smem, s
            sl.attr.value.cluster[0], sl.attr.value.cluster[1], sl.attr.value.cluster[2] = CL, 1, 1
            cfg.numAttrs = 1
            nvrtc._cu_check(drv.cuLaunchKernelEx(ctypes.byref(cfg), k.func, params, None), "l")
    new = lambda: k.launch(CL, 512, smem, s, args, cluster=CL)
    old(); new(); torch.cuda.synchronize()
    r = {"old": [], "new": [], "run": [], "eager": []}
    for _ in range(5):
        r["old"].append(host(old)); r["new"].append(host(new)); r["run"].append(host(lambda: cl(x)))
        r["eager"].append(host(lambda: torch.softmax(x, -1)))
    res[f"CL{CL}"] = {k_: round(sorted(v)[2], 2) for k_, v in r.items()}
    print(CL, res[f"CL{CL}"], flush=True)
json.dump(res, open(os.path.join(OUT, "diag3.json"), "w"), indent=1)
