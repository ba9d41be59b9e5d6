import pytest

torch = pytest.importorskip("torch", reason="uhop.compile needs torch: pip install 'uhop[torch]'")


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    """A private store, a small tuning budget and a fresh Dynamo cache per test."""
    from uhop.compile import REPORT, runtime
    from uhop.config import override
    from uhop.dispatch import clear_process_cache

    torch._dynamo.reset()
    REPORT.clear()
    runtime.clear()
    clear_process_cache()
    with override(home=tmp_path, tune_budget_s=0.5, policy="fast"):
        yield
    torch._dynamo.reset()
    runtime.clear()
    clear_process_cache()


@pytest.fixture(scope="session", autouse=True)
def _private_inductor_cache(tmp_path_factory):
    """Inductor's on-disk cache keys graphs, not the fake kernels of custom ops: a private one
    keeps a test run from reusing code compiled against another checkout's torch.ops.uhop."""
    import os

    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    yield
    if old is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
