"""The CUDA cluster row kernels (uhop.backends.cuda_rows) on a real GPU: every op, dtype and cluster
size against a float64 reference, at widths with a misaligned head and tail, on rows that start
at misaligned addresses, and through the backend's candidates. Skipped, with the reason, without
a CUDA GPU of compute capability 9 or newer (clusters are Hopper's)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from rowcheck import DEV, check, check_filtered, check_or_refused, filtered_logits, inputs, needs_hopper, ref  # noqa: E402

from uhop.backends.cuda_rows import OPS, launcher  # noqa: E402

pytestmark = [pytest.mark.gpu, needs_hopper]


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("CL", [1, 2, 4, 8])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "layernorm", "rmsnorm"])
def test_every_op_dtype_cluster(op, CL, dt):
    eps = 1e-5 if op == "layernorm" else 1e-6
    run = launcher({"CL": CL, "threads": 256, "U": 4}, OPS[op], eps, DEV)
    from uhop.backends.cuda_rows import layout
    from uhop.backends.triton_kernels import limits

    for R, N in ((3, 1), (5, 7), (4, 1000), (3, 50257), (2, 70001)):
        x, w, b = inputs(op, R, N, dt)
        check_or_refused(run, op, x, w, b, layout(N, x.element_size(), CL)[1], limits(DEV).shared_mem_bytes - 1024)


@pytest.mark.parametrize("op", ["layernorm", "rmsnorm"])
def test_new_weights_of_one_width_never_get_an_old_table(op):
    """One launcher, a misaligned width, each call with another weight tensor at the same address
    with version 0 and new values (what the caching allocator hands the next weight after a free;
    made deterministically with fresh ``.data`` views of one buffer): every call reads its own
    weights' shifted tables. Keyed on address and version alone, the second call read the first
    weight's table (how a first test, one launcher over R = 7 then 9 at N = 20011, failed)."""
    run = launcher({"CL": 1, "threads": 512, "U": 4}, OPS[op], 1e-5, DEV)
    mw, mb = (torch.empty(20011, device=DEV, dtype=torch.bfloat16) for _ in range(2))
    for R in (7, 9, 16, 17, 37):
        mw.data.normal_()
        mb.data.normal_()
        w, b = mw.data, (mb.data if op == "layernorm" else None)  # new objects: same addresses, version 0
        assert w._version == 0 and w.data_ptr() == mw.data_ptr()
        x = torch.randn(R, 20011, device=DEV, dtype=torch.bfloat16) * 3 + 0.5
        ref = torch.nn.functional.layer_norm(x.double(), (20011,), w.double(), b.double(), 1e-5) if op == "layernorm" \
            else torch.nn.functional.rms_norm(x.double(), (20011,), w.double(), 1e-5)
        check(run(x, w, b), ref, torch.bfloat16)
        del w, b


@pytest.mark.parametrize("op", ["layernorm", "rmsnorm"])
def test_norms_without_weight(op):
    run = launcher({"CL": 2, "threads": 512, "U": 2}, OPS[op], 1e-5 if op == "layernorm" else 1e-6, DEV)
    x, _, _ = inputs(op, 6, 50257, torch.bfloat16, with_w=False)
    check(run(x), ref(op, x, None, None), torch.bfloat16)


