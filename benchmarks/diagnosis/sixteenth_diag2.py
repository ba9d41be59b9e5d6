"""Session 16 check 2: the repacked cluster launch (host us), empty variants, GPU tests of the cuda
rows, the chain kernel as generated now vs Inductor, rowsum with and without evict_first."""
import json, os, tempfile, threading, importlib.util
os.environ.setdefault("UHOP_HOME", tempfile.mkdtemp())
import torch, triton
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
A["torch_empty_like"] = host(lambda: torch.empty_like(x))
A["new_empty"] = host(lambda: x.new_empty((1, 32768)))
for CL in (1, 8):
    cl = cuda_rows.launcher({"CL": CL, "threads": 512, "U": 2}, OPS["softmax"], 0.0, "cuda:0")
    assert torch.allclose(cl(x).float(), torch.softmax(x.float(), -1), atol=1e-3)
    A[f"cluster{CL}_run"] = host(lambda: cl(x))
    k = cl.last
    vpc, smem = cuda_rows.layout(32768, 2, CL)
    s = nvrtc.current_stream(0)
    args = (x.data_ptr(), y.data_ptr(), y.data_ptr(), y.data_ptr(), y.data_ptr(), y.data_ptr(), 32768, 0, vpc, 0.0)
    A[f"cluster{CL}_launch"] = host(lambda: k.launch(CL, 512, smem, s, args, cluster=CL))
    # from a fresh thread: no context current there (the first-launch path), and after another is set
    out = {}
    def t():
        try:
            out["y"] = cl(x); torch.cuda.synchronize()
        except Exception as e:
            out["err"] = repr(e)
    th = threading.Thread(target=t); th.start(); th.join()
    A[f"cluster{CL}_thread_ok"] = "err" not in out and torch.allclose(out["y"].float(), torch.softmax(x.float(), -1), atol=1e-3)
    if "err" in out: A[f"cluster{CL}_thread_err"] = out["err"]
res["host_us"] = A
print(json.dumps(A, indent=1), flush=True)

from uhop.ops import expr as ex
from uhop.backends.triton_kernels import elementwise as ew
import uhop
n = 64 * 2**20
x0 = torch.randn(n, device="cuda", dtype=torch.bfloat16); x1 = torch.randn(n, device="cuda", dtype=torch.bfloat16)
f = lambda a, b: torch.nn.functional.gelu(a) * b + 0.5 * a
cf = torch.compile(f)
kern = ew.load_kernel(ex.parse("gelu(x0)*x1+0.5*x0"), 2)
out = torch.empty_like(x0)
ref = f(x0.float(), x1.float())
V = {"inductor": lambda: cf(x0, x1)}
for B, W in ((1024, 4), (2048, 4), (2048, 8)):
    V[f"uhop_{B}_{W}"] = (lambda B=B, W=W: kern[(n // B,)](x0, x1, out, n, n, BLOCK=B, EVEN=True, WIDE=False, LOOP=False, num_warps=W))
# rowsum: generated source with and without evict_first, 2D (R, C) reductions as the sweep's
src = ew.generate(ex.parse("x0*sigmoid(x0)"), 1, "", "sum")
mods = {}
for tag, s_ in (("ev", src), ("noev", src.replace(", eviction_policy='evict_first'", ""))):
    pth = os.path.join(tempfile.mkdtemp(), f"rs_{tag}.py"); open(pth, "w").write(s_)
    sp = importlib.util.spec_from_file_location(f"rs_{tag}", pth); m = importlib.util.module_from_spec(sp); sp.loader.exec_module(m)
    mods[tag] = m.ewr
R_C = [(16384, 4096), (2048, 50257)]
rs_in = {rc: torch.randn(rc, device="cuda", dtype=torch.bfloat16) for rc in R_C}
rs_out = {rc: torch.empty(rc[0], device="cuda", dtype=torch.bfloat16) for rc in R_C}
from uhop.backends.triton_kernels import limits
for rc in R_C:
    r, c = rc
    xx = rs_in[rc]
    V[f"rowsum_compile_{r}x{c}"] = (lambda xx=xx, g=torch.compile(lambda t: (t * torch.sigmoid(t)).sum(-1)): g(xx))
    for tag, kk in mods.items():
        for elems, warps in ((2048, 4), (4096, 8)):
            block = min(triton.next_power_of_2(c), elems); rows = max(1, elems // block)
            V[f"rowsum_{tag}_{r}x{c}_{elems}_{warps}"] = (lambda kk=kk, xx=xx, o=rs_out[rc], r=r, c=c, rows=rows, block=block, warps=warps:
                kk[(triton.cdiv(r, rows), 1)](xx, o, r, c, c, ROWS=rows, BLOCK=block, PARTIAL=False, num_warps=warps))
for k_, v in V.items():
    v()
torch.cuda.synchronize()
got = cf(x0, x1); assert (got.float() - ref).abs().max() < 0.1
times = {k_: [] for k_ in V}
for rnd in range(5):
    for k_, v in V.items():
        times[k_].append(do_bench(v, warmup=25, rep=100))
def gb(k_, ms):
    if k_.startswith("rowsum"):
        r, c = map(int, k_.split("_")[2].split("x")); return r * c * 2 / (ms * 1e-3) / 1e9
    return 3 * n * 2 / (ms * 1e-3) / 1e9
Bm = {k_: {"ms_med": round(sorted(t)[2], 5), "GBps": round(gb(k_, sorted(t)[2]))} for k_, t in times.items()}
res["bench"] = Bm
print(json.dumps(Bm, indent=1), flush=True)
json.dump(res, open(os.path.join(OUT, "diag2.json"), "w"), indent=1)
