"""Direct launches of compiled Triton kernels (uhop.backends.triton_kernels.launch) on a GPU: the
same results as the JIT call across every specialization Triton makes (pointer alignment, ints of
1 / multiples of 16 / others, dtypes, constexprs), on side streams and under CUDA-graph capture;
one compiled kernel per specialization. Skipped without a CUDA GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

from uhop.backends.triton_kernels.launch import Launcher  # noqa: E402


@triton.jit
def _axpb(x_ptr, y_ptr, n, a, b, BLOCK: tl.constexpr, SQUARE: tl.constexpr = False):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    v = tl.load(x_ptr + offs, mask=m).to(tl.float32)
    if SQUARE:
        v = v * v
    tl.store(y_ptr + offs, (v * a + b).to(y_ptr.dtype.element_ty), mask=m)


def _ref(x, a, b, square=False):
    v = x.double()
    return (v * v if square else v) * a + b


def test_same_results_as_the_jit_across_specializations():
    launch = Launcher(_axpb)
    base = {dt: torch.randn(5000, device="cuda", dtype=dt) for dt in (torch.float32, torch.bfloat16, torch.float16)}
    cases = 0
    for dt, full in base.items():
        for off in (0, 1, 8, 3):  # 16-byte aligned or not
            for n in (1, 16, 17, 1024, 4095):
                x = full[off : off + n]
                y = torch.empty(n + 1, device="cuda", dtype=dt)[1:] if off % 2 else torch.empty(n, device="cuda", dtype=dt)
                for square in (False, True):
                    for a in (1.0, 0.5):
                        launch((triton.cdiv(n, 256),), x, y, n, a, 0.25, BLOCK=256, SQUARE=square)
                        launch((triton.cdiv(n, 256),), x, y, n, a, 0.25, BLOCK=256, SQUARE=square)  # the direct path
                        torch.cuda.synchronize()
                        tol = 1e-5 if dt == torch.float32 else 2e-2
                        assert torch.allclose(y.double(), _ref(x, a, 0.25, square), rtol=tol, atol=tol), (dt, off, n)
                        cases += 1
    assert launch._direct is True, launch.why
    # one entry per specialization, not per call: dtypes x alignments x n classes x SQUARE (a, b: fp32)
    assert len(launch._cache) < cases


def test_default_constexpr_and_positional_grid_forms():
    launch = Launcher(_axpb)
    x = torch.randn(1000, device="cuda")
    y = torch.empty_like(x)
    for _ in range(2):
        launch((4, 1), x, y, 1000, 2.0, -1.0, BLOCK=256)  # SQUARE from its default
        torch.cuda.synchronize()
        assert torch.allclose(y.double(), _ref(x, 2.0, -1.0), atol=1e-5)


def test_side_stream_and_graph_capture():
    launch = Launcher(_axpb)
    x = torch.randn(4096, device="cuda")
    y = torch.empty_like(x)
    launch((16,), x, y, 4096, 3.0, 0.0, BLOCK=256)  # compiled and cached outside the capture
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        launch((16,), x, y, 4096, 3.0, 1.0, BLOCK=256)
    s.synchronize()
    assert torch.allclose(y, x * 3 + 1, atol=1e-5)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        with torch.cuda.graph(g, stream=s):
            launch((16,), x, y, 4096, 3.0, 2.0, BLOCK=256)
    torch.cuda.current_stream().wait_stream(s)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert torch.allclose(y, x * 3 + 2, atol=1e-5)


def test_launch_hooks_are_called_when_a_profiler_installs_them():
    """Triton 3.6's hook chains: empty (no hook, no metadata built) unless a profiler adds one;
    one added before a specialization's first launch is called on every direct launch."""
    from triton import knobs

    seen = []

    def hook(md):
        seen.append(md.get()["name"] if hasattr(md, "get") else md)

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        launch = Launcher(_axpb)
        x = torch.randn(512, device="cuda")
        y = torch.empty_like(x)
        for _ in range(3):
            launch((2,), x, y, 512, 1.0, 0.0, BLOCK=256)
        torch.cuda.synchronize()
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert len(seen) == 3 and launch._direct is True, (seen, launch.why)
