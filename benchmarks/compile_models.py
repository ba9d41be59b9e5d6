"""Whole models: eager vs torch.compile (default, max-autotune-no-cudagraphs) vs backend="uhop",
side by side in one run, with compile wall time. Writes JSON.

    python benchmarks/compile_models.py --models gpt2-block --batch 1 8 --seq 64 256 1024
    python benchmarks/compile_models.py --device cuda --dtype bfloat16 --out benchmarks/data/compile_h200.json

Models: ``gpt2-block`` (d768, 12 heads; ``gpt2-hf-block``: its projections as Hugging Face's
``Conv1D``, addmm on (in, out) weights), ``llama-block`` (d4096, 32 heads, SwiGLU ff 11008,
rotary embeddings), ``llama-small-block`` (the same layout at d768, 12 heads, ff 2048), ``gpt2`` (12 layers, d768, vocab 50257), ``resnet``
(ResNet-style, width 64, 4 blocks, 56x56 inputs), ``numpy-gpt2`` (a numpy GPT-2 forward: numpy
vs ``uhop.jit``); Hugging Face transformers' own model code at its base sizes, random weights
(``pip install 'uhop[hf]'``): ``hf-gpt2`` (GPT-2 small, LM head), ``hf-bert`` (bert-base), ``hf-llama``
(8 layers, d1024, GQA 16/4 heads, SwiGLU ff 2816, LM head of 32000), ``hf-t5`` (t5-small, encoder and
decoder on the same ids), ``hf-vit`` (ViT-B/16 at 224x224). Times are medians of interleaved rounds (each round times every variant once, in
an order rotated by one each round, so machine load hits all alike), in milliseconds per forward,
under ``torch.inference_mode``; ``speedup_paired`` is the median over rounds of the per-round ratio
baseline / UHOP, with its quartiles (the spread a shared machine leaves). On CUDA the variants
include ``reduce-overhead`` (torch.compile recording CUDA graphs, as backend="uhop" does for
inference graphs on a GPU), so that UHOP's figure stands next to the like-for-like one, and each
row has ``gpu_ms`` too: the same samples timed by CUDA events (the GPU's time; ``ms`` is the
wall time, which a launch-bound variant or a host stall also shows). Outputs are dropped between
calls (until 2026-12-06 each sample kept its outputs alive).
"""

# ruff: noqa: I001 - uhop is imported before numpy and torch on purpose (below)
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# uhop first, as docs/compile.md advises a program that mixes numpy or torch with UHOP: its thread
# policy (docs/tuning.md) then reaches numpy's OpenBLAS and torch's OpenMP pools as they load.
# Imported after numpy, OpenBLAS kept its default spin (~0.1 s after each call) and the numpy
# forward's samples slowed the uhop.jit samples interleaved with them: T64 33 ms, T256 101 ms
# against 18 and 53 ms measured alone (2-core VM, idle).
import uhop
import uhop.compile  # noqa: F401 - registers backend="uhop" for a source checkout
from uhop.compile import REPORT
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "compile"))
from zoo import GPT2, GPT2Block, LlamaBlock, ResNetSmall  # noqa: E402

VARIANTS = ("eager", "compile", "max-autotune", "reduce-overhead", "uhop", "uhop-tune-rest", "uhop-max-autotune",
            "uhop-no-cudagraphs", "uhop-no-pack")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def _rounds(fns: dict, reps: dict, rounds: int, device: str, gpu: dict | None = None) -> dict:
    """Seconds per call, ``{variant: [per round]}``; each round visits every variant once, in an
    order rotated by one each round. Each sample calls the variant ``reps[v]`` times back to
    back, dropping the outputs (as a serving loop does). ``gpu``, on CUDA: filled with the same
    samples timed by CUDA events around the calls (the GPU's time, without the host's work before
    the first launch and after the last)."""
    names = list(fns)
    times = {v: [] for v in names}
    cuda = device.startswith("cuda") and gpu is not None
    for v in names if cuda else ():
        gpu[v] = []
    for r in range(rounds):
        for j in range(len(names)):
            v = names[(j + r) % len(names)]
            n, f = reps[v], fns[v]

            def sample(n=n, f=f) -> None:
                for _ in range(n):
                    f()

            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                _sync(device)
                t = time.perf_counter()
                start.record()
                sample()
                end.record()
                _sync(device)
                times[v].append((time.perf_counter() - t) / n)
                gpu[v].append(start.elapsed_time(end) / 1e3 / n)
            else:
                times[v].append(_timed(sample, device) / n)
    return times


