"""CUDA graphs for backend="uhop" inference graphs: when a graph qualifies (on CPU: the graph
analysis), and on a GPU that replays match eager, outputs survive the next call, moved weights and
swapped kernels re-record, and a graph writing into a non-static input is left uncaptured."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from zoo import GPT2Block  # noqa: E402

import uhop  # noqa: E402
import uhop.compile  # noqa: E402,F401
from uhop.compile import REPORT, cudagraphs  # noqa: E402
from uhop.compile.backend import CompileOptions  # noqa: E402

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def _graph(fn, *inputs) -> torch.fx.GraphModule:
    got = []

    def grab(gm, example_inputs):
        got.append((gm, example_inputs))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=grab)(*inputs)
    return got[0]


def test_in_place_write_into_an_input_is_found_through_views():
    def f(x, y):
        x[:, :2].mul_(2)  # a write into x through a view
        return y + 1

    gm, ex = _graph(f, torch.randn(3, 4), torch.randn(3, 4))
    assert cudagraphs.mutated_inputs(gm) == {0}


def test_pure_graph_has_no_mutated_inputs_and_cpu_is_not_captured():
    gm, ex = _graph(lambda x: torch.relu(x) * 2, torch.randn(3, 4))
    assert cudagraphs.mutated_inputs(gm) == set()
    assert cudagraphs.why_not(gm, ex, training=False) == "not on CUDA"
    assert cudagraphs.why_not(gm, ex, training=True) == "autograd"


def test_option_and_environment(monkeypatch):
    assert CompileOptions.make({}).cudagraphs is True
    assert CompileOptions.make({"cudagraphs": False}).cudagraphs is False
    monkeypatch.setenv("UHOP_COMPILE_CUDAGRAPHS", "0")
    assert CompileOptions.make({}).cudagraphs is False
    with pytest.raises(ValueError, match="cudagraphs must be True or False"):
        CompileOptions.make({"cudagraphs": "yes"})


@pytest.mark.parametrize("rest", ["inductor", "eager"])
def test_runner_takes_the_calling_convention_dynamo_uses(rest):
    """Dynamo calls what a backend returns with the inputs as arguments, though aot_autograd's
    ``forward`` carries ``_boxed_call`` (copied from the boxed function it wraps)."""
    from torch._inductor.compile_fx import compile_fx

    runners = []

    def backend(gm, ex):
        r = cudagraphs.GraphRunner(compile_fx(gm, ex) if rest == "inductor" else gm.forward, ex)
        r.disabled = True  # no CUDA here: the runner only forwards
        runners.append(r)
        return r

    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, backend=backend)(x), m(x))
    assert runners[0].calls == 1 and not runners[0].boxed


def test_cpu_graph_report_does_not_mention_cuda_graphs():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    with torch.no_grad():
        torch.compile(m, backend="uhop", options={"rest": "eager"})(torch.randn(2, 8))
    assert REPORT.graphs[0].cudagraphs == "not on CUDA"
    assert "CUDA graphs" not in uhop.compile.report.format_graph(REPORT.graphs[0])


def _runner() -> cudagraphs.GraphRunner:
    """The runner of the last graph compiled."""
    return cudagraphs.RUNNERS[REPORT.graphs[-1].graph]


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpt2_block_replays_match_eager_and_outputs_survive_the_next_call(dtype):
    m = GPT2Block(64, 4).eval().cuda().to(dtype)
    x1, x2 = (torch.randn(2, 16, 64, device="cuda", dtype=dtype) for _ in range(2))
    c = torch.compile(m, backend="uhop")
    with torch.inference_mode():
        want1, want2 = m(x1), m(x2)
        c(x1)
        uhop.wait()
        outs = [c(x1), c(x2), c(x1), c(x2)]
        r = _runner()
        assert r.records >= 1 and r.graph is not None
        tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
        for got, want in zip(outs, [want1, want2, want1, want2], strict=True):
            torch.testing.assert_close(got, want, **tol)  # earlier outputs were not overwritten
    assert REPORT.graphs[-1].cudagraphs.startswith("on: replays ran ")  # the decision, with its measure


@gpu
def test_moved_weight_and_swapped_kernel_record_again():
    from uhop import dispatch

    m = nn.Sequential(nn.Linear(32, 32), nn.GELU()).eval().cuda()
    x = torch.randn(4, 32, device="cuda")
    c = torch.compile(m, backend="uhop")
    with torch.inference_mode():
        for _ in range(3):
            c(x)
        uhop.wait()
        c(x)
        r = _runner()
        n = r.records
        assert n >= 1
        dispatch._swaps[0] += 1  # as a background tuning's swap does
        c(x)
        assert r.records == n + 1
        m[0].weight = nn.Parameter(torch.randn(32, 32, device="cuda"))  # moved: re-record (or recompile)
        torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-4)


@gpu
def test_write_into_a_non_static_input_is_not_captured():
    def f(x, y):
        x.add_(1)
        return x * y

    x, y = torch.randn(8, device="cuda"), torch.randn(8, device="cuda")
    c = torch.compile(f, backend="uhop")
    x0 = x.clone()
    with torch.inference_mode():
        for _ in range(3):
            c(x, y)
    torch.testing.assert_close(x, x0 + 3)
    assert REPORT.graphs[-1].cudagraphs.startswith("writes into input")


@gpu
def test_gpu_gemm_and_conv_with_nothing_measured_stay_for_inductor_while_uhop_tunes():
    """On a GPU, a GEMM, conv or attention whose problem has nothing measured stays as written
    (the vendor kernel, through Inductor) while its problem tunes in the background; norms
    become regions at once."""
    from uhop.store import open_store

    m = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 64)).eval().cuda()
    x = torch.randn(4, 64, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(m, backend="uhop")(x), m(x), rtol=1e-4, atol=1e-4)
    regions = {r.kind: r.note for r in REPORT.graphs[0].regions}
    assert regions["layer_norm"] == ""
    assert "vendor kernel until UHOP measures" in regions["linear"]
    uhop.wait()
    assert any(e.op == "matmul" for e in open_store().entries())  # tuned for the next compile


@gpu
def test_callers_on_several_threads_and_streams_get_their_own_results():
    import threading

    m = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)).eval().cuda()
    c = torch.compile(m, backend="uhop")
    xs = [torch.randn(32, 64, device="cuda") for _ in range(4)]
    with torch.inference_mode():
        want = [m(x) for x in xs]
        for _ in range(3):
            c(xs[0])
        uhop.wait()
        errors = []

        def work(k: int) -> None:
            try:
                with torch.inference_mode(), torch.cuda.stream(torch.cuda.Stream()):
                    for _ in range(50):
                        got = c(xs[k])
                        torch.cuda.current_stream().synchronize()
                        torch.testing.assert_close(got, want[k], rtol=1e-4, atol=1e-4)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]


@gpu
def test_frozen_weights_changed_stop_the_replays(monkeypatch):
    """Under torch._inductor.config.freezing a recorded graph replays Inductor's frozen kernels;
    a weight updated in place afterwards stops the replays and the graph runs as written with the
    new weights (uhop.compile.frozen), instead of replaying the old constants."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "freezing", True)
    m = GPT2Block(64, 4).eval().cuda()
    x = torch.randn(2, 16, 64, device="cuda")
    c = torch.compile(m, backend="uhop")
    with torch.inference_mode():
        c(x)
        uhop.wait()
        for _ in range(3):
            c(x)
        r = _runner()
        torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.9)
    with torch.inference_mode(), pytest.warns(UserWarning, match="changed after it was frozen"):
        got = c(x)
    with torch.inference_mode():
        torch.testing.assert_close(got, m(x), rtol=1e-4, atol=1e-4)
        assert r.disabled and r.graph is None
        torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-4)
