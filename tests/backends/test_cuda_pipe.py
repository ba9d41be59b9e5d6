"""The bulk-copy pipeline row kernels (uhop.backends.cuda_pipe) without a GPU: every specialization
compiles for sm_90 with NVRTC without spills, the launch signature matches the kernel's parameters,
bad configs are refused, and the search space keeps its stages inside an SM's shared memory.
Running them is tests/gpu/test_cuda_pipe_gpu.py."""

from __future__ import annotations

import re

import pytest

from uhop.backends import cuda_pipe, nvrtc

ok, why = nvrtc.available()
needs_nvrtc = pytest.mark.skipif(not ok, reason=f"NVRTC not loadable: {why} (pip install 'uhop[cuda]')")
H100 = dict(sm=132, smem_max=232448, cc=(9, 0))


@needs_nvrtc
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "layernorm", "rmsnorm"])
def test_every_specialization_compiles_without_spills(op, dtype):
    # (the cubins land in this test's own UHOP_HOME: tests/conftest.py)
    for threads, S, wsm, CL in ((256, 4, True, 1), (512, 2, False, 1), (512, 8, True, 1), (512, 3, True, 4), (256, 3, False, 16)):
        has_w = op in ("layernorm", "rmsnorm")
        src = cuda_pipe.source(cuda_pipe.OPS[op], dtype, threads, S, has_w, op == "layernorm", wsm, CL)
        assert f"#define CL {CL}" in src
        assert ("#define WSM 1" in src) == (wsm and has_w)
        cubin, log = nvrtc.compile_cubin(src, cuda_pipe.NAME, "sm_90", (*cuda_pipe.OPTIONS, "--ptxas-options=-v"))
        assert cuda_pipe.NAME.encode() in cubin
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", log)]
        regs = [int(n) for n in re.findall(r"Used (\d+) registers", log)]
        assert spills and max(spills) == 0, log
        assert regs and max(regs) <= 65536 // (2 * threads), f"{regs} registers at {threads} threads"


def test_signature_matches_the_kernels_parameters():
    params = cuda_pipe.KERNEL.split("uhop_rows_pipe(")[1].split(")")[0]
    assert len(cuda_pipe.SIGNATURE) == params.count(",") + 1
    kinds = {"p": "*", "i": "int ", "q": "long long ", "f": "float "}
    for code, decl in zip(cuda_pipe.SIGNATURE, params.split(","), strict=True):
        assert kinds[code] in decl, (code, decl)


def test_source_rejects_bad_configs():
    for kw, match in (({"threads": 100}, "threads"), ({"S": 1}, "S"), ({"S": 9}, "S"), ({"dtype": "int8"}, "dtype"),
                      ({"CL": 3}, "CL"), ({"CL": 32}, "CL")):  # fmt: skip
        args = {"op": 0, "dtype": "bfloat16", "threads": 256, "S": 4, "has_w": False, "has_b": False, **kw}
        with pytest.raises(ValueError, match=match):
            cuda_pipe.source(**args)


@pytest.mark.parametrize(
    ("R", "N", "item"),
    [(12192, 11008, 2), (8192, 50257, 2), (2670, 50257, 2), (4096, 32768, 2), (32768, 4096, 2), (4096, 16400, 4)],
)
@pytest.mark.parametrize("vectors", [0, 2])
def test_configs_fit_an_sm_and_prefetch(R, N, item, vectors):
    cfgs = cuda_pipe.configs(R, N, item, **H100, vectors=vectors)
    one = cuda_pipe.layout(N, item, 1)[1]
    if (H100["smem_max"] - 1024) // one - vectors < 2:  # two rows besides a weight and a bias do not fit
        assert cfgs == []
        return
    assert len(cfgs) == 2
    for c in cfgs:
        assert c["S"] >= 2 and c["threads"] in (256, 512)
        assert c["ctas"] * (c["S"] + vectors) * one <= cuda_pipe.SM_SMEM  # every CTA of an SM resident at once
        assert cuda_pipe.layout(N, item, c["S"], vectors)[1] <= H100["smem_max"] - 1024
        assert R >= 2 * c["ctas"] * H100["sm"]  # every CTA has a row to prefetch behind its first