def _paired(times: dict, base: str, other: str) -> dict:
    """Median and quartiles over rounds of base/other (> 1: ``other`` faster)."""
    r = sorted(b / o for b, o in zip(times[base], times[other], strict=True))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return {"median": round(statistics.median(r), 3), "q1": round(q[0], 3), "q3": round(q[2], 3)}


def build(variant: str, model):
    if variant == "eager":
        return model
    if variant == "compile":
        return torch.compile(model)
    if variant == "max-autotune":
        return torch.compile(model, mode="max-autotune-no-cudagraphs")
    if variant == "reduce-overhead":
        return torch.compile(model, mode="reduce-overhead")
    if variant == "uhop":
        return torch.compile(model, backend="uhop")
    if variant == "uhop-tune-rest":  # not the default: Inductor coordinate-descent-tunes the rest's kernels
        return torch.compile(model, backend="uhop", options={"tune_rest": True})
    if variant == "uhop-max-autotune":  # not the default: the rest compiled in max-autotune mode
        return torch.compile(model, backend="uhop", options={"mode": "max-autotune-no-cudagraphs"})
    if variant == "uhop-no-cudagraphs":  # not the default: no CUDA graph recorded for the graphs
        return torch.compile(model, backend="uhop", options={"cudagraphs": False})
    if variant == "uhop-no-pack":  # not the default: CPU linear layers without MKL-packed weights
        return torch.compile(model, backend="uhop", options={"pack_weights": False})
    raise ValueError(variant)


def bench_torch(name: str, model, x, device: str, variants, rounds: int, min_s: float,
                same_store: bool = False) -> dict:  # fmt: skip
    fns, compile_s = {}, {}
    report: dict = {}
    with torch.inference_mode():
        want = model(x).float()
        for v in variants:
            if v == "uhop":
                REPORT.clear()  # this model's graphs and regions only
            fn = build(v, model)
            compile_s[v] = _timed(lambda fn=fn: fn(x), device)  # first call: compile (+ tune for uhop)
            err = float((fn(x).float() - want).abs().max())
            fns[v] = fn
            if v.startswith("uhop"):  # background tuning must not share the cores with the timing
                t = time.perf_counter()
                uhop.wait()
                compile_s[f"{v}_background_tuning"] = round(time.perf_counter() - t, 3)
            compile_s[v] = round(compile_s[v], 3)
            print(f"  {v:<13} first call {compile_s[v]:.2f} s, max |diff| vs eager {err:.3g}", flush=True)
        if same_store and sum(v.startswith("uhop") for v in variants) > 1:
            # every UHOP variant compiled again against the store as the first calls left it: the
            # first one otherwise runs a colder store's graph (regions still tuning) than the next
            torch._dynamo.reset()
            for v in variants:
                if v == "uhop":
                    REPORT.clear()
                fns[v] = build(v, model)
                fns[v](x)
                if v.startswith("uhop"):
                    uhop.wait()
        reps = {}
        for v in variants:  # calls per sample so each sample lasts >= min_s
            one = min(_timed(lambda v=v: fns[v](x), device) for _ in range(3))
            reps[v] = max(1, int(min_s / max(one, 1e-6)))
        gpu: dict = {}
        times = _rounds({v: (lambda v=v: fns[v](x)) for v in variants}, reps, rounds, device, gpu)
        if "uhop" in variants:  # after the timing: the CUDA graph decision (second call on) shows too
            report = _fusion_summary()
        if PROFILE_DIR is not None:  # after the timing: the profiler must not perturb it
            for v in variants:
                _profile(fns[v], x, device, PROFILE_DIR / f"profile_{name}_{'x'.join(map(str, x.shape))}_{v}.txt")
    med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    row = {"model": name, "shape": list(x.shape), "ms": {v: round(m, 4) for v, m in med.items()},
           "first_call_s": compile_s, **({"fusion": report} if report else {}),
           "spread_ms": {v: round((max(t) - min(t)) * 1e3, 4) for v, t in times.items()},
           **({"gpu_ms": {v: round(statistics.median(t) * 1e3, 4) for v, t in gpu.items()}} if gpu else {})}
    if "eager" in med and "uhop" in med:
        row["uhop_speedup_vs_eager"] = round(med["eager"] / med["uhop"], 3)
        row["speedup_paired"] = _paired(times, "eager", "uhop")
    best = min(m for v, m in med.items() if v != "uhop") if len(med) > 1 else None
    if best and "uhop" in med:
        row["uhop_vs_best_other"] = round(med["uhop"] / best, 3)
        three = [m for v, m in med.items() if v in ("eager", "compile", "max-autotune")]
        if three:  # issue #16's target: <= 0.95x (transformer blocks) / 1.0x (conv net) of these
            row["uhop_vs_best_of_eager_compile_max_autotune"] = round(med["uhop"] / min(three), 3)
    paired = f", uhop/eager speed {row['speedup_paired']}" if "speedup_paired" in row else ""
    print(f"  {name} {list(x.shape)}: " + ", ".join(f"{v} {m:.3f} ms" for v, m in med.items()) + paired, flush=True)
    if gpu:
        print("    GPU (CUDA events): " + ", ".join(f"{v} {m:.3f} ms" for v, m in row["gpu_ms"].items()), flush=True)
    return row


