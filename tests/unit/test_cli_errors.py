"""What a new user sees when something goes wrong, and the listing commands' JSON and width.

Runs ``uhop.cli.main`` in-process (the console script's entry point, with its error handling):
every failure is one line on stderr with exit code 2, the fix named; ``UHOP_DEBUG=1`` raises.
"""

from __future__ import annotations

import io
import json
import sys
import time

import pytest

from uhop.cli import main
from uhop.errors import InputError


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    from uhop import config

    monkeypatch.setenv("UHOP_HOME", str(tmp_path))
    monkeypatch.delenv("UHOP_DEBUG", raising=False)
    monkeypatch.delenv("UHOP_STORE", raising=False)
    config.reload()
    yield tmp_path
    config.reload()


def cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("uhop")]  # drop INFO log lines
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_dims_too_large_for_memory_are_refused_before_allocating(capsys):
    t = time.perf_counter()
    code, _, err = cli(capsys, "tune", "matmul", "--shape", "100000x100000x100000")
    assert time.perf_counter() - t < 30  # was an ArrayMemoryError after seconds of allocation
    line = one_line(err)
    assert code == 2 and "needs at least 360 GB" in line and "120 GB" in line and "available" in line


def test_check_fits_names_both_sizes():
    from uhop.errors import ProblemTooLargeError
    from uhop.limits import check_fits, working_set_bytes
    from uhop.problem import Problem

    p = Problem.make("softmax", {"R": 1000, "N": 1000}, "float32")
    assert working_set_bytes(p) == pytest.approx(8e6 * 3)  # 8 MB in float32 + 16 MB float64 reference
    check_fits(p, available=10**9)
    with pytest.raises(ProblemTooLargeError, match=r"needs at least 24 MB .* but 1 MB is available"):
        check_fits(p, available=10**6)


@pytest.mark.parametrize(
    "blocked,args,extra",
    [
        (("xgboost",), ("perf", "train", "--op", "matmul"), "perf"),
        (("iree", "iree.compiler", "iree.runtime"), ("mlir", "emit", "matmul", "--shape", "8x8x8"), "mlir"),
        (("optuna",), ("tune", "matmul", "--shape", "8x8x8", "--strategy", "nsga2", "--budget", "2"), "tune"),
    ],
)
def test_missing_optional_package_names_the_extra(capsys, monkeypatch, blocked, args, extra):
    for mod in blocked:
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ModuleNotFoundError, as when absent
    for mod in [m for m in sys.modules if m.startswith("uhop.tune.strategies.")]:
        monkeypatch.delitem(sys.modules, mod)  # a strategy imported by an earlier test holds optuna already
    code, _, err = cli(capsys, *args)
    line = one_line(err)
    assert code == 2 and f"pip install 'uhop[{extra}]'" in line, line  # the [extra] survives rich markup


def test_postgresql_store_without_psycopg(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setenv("UHOP_STORE", "postgresql://localhost/uhop")
    from uhop import config

    config.reload()
    code, _, err = cli(capsys, "cache", "ls")
    assert code == 2 and "pip install 'uhop[perf]'" in one_line(err)


def test_uhop_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "xgboost", None)
    monkeypatch.setenv("UHOP_DEBUG", "1")
    with pytest.raises(ModuleNotFoundError):
        main(["perf", "train", "--op", "matmul"])


