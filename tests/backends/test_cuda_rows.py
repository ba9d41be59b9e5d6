"""The CUDA C++ row templates without a GPU: every specialization compiles for sm_90 with NVRTC
(the ``cuda`` extra's wheel on CPU machines), without spills, and keeps what the launcher relies
on; the backend's search space and its refusals. Running them is tests/gpu/test_cuda_rows_gpu.py."""

from __future__ import annotations

import re

import pytest

from uhop.backends import cuda_rows, nvrtc
from uhop.backends.cuda import configs

ok, why = nvrtc.available()
needs_nvrtc = pytest.mark.skipif(not ok, reason=f"NVRTC not loadable: {why} (pip install 'uhop[cuda]')")


@needs_nvrtc
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "layernorm", "rmsnorm"])
def test_every_specialization_compiles_without_spills(op, dtype, tmp_path, monkeypatch):
    monkeypatch.setenv("UHOP_HOME", str(tmp_path))
    from uhop import config

    config.reload()
    try:
        for CL in (1, 2, 8):
            for threads, U in ((256, 8), (512, 4)):  # what the backend offers
                has_w = op in ("layernorm", "rmsnorm")
                src = cuda_rows.source(cuda_rows.OPS[op], dtype, CL, threads, U, has_w, op == "layernorm")
                cubin, log = nvrtc.compile_cubin(
                    src, cuda_rows.NAME, "sm_90", (*cuda_rows.OPTIONS, "--ptxas-options=-v")
                )
                assert cuda_rows.NAME.encode() in cubin
                spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", log)]
                regs = [int(n) for n in re.findall(r"Used (\d+) registers", log)]
                assert spills and max(spills) == 0, log
                assert regs and max(regs) <= 65536 // threads, f"{regs} registers at {threads} threads"
        # the compiled cubin is reused from the disk cache: same bytes, no log
        again, log2 = nvrtc.compile_cubin(
            src, cuda_rows.NAME, "sm_90", (*cuda_rows.OPTIONS, "--ptxas-options=-v")
        )
        assert again == cubin and log2 == ""
    finally:
        config.reload()


@needs_nvrtc
def test_compile_error_reports_the_log(tmp_path, monkeypatch):
    monkeypatch.setenv("UHOP_HOME", str(tmp_path))
    from uhop import config

    config.reload()
    try:
        with pytest.raises(nvrtc.CudaError, match="undefined_thing"):
            nvrtc.compile_cubin('extern "C" __global__ void k() { undefined_thing(); }', "k", "sm_90")
        assert not list(tmp_path.glob("cuda/*.cubin"))  # nothing cached from a failed compile
    finally:
        config.reload()


def test_kernel_rejects_a_bad_signature():
    with pytest.raises(ValueError, match="signature"):
        nvrtc.kernel("", "k", 0, "pz")
    assert len(cuda_rows.SIGNATURE) == cuda_rows.SOURCE.split("uhop_rows(")[1].split(")")[0].count(",") + 1


def test_source_rejects_bad_configs():
    for kw, match in (({"CL": 3}, "CL"), ({"threads": 100}, "threads"), ({"U": 16}, "U")):
        args = {
            "op": 0,
            "dtype": "bfloat16",
            "CL": 2,
            "threads": 256,
            "U": 4,
            "has_w": False,
            "has_b": False,
            **kw,
        }
        with pytest.raises(ValueError, match=match):
            cuda_rows.source(**args)


def test_operands_follow_the_op_and_arity():
    ops = cuda_rows.OPS
    assert cuda_rows.operands(ops["softmax"], 1) == (False, False)
    assert cuda_rows.operands(ops["rmsnorm"], 2) == (True, False)
    assert cuda_rows.operands(ops["layernorm"], 3) == (True, True)
    assert cuda_rows.operands(ops["layernorm"], 1) == (False, False)


