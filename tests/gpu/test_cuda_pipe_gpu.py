"""The bulk-copy pipeline row kernels (uhop.backends.cuda_pipe) on a real GPU: every op and dtype
against a float64 reference, at widths with a misaligned head and tail (rows starting at every
offset mod 16 bytes), with fewer rows than CTAs, more, and not a multiple of the grid, and through
the CUDA backend's candidates. Skipped, with the reason, without a CUDA GPU of compute capability
9 or newer (bulk asynchronous copies are Hopper's)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from rowcheck import DEV, check, check_filtered, check_or_refused, filtered_logits, inputs, needs_hopper, ref  # noqa: E402

from uhop.backends.cuda_pipe import OPS, launcher, layout, weights_in_smem  # noqa: E402
from uhop.backends.triton_kernels import limits  # noqa: E402

pytestmark = [pytest.mark.gpu, needs_hopper]


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "layernorm", "rmsnorm"])
def test_every_op_dtype_width(op, dt):
    eps = 1e-5 if op == "layernorm" else 1e-6
    sm = torch.cuda.get_device_properties(0).multi_processor_count
    # weights in shared memory on aligned widths (the default), and read per row (wsm 0)
    for cfg in ({"threads": 256, "S": 4, "ctas": 2}, {"threads": 512, "S": 2, "ctas": 1, "wsm": 0}):
        run = launcher(cfg, OPS[op], eps, DEV)
        # 1 row; fewer rows than CTAs; more rows than stages x CTAs, not a multiple of the grid
        for R, N in ((1, 7), (5, 1000), (3, 4097), (2 * sm * 4 + 3, 1000), (2 * sm + 5, 11008), (sm + 1, 50257)):
            x, w, b = inputs(op, R, N, dt)
            wsm = weights_in_smem(cfg, x.element_size(), N, w is not None, b is not None)
            smem = layout(N, x.element_size(), cfg["S"], (w is not None) + (b is not None) if wsm else 0)[1]
            check_or_refused(run, op, x, w, b, smem, limits(DEV).shared_mem_bytes - 1024)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "layernorm", "rmsnorm"])
def test_rows_held_by_clusters(op, dt):
    """Rows split over a cluster's CTAs (``CL``), partial statistics exchanged through DSMEM, the
    next rows' copies in flight: widths with a misaligned head and tail, rows fewer than the
    clusters, and many per cluster (each CTA's two partial slots reused), 16-CTA clusters too."""
    eps = 1e-5 if op == "layernorm" else 1e-6
    for cfg in ({"CL": 4, "threads": 512, "S": 3}, {"CL": 16, "threads": 256, "S": 3, "wsm": 0},
                {"CL": 2, "threads": 256, "S": 2}):  # fmt: skip
        run = launcher(cfg, OPS[op], eps, DEV)
        for R, N in ((1, 7), (5, 1000), (3, 4097), (97, 16400), (70, 50257), (41, 151936)):
            x, w, b = inputs(op, R, N, dt)
            wsm = weights_in_smem(cfg, x.element_size(), N, w is not None, b is not None)
            vec = (w is not None) + (b is not None) if wsm else 0
            smem = layout(N, x.element_size(), cfg["S"], vec, cfg["CL"])[1]
            check_or_refused(run, op, x, w, b, smem, limits(DEV).shared_mem_bytes - 1024)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_cluster_rows_filtered_to_a_few_finite_logits(op):
    """Top-k filtered rows: most CTAs of a cluster see only -inf, one or two the finite logits."""
    run = launcher({"CL": 4, "threads": 512, "S": 3}, OPS[op], 0.0, DEV)
    x = filtered_logits(600)
    check_filtered(op, run(x), x)


def test_backend_offers_cluster_pipe_candidates_for_long_rows():
    from uhop.backends.cuda import CudaBackend
    from uhop.problem import Problem

    be = CudaBackend()
    for op, arity in (("softmax", None), ("rmsnorm", 2)):
        p = Problem.make(op, {"R": 883, "N": 151936}, "bfloat16", {"eps": 1e-6} if arity else {}, arity, "", DEV, "torch")
        cands = [c for c in be.candidates(p) if c.template == "pipe"]
        assert cands and all(c.cfg["CL"] > 1 for c in cands), be.candidates(p)
        x, w, b = inputs(op, 883, 151936, torch.bfloat16)
        for c in cands:
            k = be.compile(c, p)
            y = k(x) if arity is None else k(x, w)
            check(y, ref(op, x, w if arity else None, None), torch.bfloat16)


def test_rows_that_start_misaligned_and_3d_inputs():
    run = launcher({"threads": 256, "S": 3, "ctas": 2}, OPS["softmax"], 0.0, DEV)
    big = torch.randn(300 * 4099 + 5, device=DEV, dtype=torch.bfloat16)
    x = big[5:].view(300, 4099)  # starts 10 bytes into a 16-byte line: the launcher copies it
    check(run(x), torch.softmax(x.double(), -1), torch.bfloat16)
    x3 = torch.randn(4, 70, 5003, device=DEV, dtype=torch.float16)
    check(run(x3), torch.softmax(x3.double(), -1), torch.float16)


def test_special_values_stay_finite_where_the_reference_is():
    run = launcher({"threads": 512, "S": 2, "ctas": 2}, OPS["softmax"], 0.0, DEV)
    x = torch.randn(600, 11008, device=DEV, dtype=torch.bfloat16)
    x[0] = -float("inf")
    x[0, 17] = 0.0  # one finite value: probability 1 there
    x[1] = 1e4  # large equal values: uniform
    y = run(x)
    assert y[0, 17].item() == 1.0 and y[0].sum().item() == 1.0
    torch.testing.assert_close(y[1].float(), torch.full((11008,), 1 / 11008, device=DEV), rtol=2e-2, atol=1e-6)
    check(y[2:], torch.softmax(x[2:].double(), -1), torch.bfloat16)


def test_backend_offers_and_serves_pipe_candidates():
    from uhop.backends.cuda import CudaBackend
    from uhop.problem import Problem

    be = CudaBackend()
    p = Problem.make("softmax", {"R": 4096, "N": 11008}, "bfloat16", {}, None, "", DEV, "torch")
    cands = [c for c in be.candidates(p) if c.template == "pipe"]
    assert cands, be.candidates(p)
    x = torch.randn(4096, 11008, device=DEV, dtype=torch.bfloat16)
    for c in cands:
        k = be.compile(c, p)
        check(k(x), torch.softmax(x.double(), -1), torch.bfloat16)


def test_backend_offers_layernorm_pipe_candidates_with_weights_in_smem():
    """Layernorm's candidates (two CTAs of three stages each with the weight and bias held in
    shared memory: 2 x 5 rows of 22 KB) against float64."""
    from uhop.backends.cuda import CudaBackend
    from uhop.problem import Problem

    be = CudaBackend()
    p = Problem.make("layernorm", {"R": 4096, "N": 11008}, "bfloat16", {"eps": 1e-5}, 3, "", DEV, "torch")
    cands = [c for c in be.candidates(p) if c.template == "pipe"]
    assert cands, be.candidates(p)
    x, w, b = inputs("layernorm", 4096, 11008, torch.bfloat16)
    for c in cands:
        k = be.compile(c, p)
        check(k(x, w, b), ref("layernorm", x, w, b), torch.bfloat16)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_rows_filtered_to_a_few_finite_logits(op):
    """Sampling after top-k: all but a few logits of each row are -inf (whole vectors of them)."""
    run = launcher({"threads": 512, "S": 2, "ctas": 1}, OPS[op], 0.0, DEV)
    x = filtered_logits(600)
    check_filtered(op, run(x), x)