@pytest.mark.parametrize(
    "args,needle",
    [
        (("tune", "matmul", "--shape", "8x8x8", "--no-such-flag"), "No such option: --no-such-flag"),
        (("tune", "matmul", "--shape", "8x8x8", "--budget", "x"), "--budget"),
        (("tune", "matmul", "--shape", "3x4"), "MxNxK or BxMxNxK"),
        (("tune", "softmax", "--shape", "64"), "must be RxN, got"),
        (("tune", "matmul", "--shape", "8x8x8", "--strategy", "annealing"), "--strategy must be one of"),
        (("bench", "--suite", "huge"), "--suite must be one of"),
        (("tune", "softmax", "--shape", "8x8", "--device", "tpu"), "--device must be cpu, cuda or cuda:N, got 'tpu'"),
        (("tune", "softmax", "--shape", "8x8", "--device", "cuda:7"), "--device cuda:7: "),
        (("tune", "softmax", "--shape", "8x8", "-b", "numpy", "-b", "nosuch"), "--backend: unknown 'nosuch'; known: numpy"),
        (("bench", "foo", "--shape", "3x3"), "unknown op 'foo'"),
        (("bench", "softmax"), "give the problem's dims: `uhop bench softmax --shape DIMS`"),
        (("bench", "--shape", "3x3"), "go with an OP"),
        (("bench", "softmax", "--shape", "3x3x3"), "must be RxN, got"),
        (("bench", "softmax", "--shape", "8x8", "--dtype", "float16"), "dtype must be float32 or float64"),
        (("bench", "matmul", "--shape", "8x8x8", "-p", "activation=foo"), "activation must be one of"),
        (("bench", "softmax", "--shape", "8x8", "--device", "tpu"), "--device must be cpu, cuda or cuda:N, got 'tpu'"),
        (("bench", "softmax", "--shape", "8x8", "--device", "cuda:7"), "--device cuda:7: "),
        (("bench", "--suite", "gpu"), "--suite gpu runs on a CUDA device: add --device cuda"),
        (("cache", "show", "nope"), "no entry with key 'nope'"),
        (("cache", "import", "/nonexistent.json"), "does not exist"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, args, needle):
    code, _, err = cli(capsys, *args)
    line = one_line(err)
    assert code == 2 and needle in line, line


def test_fail_keeps_square_brackets(capsys):
    from uhop.cli.core import fail

    fail("needs optuna (pip install 'uhop[tune]')")
    assert "pip install 'uhop[tune]'" in capsys.readouterr().err


def test_exhaustive_refuses_a_space_it_cannot_enumerate():
    from uhop.space import Int, SearchSpace
    from uhop.tune.strategies import make
    from uhop.tune.strategies.exhaustive import SpaceTooLargeError

    space = SearchSpace([Int(f"p{i}", 0, 99) for i in range(4)])  # 10^8 combinations
    with pytest.raises(SpaceTooLargeError, match=r"100,000,000 configs .*random, evolution or surrogate"):
        make("exhaustive", space)
    assert make("exhaustive", SearchSpace([Int("a", 0, 9)])).ask(100)  # a small one still enumerates


def test_listing_commands_print_json(capsys):
    for args in (("info", "--json"), ("ops", "--json"), ("hw", "list", "--json"), ("cache", "ls", "--json"),
                 ("perf", "stats", "--json"), ("kernel", "list", "--json")):
        code, out, _ = cli(capsys, *args)
        assert code == 0, args
        json.loads(out)
    _, out, _ = cli(capsys, "info", "--json")
    comps = {c["component"]: c for c in json.loads(out)["components"]}
    for name in ("optuna", "ray", "xgboost", "psycopg", "pyarrow", "pyseccomp", "pynvml", "torch", "triton", "numba"):
        c = comps[name]
        assert c["version"] or c["install"].startswith("pip install 'uhop["), c
        assert c["enables"]
    _, out, _ = cli(capsys, "ops", "--json")
    mm = next(r for r in json.loads(out) if r["op"] == "matmul")
    assert mm["shape"] == ["MxNxK", "BxMxNxK"]


def test_info_names_the_install_line_of_a_missing_component(capsys, monkeypatch):
    import uhop.cli.core

    monkeypatch.setitem(sys.modules, "optuna", None)
    monkeypatch.setattr(uhop.cli.core.console, "width", 80)
    code, out, _ = cli(capsys, "info")
    assert code == 0 and "Optional components" in out
    assert all(len(ln) <= 80 or ln.startswith("Store: ") for ln in out.splitlines()), out  # the URL is never folded
    assert "pip install 'uhop[tune]'" in out.replace("\n", " ") or "'uhop[tune]'" in out


def test_cache_keys_whole_at_80_columns_and_prefix_lookup(capsys, monkeypatch):
    import uhop.cli.cache

    monkeypatch.setattr(uhop.cli.cache.console, "width", 80)
    code, _, _ = cli(capsys, "tune", "softmax", "--shape", "32x100", "--policy", "fast")
    assert code == 0
    _, out, _ = cli(capsys, "cache", "ls", "--json")
    key = json.loads(out)[0]["key"]
    _, out, _ = cli(capsys, "cache", "ls")
    assert key in out and all(len(ln) <= 80 for ln in out.splitlines())
    code, out, _ = cli(capsys, "cache", "show", key[:12] + "…")  # a key copied from a cut cell
    assert code == 0 and json.loads(out)["key"] == key
    assert json.loads(out)["created"].endswith("Z")  # ISO 8601, not epoch seconds


def test_ops_table_fits_80_columns(capsys, monkeypatch):
    import uhop.cli.core

    monkeypatch.setattr(uhop.cli.core.console, "width", 80)
    _, out, _ = cli(capsys, "ops")
    assert all(len(ln) <= 80 for ln in out.splitlines())
    for op in ("matmul", "softmax", "layernorm", "rmsnorm", "elementwise", "attention", "conv2d"):
        assert op in out


def test_bench_tables_keep_the_pick_whole_at_80_columns(table_column):
    """`uhop bench` at 80 columns: every cell folds, the chosen candidate is never cut."""
    from rich.console import Console

    from uhop.benchsuite import print_table

    pick = "numba/fused{chunk=65536,parallel=True,recycle=True,wide=True}"
    row = {"name": "elementwise_chain_long_case_name", "problem": "elementwise[16777216] float32", "chosen": pick,
           "uhop_s": 6.43e-3, "uhop_spread": 0.01, "naive_s": 0.11562, "library": "torch", "library_s": 0.09289,
           "speedup_vs_naive": 17.97, "speedup_vs_library": 14.44, "gflops": 12.3, "gbps": 41.7,
           "pct_peak_flops": 3.1, "pct_peak_bw": 55.0}  # fmt: skip
    overhead = {"name": "dispatch_overhead", "kernel_s": 0.79e-6, "uhop_s": 1.69e-6, "overhead_us": 0.9}
    buf = io.StringIO()
    print_table([row, overhead], Console(file=buf, force_terminal=False, width=80))
    out = buf.getvalue()
    assert all(len(ln) <= 80 for ln in out.splitlines()), out
    assert "…" not in out
    picks = out[out.index("what UHOP picked"):]
    assert table_column(picks, 0, starts=2) == ["elementwise_chain_long_case_name"] and table_column(picks, 1, starts=2) == [pick]
    assert "17.97x" in out and "14.44x" in out and "6.430 ms" in out


def test_progress_prints_lines_when_piped():
    from rich.console import Console

    from uhop.cli.progress import Reporter

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=80)
    with Reporter(console, "candidates", every_s=0.0) as rep:
        for i in range(1, 4):
            rep.update(i, 3, f"best {i} ms")
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("candidates 1/3") and lines[-1].startswith("candidates 3/3")
    buf = io.StringIO()
    with Reporter(Console(file=buf, force_terminal=False), "x", every_s=3600) as rep:
        for i in range(1, 50):
            rep.update(i, 49)
    assert buf.getvalue().splitlines() == [buf.getvalue().splitlines()[0], buf.getvalue().splitlines()[-1]]
    assert "x 49/49" in buf.getvalue()  # the first and the final count, nothing in between


def test_bench_one_op_of_the_users_own(capsys):
    """`uhop bench OP --shape`: the product's pick against the suite's baselines where the op and
    params match a suite row (softmax: numpy's formula, torch's kernel), else the op's reference
    and no library row (matmul with a bias and ReLU); ratios from interleaved rounds."""
    import json

    code, out, err = cli(capsys, "bench", "softmax", "--shape", "64x100", "--budget", "2", "--json", "-")
    assert code == 0, err
    (row,) = json.loads(out)["results"]
    assert row["problem"].startswith("softmax[64x100] float32") and row["chosen"]
    assert row["naive"] == "numpy formula" and row["library"].startswith("torch")
    assert row["speedup_vs_naive"] == pytest.approx(row["naive_s"] / row["uhop_s"])
    code, out, err = cli(capsys, "bench", "matmul", "--shape", "32x48x16", "-p", "activation=relu", "--arity", "3",
                         "--dtype", "float64", "--budget", "2", "--json", "-")  # fmt: skip
    assert code == 0, err
    (row,) = json.loads(out)["results"]
    assert row["name"] == "matmul activation=relu" and "float64" in row["problem"]
    assert row["naive"] == "op reference (numpy)" and row["library"] is None and row["speedup_vs_library"] is None
    assert row["uhop_s"] > 0 and row["naive_s"] > 0
    from uhop.benchsuite import custom_case

    # the problem's default arity (was every input: a matmul with a bias, attention with a mask)
    assert (custom_case("matmul", "8x8x8").arity, custom_case("matmul", "8x8x8").baseline) == (2, "matmul")
    assert custom_case("attention", "1x2x16x8", {"causal": True}).baseline == "attention_causal"


def test_tune_names_an_unknown_backend(monkeypatch):
    """tune(backends=...) and UHOP_BACKENDS with a misspelt name said "no available backend
    supports ..." with every backend's probe; now the name and the known ones."""
    from uhop import config
    from uhop.tune.tuner import tune

    with pytest.raises(InputError, match=r"backends: unknown backend\(s\) 'numbaa'; known: numpy"):
        tune("softmax", {"R": 4, "N": 8}, backends=("numbaa",))
    monkeypatch.setenv("UHOP_BACKENDS", "numpy,tourch")
    config.reload()
    try:
        with pytest.raises(InputError, match=r"UHOP_BACKENDS: unknown backend\(s\) 'tourch'"):
            tune("softmax", {"R": 4, "N": 8})
    finally:
        monkeypatch.delenv("UHOP_BACKENDS")
        config.reload()