def test_configs_as_measured():
    """The H200's best first where six stages fit an SM (11008), one CTA where two or three do (50257)."""
    assert cuda_pipe.configs(12192, 11008, 2, **H100) == [{"threads": 256, "S": 3, "ctas": 2}, {"threads": 512, "S": 3, "ctas": 1}]
    assert cuda_pipe.configs(12192, 11008, 2, **H100, vectors=2)[0] == {"threads": 256, "S": 3, "ctas": 2}  # 2 x 5 x 22 KB
    assert cuda_pipe.configs(8192, 50257, 2, **H100) == [{"threads": 256, "S": 2, "ctas": 1}, {"threads": 512, "S": 2, "ctas": 1}]


def test_configs_decline_what_cannot_pipeline():
    assert cuda_pipe.configs(2048, 50257, 4, **H100) == []  # two 200 KB stages do not fit
    assert cuda_pipe.configs(100, 11008, 2, **H100) == []  # fewer rows than two per SM
    assert cuda_pipe.configs(12192, 11008, 2, sm=132, smem_max=232448, cc=(8, 0)) == []  # no bulk copies


def test_layout_holds_a_rows_aligned_body():
    for N in (4096, 4097, 11008, 50257):
        for item in (2, 4):
            bufv, smem = cuda_pipe.layout(N, item, 3)
            ve = 16 // item
            assert bufv * ve >= N - (N % ve) and bufv % 8 == 0 and smem == 3 * bufv * 16


def test_weights_in_shared_memory_on_aligned_rows_only():
    cfg = {"threads": 512, "S": 3, "ctas": 1}
    assert cuda_pipe.weights_in_smem(cfg, 2, 11008, True, True)
    assert not cuda_pipe.weights_in_smem(cfg, 2, 50257, True, False)  # misaligned: shifted tables
    assert not cuda_pipe.weights_in_smem(cfg, 2, 11008, False, False)  # softmax: nothing to hold
    assert not cuda_pipe.weights_in_smem({**cfg, "wsm": 0}, 2, 11008, True, True)
    assert cuda_pipe.layout(11008, 2, 3, 2)[1] == 5 * cuda_pipe.layout(11008, 2, 1)[1]


@pytest.mark.parametrize(("R", "N", "item", "vectors"), [(883, 151936, 2, 0), (512, 262144, 2, 0), (132, 262144, 2, 0),
                                                         (64, 262144, 2, 1), (2670, 50257, 2, 2), (2048, 50257, 4, 0)])  # fmt: skip
def test_cluster_configs_hold_three_stages_and_prefetch(R, N, item, vectors):
    cfgs = cuda_pipe.cluster_configs(R, N, item, **H100, vectors=vectors)
    assert cfgs
    for c in cfgs:
        per_sm = 2 if c["threads"] == 256 else 1
        smem = cuda_pipe.layout(N, item, c["S"], vectors, c["CL"])[1]
        assert c["S"] == 3 and c["CL"] in (2, 4, 8, 16)
        assert per_sm * smem <= cuda_pipe.SM_SMEM and smem <= H100["smem_max"] - 1024
        assert c["CL"] == 2 or per_sm * cuda_pipe.layout(N, item, 3, vectors, c["CL"] // 2)[1] > cuda_pipe.SM_SMEM  # the smallest
        assert R >= 2 * (per_sm * H100["sm"] // c["CL"])  # a second row per cluster to prefetch
    # one CTA per SM first, then two
    assert cfgs[0]["threads"] == 512


def test_cluster_configs_as_chosen():
    assert cuda_pipe.cluster_configs(883, 151936, 2, **H100) == [{"CL": 4, "threads": 512, "S": 3}, {"CL": 8, "threads": 256, "S": 3}]
    assert cuda_pipe.cluster_configs(16, 262144, 2, **H100) == []  # a row per cluster: nothing to prefetch
    assert cuda_pipe.cluster_configs(883, 151936, 2, sm=132, smem_max=232448, cc=(8, 0)) == []


def test_a_clusters_shares_cover_the_row():
    for N, item, CL in ((151936, 2, 4), (262144, 2, 16), (50257, 2, 2), (7, 2, 4), (16400, 4, 8)):
        vpc = cuda_pipe.share(N, item, CL)
        assert (CL - 1) * vpc < max(1, N // (16 // item)) <= CL * vpc or N // (16 // item) == 0
        assert cuda_pipe.layout(N, item, 1, 0, CL)[0] >= vpc
