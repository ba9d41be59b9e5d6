"""Session 16 diagnosis: host launch cost breakdown (cluster ctypes path, Triton JIT vs direct
CompiledKernel.run), and the 64M gelu chain: UHOP's generated kernel vs a straight-line variant vs
Inductor. Results to $OUT/diag.json."""
import json, os, tempfile
os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
import torch, triton, triton.language as tl
from triton.testing import do_bench
OUT = os.environ.get("OUT", "/tmp")
res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}

from hosttime import host_us  # noqa: E402 - the shared timing helper, beside this script

def host(fn, n=3000):
    return round(host_us(fn, n), 2)

from uhop.backends import nvrtc, cuda_rows
from uhop.backends.triton_kernels.rowops import OPS
x = torch.randn(1, 32768, device="cuda", dtype=torch.bfloat16)
y = torch.empty_like(x)
A = {}
A["eager_softmax"] = host(lambda: torch.softmax(x, -1))
A["torch_empty"] = host(lambda: torch.empty((1, 32768), device=x.device, dtype=x.dtype))
A["current_stream"] = host(lambda: nvrtc.current_stream(0))
A["current_context"] = host(lambda: nvrtc._current_context(0))
A["data_ptr"] = host(lambda: x.data_ptr())
for CL in (1, 2, 8):
    cl = cuda_rows.launcher({"CL": CL, "threads": 512, "U": 2}, OPS["softmax"], 0.0, "cuda:0")
    cl(x); torch.cuda.synchronize()
    assert torch.allclose(cl(x).float(), torch.softmax(x.float(), -1), atol=1e-3)
    A[f"cluster{CL}_run"] = host(lambda: cl(x))
    k = cl.last
    vpc, smem = cuda_rows.layout(32768, 2, CL)
    s = nvrtc.current_stream(0)
    args = (x.data_ptr(), y.data_ptr(), y.data_ptr(), y.data_ptr(), y.data_ptr(), y.data_ptr(), 32768, 0, vpc, 0.0)
    A[f"cluster{CL}_launch"] = host(lambda: k.launch(CL, 512, smem, s, args, cluster=CL))
    A[f"cluster{CL}_layout"] = host(lambda: cuda_rows.layout(32768, 2, CL))
    # the driver floor: one prebuilt cuLaunchKernelEx / cuLaunchKernel, no Python packing
    import ctypes
    sl = k._local.slots
    drv = nvrtc.driver()
    if CL == 1:
        f = lambda: drv.cuLaunchKernel(k.func, 1, 1, 1, 512, 1, 1, smem, ctypes.c_void_p(s), sl.params, None)
    else:
        cfgp = ctypes.byref(sl.cfg)
        f = lambda: drv.cuLaunchKernelEx(cfgp, k.func, sl.params, None)
    A[f"cluster{CL}_driver_only"] = host(f)

@triton.jit
def _copy(x_ptr, y_ptr, n, scale, BLOCK: tl.constexpr, EVEN: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if EVEN:
        tl.store(y_ptr + offs, tl.load(x_ptr + offs) * scale)
    else:
        m = offs < n
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m) * scale, mask=m)

xf = torch.randn(32768, device="cuda"); yf = torch.empty_like(xf)
ck = _copy[(32,)](xf, yf, 32768, 2.0, BLOCK=1024, EVEN=True, num_warps=4)
A["triton_jit"] = host(lambda: _copy[(32,)](xf, yf, 32768, 2.0, BLOCK=1024, EVEN=True, num_warps=4))
try:
    from triton import knobs
    eh, xh = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
except Exception:
    eh = xh = None
fn, md = ck.function, ck.packed_metadata
def direct():
    ck.run(32, 1, 1, s, fn, md, None, eh, xh, xf, yf, 32768, 2.0, 1024, True)
direct(); torch.cuda.synchronize(); assert torch.allclose(yf, 2 * xf)
A["triton_direct"] = host(direct)
A["triton_direct_with_stream_lookup"] = host(lambda: ck.run(32, 1, 1, nvrtc.current_stream(0), fn, md, None, eh, xh, xf, yf, 32768, 2.0, 1024, True))
res["host_us"] = A
print(json.dumps(A, indent=1), flush=True)

# ---- the chain
from uhop.ops import expr as ex
from uhop.backends.triton_kernels import elementwise as ew
n = 64 * 2**20
x0 = torch.randn(n, device="cuda", dtype=torch.bfloat16); x1 = torch.randn(n, device="cuda", dtype=torch.bfloat16)
f = lambda a, b: torch.nn.functional.gelu(a) * b + 0.5 * a
cf = torch.compile(f)
from torch._inductor.utils import run_and_get_code
_, codes = run_and_get_code(cf, x0, x1)
open(os.path.join(OUT, "inductor_chain.py"), "w").write("\n\n#####\n\n".join(codes))
kern = ew.load_kernel(ex.parse("gelu(x0)*x1+0.5*x0"), 2)

@triton.jit
def _straight(x0_ptr, x1_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    a = tl.load(x0_ptr + offs, eviction_policy='evict_first').to(tl.float32)
    b = tl.load(x1_ptr + offs, eviction_policy='evict_first').to(tl.float32)
    r = (0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))) * b + 0.5 * a
    tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty))

@triton.jit
def _straight_noev(x0_ptr, x1_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    a = tl.load(x0_ptr + offs).to(tl.float32)
    b = tl.load(x1_ptr + offs).to(tl.float32)
    r = (0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))) * b + 0.5 * a
    tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty))

out = torch.empty_like(x0)
ref = f(x0.float(), x1.float())
variants = {"inductor": lambda: cf(x0, x1), "eager": lambda: f(x0, x1), "copy": lambda: out.copy_(x0)}
for B, W in ((1024, 4), (2048, 4), (4096, 8), (2048, 8)):
    variants[f"uhop_loop_{B}_{W}"] = (lambda B=B, W=W: kern[(n // B,)](x0, x1, out, n, n, BLOCK=B, EVEN=True, WIDE=False, num_warps=W))
    variants[f"straight_{B}_{W}"] = (lambda B=B, W=W: _straight[(n // B,)](x0, x1, out, BLOCK=B, num_warps=W))
    variants[f"straight_noev_{B}_{W}"] = (lambda B=B, W=W: _straight_noev[(n // B,)](x0, x1, out, BLOCK=B, num_warps=W))
for k_, v in variants.items():
    r = v()
    if k_ not in ("copy",):
        got = (r if r is not None and k_ in ("inductor", "eager") else out).float()
        err = (got - ref).abs().max().item()
        assert err < 0.1, (k_, err)
times = {k_: [] for k_ in variants}
for rnd in range(5):
    for k_, v in variants.items():
        times[k_].append(do_bench(v, warmup=25, rep=100))
B = {k_: {"ms_med": sorted(t)[2], "GBps": round((2 if k_ == "copy" else 3) * n * 2 / (sorted(t)[2] * 1e-3) / 1e9)} for k_, t in times.items()}
res["chain_64m_bf16"] = B
print(json.dumps(B, indent=1), flush=True)
json.dump(res, open(os.path.join(OUT, "diag.json"), "w"), indent=1)