def test_misaligned_and_stridedinputs():
    """A view starting 2 bytes into an allocation, and a non-contiguous one: same result as a copy."""
    run = launcher({"CL": 4, "threads": 256, "U": 8}, OPS["layernorm"], 1e-5, DEV)
    base = torch.randn(5 * 30011 + 1, device=DEV, dtype=torch.bfloat16)
    x = base[1:].view(5, 30011)  # rows at odd element offsets, the first 2 bytes past a 16-byte line
    w = torch.randn(30011, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(30011, device=DEV, dtype=torch.bfloat16)
    check(run(x, w, b), ref("layernorm", x, w, b), torch.bfloat16)
    xt = torch.randn(40000, 6, device=DEV, dtype=torch.bfloat16).t()
    check(run(xt, w[:1].expand(40000).contiguous(), None), ref("layernorm", xt, w[:1].expand(40000), None),
           torch.bfloat16)  # fmt: skip


@pytest.mark.parametrize("op", ["softmax", "layernorm"])
def test_clusters_of_16(op):
    """The non-portable cluster size (the H100 and H200 run clusters of 16)."""
    run = launcher({"CL": 16, "threads": 256, "U": 4}, OPS[op], 1e-5, DEV)
    for R, N in ((3, 262144), (2, 100003)):
        x, w, b = inputs(op, R, N, torch.bfloat16)
        check(run(x, w, b), ref(op, x, w, b), torch.bfloat16)
    x, w, b = inputs(op, 6, 50000, torch.bfloat16)
    y = run(x.view(2, 3, 50000), w, b)  # 3-D input: rows over the leading dims
    assert y.shape == (2, 3, 50000)
    check(y.reshape(6, 50000), ref(op, x, w, b), torch.bfloat16)


def test_resident_ctas_follow_shared_memory():
    """``Kernel.resident``: one wave of a launch from the driver's occupancy calculator (what the
    diagnosis scripts report as rows per wave): a 100 KB row per CTA fits twice on a Hopper SM
    (228 KB), a cluster of 8 packs into GPCs."""
    from uhop.backends.cuda_rows import layout
    from uhop.backends.triton_kernels import limits

    sms = limits(DEV).sm_count
    for CL in (1, 8):
        run = launcher({"CL": CL, "threads": 512, "U": 4}, OPS["softmax"], 0.0, DEV)
        x, _, _ = inputs("softmax", 2, 50257, torch.bfloat16)
        run(x)
        n = run.last.resident(512, layout(50257, 2, CL)[1], CL)
        assert n % CL == 0 and 0 < n <= sms * 4, n
        if CL == 1:
            assert n == 2 * sms, n


def test_many_rows_and_extreme_values():
    """8192 rows of a GPT-2 vocabulary (the #20 case), with -inf entries and a large offset."""
    run = launcher({"CL": 1, "threads": 512, "U": 4}, OPS["softmax"], 0.0, DEV)
    x = torch.randn(8192, 50257, device=DEV, dtype=torch.bfloat16) * 4 + 100
    x[:, ::97] = float("-inf")
    check(run(x), ref("softmax", x, None, None), torch.bfloat16)


def test_backend_candidates_validate():
    """Every candidate the backend offers for a long-row problem passes UHOP's validation."""
    from uhop import backends as bk
    from uhop.measure.validate import ValidationSet, check_kernel
    from uhop.problem import Problem

    b = bk.get("cuda")
    assert b.available, b.availability
    for op, dims in (("softmax", {"R": 64, "N": 50257}), ("rmsnorm", {"R": 16, "N": 151936}),
                     ("log_softmax", {"R": 96, "N": 50257})):  # fmt: skip
        p = Problem.make(
            op, dims, "bfloat16", {"eps": 1e-6} if op == "rmsnorm" else {}, device=DEV, array="torch"
        )
        cands = b.candidates(p)
        assert cands, f"no candidates for {p}"
        vset = ValidationSet(p, trials=2)
        for c in cands:
            v = check_kernel(b.compile(c, p), vset, "torch", DEV, torch.cuda.synchronize)
            assert v.ok, f"{c.id} on {p.describe()}: {v.status} {v.reason}"


def test_captured_in_a_cuda_graph():
    """A launch on a capturing stream is recorded, and replays compute on the new contents."""
    run = launcher({"CL": 4, "threads": 256, "U": 4}, OPS["rmsnorm"], 1e-6, DEV)
    x, w, _ = inputs("rmsnorm", 8, 70001, torch.bfloat16)
    run(x, w)  # compile and load outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g, stream=s):
            y = run(x, w)
    torch.cuda.current_stream().wait_stream(s)
    x.copy_(torch.randn_like(x) * 2)
    g.replay()
    torch.cuda.synchronize()
    check(y, ref("rmsnorm", x, w, None), torch.bfloat16)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_rows_filtered_to_a_few_finite_logits(op):
    """Sampling after top-k: all but a few logits of each row are -inf, so whole 16-byte vectors
    (a thread's first ones included) are -inf; their exp2(-inf - -inf) once made the row NaN."""
    run = launcher({"CL": 2, "threads": 512, "U": 4}, OPS[op], 0.0, DEV)
    x = filtered_logits(64)
    check_filtered(op, run(x), x)