PROFILE_DIR: Path | None = None


def _profile(fn, x, device: str, path: Path, calls: int = 5) -> None:
    """torch.profiler's kernel table over ``calls`` forwards (a diagnostic: where each variant's
    time goes, kernel by kernel; CUDA graph replays are traced per kernel by CUPTI)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    fn(x)
    _sync(device)
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn(x)
        _sync(device)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{calls} calls\n" + prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=90))
    print(f"  profile: {path}", flush=True)


def _fusion_summary() -> dict:
    """What backend="uhop" made of the model (for reading a run afterwards): per graph, its regions
    (kind, and why it was left as written) and rewrites; per region problem, the kernel chosen at
    first use or the fallback and why."""
    data = REPORT.to_json()
    graphs = [{"regions": [[r["kind"], r["note"]] if r["note"] else r["kind"] for r in g["regions"]],
               "rewrites": g.get("rewrites", []), "cudagraphs": g.get("cudagraphs")} for g in data["graphs"]]
    runs = [[r["kind"], r["problem"], r["status"], r["kernel"], r["reason"]] for r in data["runs"]]
    return {"graphs": graphs, "runs": runs, "graph_breaks": data["graph_breaks"], "recompiles": data["recompiles"]}


# ---- numpy GPT-2 forward ------------------------------------------------------------------------
def np_gpt2_forward(x, params, heads):
    """A GPT-2 forward in plain numpy (pre-LN blocks, tanh GELU, causal attention), float32.
    Written so Dynamo traces it whole: no ``ndarray.dtype`` reads and no generator expressions
    (Dynamo skips a frame that has either; the fusion report lists the reason). The attention
    scale is a Python float: ``np.sqrt(hd)`` is a float64 scalar, which under NEP 50 made the
    scores, and through the residual stream every later matmul, float64 (in numpy and traced
    alike)."""

    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g + b

    def gelu(x):
        return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))

    T, C = x.shape
    hd = C // heads
    mask = np.triu(np.full((T, T), -1e10, dtype=np.float32), 1)
    for p in params:
        h = ln(x, p["g1"], p["b1"]) @ p["w_qkv"] + p["b_qkv"]
        q, k, v = [h[:, i * C:(i + 1) * C].reshape(T, heads, hd).transpose(1, 0, 2) for i in range(3)]
        s = q @ k.transpose(0, 2, 1) * (1.0 / math.sqrt(hd)) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(1, 0, 2).reshape(T, C) @ p["w_o"] + p["b_o"]
        x = x + gelu(ln(x, p["g2"], p["b2"]) @ p["w_fc"] + p["b_fc"]) @ p["w_pr"] + p["b_pr"]
    return x


def bench_numpy_gpt2(T: int, layers: int, rounds: int, min_s: float) -> dict:
    rng = np.random.default_rng(0)
    C, H = 768, 12

    def w(*s):
        return (rng.standard_normal(s) * 0.02).astype(np.float32)

    params = [dict(g1=np.ones(C, np.float32), b1=w(C), w_qkv=w(C, 3 * C), b_qkv=w(3 * C), w_o=w(C, C), b_o=w(C),
                   g2=np.ones(C, np.float32), b2=w(C), w_fc=w(C, 4 * C), b_fc=w(4 * C), w_pr=w(4 * C, C), b_pr=w(C))
              for _ in range(layers)]  # fmt: skip
    x = rng.standard_normal((T, C)).astype(np.float32)
    fns = {"numpy": lambda: np_gpt2_forward(x, params, H)}
    REPORT.clear()
    jitted = uhop.jit(np_gpt2_forward)
    t0 = time.perf_counter()
    got = jitted(x, params, H)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    uhop.wait()  # background tuning must not share the cores with the timing
    background = time.perf_counter() - t1
    report = _fusion_summary()
    fns["uhop.jit"] = lambda: jitted(x, params, H)
    err = float(np.abs(got - np_gpt2_forward(x, params, H)).max())
    print(f"  uhop.jit first call {first:.2f} s, max |diff| vs numpy {err:.3g}", flush=True)
    reps = {k: max(1, int(min_s / min(_timed(f, "cpu") for _ in range(3)))) for k, f in fns.items()}
    times = _rounds(fns, reps, rounds, "cpu")
    med = {k: statistics.median(t) * 1e3 for k, t in times.items()}
    print(f"  numpy-gpt2 T{T} L{layers}: " + ", ".join(f"{k} {m:.3f} ms" for k, m in med.items()), flush=True)
    return {"model": "numpy-gpt2", "shape": [T, C], "layers": layers, "ms": {k: round(m, 4) for k, m in med.items()},
            "first_call_s": {"uhop.jit": round(first, 3), "uhop_background_tuning": round(background, 3)},
            "max_abs_diff": err, "fusion": report,
            "spread_ms": {k: round((max(t) - min(t)) * 1e3, 4) for k, t in times.items()},
            "uhop_speedup_vs_numpy": round(med["numpy"] / med["uhop.jit"], 3),
            "speedup_paired": _paired(times, "numpy", "uhop.jit")}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except Exception:
        return "?"


HF_MODELS = ("hf-gpt2", "hf-bert", "hf-llama", "hf-t5", "hf-vit")


class _HFOutput(torch.nn.Module):
    """A transformers model called on one tensor, returning its logits or last hidden state."""

    def __init__(self, model, t5: bool = False) -> None:
        super().__init__()
        self.model, self.t5 = model, t5

    def forward(self, x):
        out = self.model(input_ids=x, decoder_input_ids=x) if self.t5 else self.model(x)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def hf_model(name: str):
    """(module, vocabulary or None for images) of a Hugging Face model at its base size."""
    import transformers as t

    if name == "hf-gpt2":
        return _HFOutput(t.GPT2LMHeadModel(t.GPT2Config())), 50257
    if name == "hf-bert":
        return _HFOutput(t.BertModel(t.BertConfig())), 30522
    if name == "hf-llama":
        cfg = t.LlamaConfig(num_hidden_layers=8, hidden_size=1024, num_attention_heads=16, num_key_value_heads=4,
                            intermediate_size=2816, vocab_size=32000)  # fmt: skip
        return _HFOutput(t.LlamaForCausalLM(cfg)), 32000
    if name == "hf-t5":
        return _HFOutput(t.T5Model(t.T5Config()), t5=True), 32128
    return _HFOutput(t.ViTModel(t.ViTConfig())), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["gpt2-block", "resnet", "numpy-gpt2"],
                    choices=["gpt2-block", "gpt2-hf-block", "llama-block", "llama-small-block", "gpt2", "resnet",
                             "numpy-gpt2", *HF_MODELS])  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seq", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                    help="default: all; reduce-overhead only on CUDA")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-s", type=float, default=0.05, help="seconds per timed sample (calls repeated to fill it)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="after timing, write each variant's kernel table (torch.profiler, 5 forwards) to DIR")
    ap.add_argument("--same-store", action="store_true",
                    help="A/B of UHOP variants: after every variant's first call (and background tuning), compile all "
                         "again, so each UHOP variant runs what the same store gives (first-call times stay the "
                         "first compile's)")  # fmt: skip
    ap.add_argument("--freezing", action="store_true",
                    help="torch._inductor.config.freezing = True for every compiled variant (PyTorch's CPU-inference "
                         "recipe: weights as constants); compare with a run without it, eager being in both")  # fmt: skip
    a = ap.parse_args()
    if a.freezing:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    global PROFILE_DIR
    PROFILE_DIR = a.profile
    dtype = getattr(torch, a.dtype)
    if a.variants is None:
        # the three, the like-for-like CUDA graph mode on a GPU, and UHOP's defaults
        a.variants = ["eager", "compile", "max-autotune", *(["reduce-overhead"] if a.device.startswith("cuda") else []), "uhop"]
    torch.manual_seed(0)
    load0 = [round(v, 2) for v in os.getloadavg()]
    from uhop.config import settings

    home = Path(settings().home)
    store_empty = not any(home.glob("*.db"))
    rows: list[dict] = []
    meta = {"machine": _cpu_name(), "cores": os.cpu_count(), "device": a.device, "dtype": a.dtype,
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "uhop_commit": _commit(), "threads": torch.get_num_threads(), "inductor_freezing": a.freezing, "same_store": a.same_store, "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(["python", *sys.argv]), "uhop_home_empty_at_start": store_empty,
            "loadavg_start": load0, "rounds": a.rounds}
    if a.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()

    def save(done: bool) -> None:  # after every row: a run killed at a time limit keeps what it measured
        if not a.out:
            return
        meta["complete"] = done
        meta["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        tmp.replace(a.out)

    for name in a.models:
        if name == "numpy-gpt2":
            for T in a.seq:
                rows.append(bench_numpy_gpt2(T, 2, a.rounds, a.min_s))
                save(False)
            continue
        vocab = None
        if name in HF_MODELS:
            model, vocab = hf_model(name)
            model = model.eval().to(a.device, dtype)
            shapes = [(b, 3, 224, 224) for b in a.batch] if vocab is None else [(b, t) for b in a.batch for t in a.seq]
        elif name == "resnet":
            model = ResNetSmall(64, 4, 1000).eval().to(a.device, dtype)
            shapes = [(b, 3, 56, 56) for b in a.batch]
        elif name == "llama-block":
            model = LlamaBlock().eval().to(a.device, dtype)
            shapes = [(b, t, 4096) for b in a.batch for t in a.seq]
        elif name == "llama-small-block":  # GPT-2-small widths with Llama's layout: d768, SwiGLU ff 2048
            model = LlamaBlock(d=768, heads=12, ff=2048, ctx=max(a.seq)).eval().to(a.device, dtype)
            shapes = [(b, t, 768) for b in a.batch for t in a.seq]
        elif name == "gpt2":
            model, vocab = GPT2().eval().to(a.device, dtype), 50257
            shapes = [(b, t) for b in a.batch for t in a.seq]
        else:  # gpt2-hf-block: projections as Hugging Face's Conv1D (addmm with (in, out) weights)
            model = GPT2Block(hf=name == "gpt2-hf-block").eval().to(a.device, dtype)
            shapes = [(b, t, 768) for b in a.batch for t in a.seq]
        for s in shapes:
            torch._dynamo.reset()
            x = torch.randint(0, vocab, s, device=a.device) if vocab else torch.randn(s, device=a.device, dtype=dtype)
            print(f"{name} {s} {a.dtype} on {a.device}", flush=True)
            rows.append(bench_torch(name, model, x, a.device, a.variants, a.rounds, a.min_s, a.same_store))
            save(False)
    save(True)
    if a.out:
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