def test_layout_covers_the_aligned_body():
    for N in (16385, 50257, 151936, 262144):
        for item in (2, 4):
            for CL in (1, 2, 4, 8):
                vpc, smem = cuda_rows.layout(N, item, CL)
                ve = 16 // item
                assert vpc * CL * ve >= (N // ve) * ve  # every whole vector of the row has a CTA
                assert smem == max(16, vpc * 16)


def test_search_space():
    h100 = dict(sm=132, smem_max=232448, cc=(9, 0))
    # many rows: the smallest cluster whose chunks let two CTAs share an SM, first
    c = configs(8192, 50257, 2, **h100)
    assert c[0]["CL"] == 1 and len(c) <= 4 and len({tuple(sorted(d.items())) for d in c}) == len(c)
    # too wide for one CTA's shared memory: only clusters that fit
    c = configs(883, 262144, 2, **h100)
    assert all(cuda_rows.layout(262144, 2, d["CL"])[1] <= 232448 - 1024 for d in c) and c[0]["CL"] >= 4
    # few rows: spread over the SMs
    assert configs(16, 262144, 2, **h100)[0]["CL"] == 8
    # before Hopper: no clusters
    assert {d["CL"] for d in configs(8192, 50257, 2, sm=108, smem_max=166912, cc=(8, 0))} == {1}
    # a row no cluster holds: nothing offered
    assert configs(4, 8_000_000, 4, **h100) == []


def test_backend_declines_without_a_gpu():
    torch = pytest.importorskip("torch")
    from uhop import backends as bk
    from uhop.problem import Problem

    b = bk.get("cuda")
    if not torch.cuda.is_available():
        assert not b.available and "CUDA" in b.availability[1]
    p = Problem.make("softmax", {"R": 8, "N": 50257}, "bfloat16", device="cpu", array="torch")
    assert not b.supports(p)  # CUDA devices only
    p = Problem.make("softmax", {"R": 8, "N": 4096}, "bfloat16", device="cuda:0", array="torch")
    assert not b.supports(p)  # few rows one Triton program holds each are not its business
    p = Problem.make("softmax", {"R": 4096, "N": 11008}, "bfloat16", device="cuda:0", array="torch")
    assert b.supports(p)  # many rows of 4K-56K: the bulk-copy pipeline (cuda_pipe)
    p = Problem.make("softmax", {"R": 8, "N": 50257}, "float32", device="cuda:0", array="torch")
    assert not b.supports(p)  # float32: Triton's split led on the H100
    p = Problem.make("rmsnorm", {"R": 8, "N": 50257}, "bfloat16", {"eps": 1e-6}, device="cuda:0", array="torch")
    assert b.supports(p)


def test_launch_parameters_pack_as_the_kernels_parameter_block():
    """One buffer, laid out as the C struct of uhop_rows's parameters (natural alignment: the
    int64 after an int32 starts 8 bytes in, not 4), handed to the driver through ``extra``."""
    import ctypes
    import struct

    class Params(ctypes.Structure):  # uhop_rows(x, y, w, b, wt, bt, int N, long long wrow, int vpc, float eps)
        _fields_ = [*((n, ctypes.c_void_p) for n in ("x", "y", "w", "b", "wt", "bt")), ("N", ctypes.c_int),
                    ("wrow", ctypes.c_longlong), ("vpc", ctypes.c_int), ("eps", ctypes.c_float)]  # fmt: skip

    s = nvrtc._Slots(cuda_rows.SIGNATURE)
    args = (0x7F0000001000, 0x7F0000002000, 16, 32, 48, 64, 50257, 50264, 786, 1e-5)
    s.fmt.pack_into(s.buf, 0, *args)
    ref = Params(*args)
    assert s.size.value == ctypes.sizeof(ref) == 72
    assert bytes(s.buf)[:72] == bytes(ref)
    extra = list(s.extra)
    assert extra[0] == 1 and extra[1] == ctypes.addressof(s.buf) and extra[2] == 2 and extra[4] is None
    assert struct.unpack_from("@Q", (ctypes.c_char * 8).from_address(extra[3]))[0] == 72
