"""Prompts built from UHOP's own knowledge, and the code taken back out of a reply.

A prompt template is a pair of files under ``uhop/ai/templates/``: ``<name>.system.md`` and
``<name>.user.md`` (``string.Template`` ``$fields``, so code braces need no escaping). A new
wording is a new name (``kernel_v2``), never an edit in place: every attempt records the
template's name and the sha256 of both files' bytes, so the report can compare wordings.

The user message holds: the op's definition and its float64 reference source, the tolerance,
the problem (dims, dtype, params, shape class, FLOP and byte counts), the device's manifest
figures that matter for the op, the current best kernel with its measured time and its fraction
of the roofline, the verdicts of this problem's earlier attempts, and (knowledge transfer) the
best kernels and failure notes of related problems.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from uhop.problem import Problem

DEFAULT_TEMPLATE = "kernel_v1"
#: generated code longer than this is not a kernel file anyone meant (bytes of UTF-8)
MAX_CODE_BYTES = 64 * 1024
#: a kernel's source shown in a prompt is cut to this many characters (prompts hold up to four)
PROMPT_CODE_CHARS = 12_000


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str
    user: str
    sha256: str


@functools.cache
def template(name: str = DEFAULT_TEMPLATE) -> PromptTemplate:
    """Load a template pair by name (``ValueError`` naming the ones that exist if unknown)."""
    root = resources.files("uhop.ai") / "templates"
    names = sorted({p.name.split(".")[0] for p in root.iterdir() if p.name.endswith(".md")})
    if name not in names:
        raise ValueError(f"template must be one of {', '.join(names)}, got {name!r}")
    system = (root / f"{name}.system.md").read_bytes()
    user = (root / f"{name}.user.md").read_bytes()
    h = hashlib.sha256(system + b"\0" + user).hexdigest()
    return PromptTemplate(name, system.decode(), user.decode(), h)


@dataclass(frozen=True)
class Best:
    """The kernel to beat: its candidate id, per-call seconds and relative spread (p90-p10)/median."""

    label: str
    median_s: float
    spread: float = 0.0
    code: str | None = None  # source, when the best is itself a kernel file


def _code(src: str) -> str:
    src = src.strip()
    if len(src) > PROMPT_CODE_CHARS:
        src = src[:PROMPT_CODE_CHARS] + f"\n# ... ({len(src) - PROMPT_CODE_CHARS} more characters cut)"
    return f"```python\n{src}\n```"


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.3f} ms"


def hardware_text(device: str, manifest: str | None = None) -> tuple[str, str]:
    """The manifest figures that matter for writing a kernel: (manifest name, bullet lines).
    ``manifest`` names one (``uhop hw list``) instead of the one detected for ``device``."""
    from uhop.hardware import get_capabilities

    try:
        m = (get_capabilities(manifest) if manifest else get_capabilities(device=device)).model_dump()
    except Exception as exc:  # an unknown device still gets a prompt
        return "unknown", f"- no manifest ({type(exc).__name__}: {exc})"

    def val(d: Any) -> Any:
        return d.get("value") if isinstance(d, dict) else d

    lines = [f"- {m.get('display_name') or m['name']} ({m.get('kind')}, {m.get('arch') or '?'})"]
    if val(m.get("compute_units")):
        lines.append(f"- compute units: {val(m['compute_units'])}")
    clock = val((m.get("clocks") or {}).get("boost_hz"))
    if clock:
        lines.append(f"- clock: {clock / 1e9:.2f} GHz")
    for k, v in (m.get("flops") or {}).items():
        if val(v):
            lines.append(f"- peak {k}: {val(v) / 1e9:.0f} GFLOP/s")
    bw = val((m.get("memory") or {}).get("bandwidth_bytes_per_s"))
    lines.append(f"- memory bandwidth: {bw / 1e9:.0f} GB/s" if bw else "- memory bandwidth: not measured")
    for k, v in (m.get("caches") or {}).items():
        if val(v):
            lines.append(f"- {k.replace('_bytes', '')}: {val(v) // 1024} KiB")
    cpu = m.get("cpu") or {}
    if cpu:
        lines.append(f"- SIMD {cpu.get('simd')}, {val(cpu.get('vector_width_bits'))}-bit vectors, "
                     f"{val(cpu.get('fma_units_per_core'))} FMA units per core")  # fmt: skip
    gpu = m.get("gpu") or {}
    for k, v in gpu.items():  # shared memory, registers, warp size, SM count ...
        if val(v) is not None and not isinstance(val(v), (dict, list)):
            lines.append(f"- {k.replace('_', ' ')}: {val(v)}")
    for te in m.get("tensor_engines") or []:
        lines.append(f"- tensor engine: {json.dumps(te, default=str)[:200]}")
    return m["name"], "\n".join(lines)


def best_text(best: Best | None, problem: Problem) -> str:
    if best is None or not math.isfinite(best.median_s):
        return "No kernel is measured for this problem yet: any correct kernel is a start."
    from uhop.perf.features import hardware_features, roofline_s

    floor = roofline_s(problem, hardware_features("cpu" if problem.device == "cpu" else problem.device))
    flops, nbytes = problem.flops(), problem.bytes()
    text = (f"{best.label}: {_fmt_s(best.median_s)} per call (spread {best.spread:.1%}), "
            f"{flops / best.median_s / 1e9:.2f} GFLOP/s, {nbytes / best.median_s / 1e9:.2f} GB/s, "
            f"{floor / best.median_s:.1%} of the roofline bound ({_fmt_s(floor)}). "
            f"To be promoted a kernel must be faster by more than the spread.")  # fmt: skip
    if best.code:
        text += f"\nIts source:\n{_code(best.code)}"
    return text


def history_text(history: Sequence[Mapping[str, Any]], limit: int = 12) -> str:
    """One line per earlier attempt (newest last): round, verdict, reason, max error, time."""
    if not history:
        return "None yet: this is the first round."
    lines = []
    for a in list(history)[-limit:]:
        t = _fmt_s(a["median_s"]) if a.get("median_s") else "-"
        err = (
            f", max err {a['max_err']:.2g}"
            if isinstance(a.get("max_err"), float) and math.isfinite(a["max_err"])
            else ""
        )
        why = f": {a['reason'][:240]}" if a.get("reason") else ""
        lines.append(
            f"- round {a.get('round', '?')} variant {a.get('variant', '?')}: {a['category']}{why}{err}, time {t}"
        )
    best = min((a for a in history if a.get("category") == "ok" and a.get("code")), key=lambda a: a["median_s"],
               default=None)  # fmt: skip
    if best is not None:
        lines.append(
            f"\nThe fastest valid attempt so far ({_fmt_s(best['median_s'])}):\n{_code(best['code'])}"
        )
    return "\n".join(lines)


def transfer_text(related: Sequence[Mapping[str, Any]], notes: Sequence[Mapping[str, Any]]) -> str:
    """Best kernels and the commonest failures of related problems (same op, other shapes or devices)."""
    if not related and not notes:
        return "Nothing recorded for related problems."
    parts = []
    for r in related:
        gain = (
            f"{r['speedup']:.2f}x over the best there" if r.get("speedup") else "the first valid kernel there"
        )
        parts.append(f"A kernel that validated for {r['problem_text']} on {r['hw_name']} ({gain}):\n"
                     f"{_code(r['code'])}")  # fmt: skip
    if notes:
        parts.append("Frequent failures there:\n" + "\n".join(
            f"- {n['category']} ({n['n']}x){': ' + n['reason'][:200] if n.get('reason') else ''}" for n in notes))  # fmt: skip
    return "\n\n".join(parts)


def build_messages(tpl: PromptTemplate, problem: Problem, best: Best | None, history: Sequence[Mapping[str, Any]],
                   related: Sequence[Mapping[str, Any]] = (), notes: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, str]]:  # fmt: skip
    """The chat messages for one generation request."""
    spec = problem.spec
    rtol, atol = spec.tolerance(problem.dtype, problem.dim, problem.param)
    hw_name, hw = hardware_text(problem.device)
    try:
        ref = inspect.getsource(type(spec).reference)
    except (OSError, TypeError):
        ref = "(source unavailable)"
    params = ", ".join(f"{p.name} (default {p.default!r}{', one of ' + repr(p.choices) if p.choices else ''})"
                       for p in spec.params) or "none"  # fmt: skip
    fields = {
        "op": problem.op, "problem": problem.describe(), "dims": json.dumps(problem.dim), "dtype": problem.dtype,
        "params": json.dumps(problem.param, sort_keys=True), "shape_class": "x".join(str(v) for _, v in problem.shape_class()),
        "flops": f"{problem.flops():.4g}", "bytes": f"{problem.bytes():.4g}", "device": problem.device,
        "op_doc": f"`{problem.op}`: {spec.description}. Inputs in order: {', '.join(spec.inputs)}; dims "
                  f"{', '.join(spec.dims)}; params: {params}; dtypes {', '.join(spec.dtypes)}.",
        "reference": ref.rstrip(), "rtol": f"{rtol:g}", "atol": f"{atol:g}", "hw_name": hw_name, "hardware": hw,
        "current_best": best_text(best, problem), "history": history_text(history),
        "transfer": transfer_text(related, notes),
    }  # fmt: skip
    user = string.Template(tpl.user).safe_substitute(fields)
    system = string.Template(tpl.system).safe_substitute(fields)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> tuple[str | None, str]:
    """The kernel file in a reply: the fenced block that defines ``run`` (else the first one).
    Returns ``(code, "")`` or ``(None, why)``; an unclosed fence (a cut-off reply) is no code."""
    blocks = [b for b in _FENCE.findall(text) if b.strip()]
    if not blocks:
        if "```" in text:
            return None, "the reply's code block is not closed (cut off?)"
        return None, "the reply holds no ```python code block"
    code = next((b for b in blocks if re.search(r"^def run\s*\(", b, re.MULTILINE)), blocks[0])
    if len(code.encode("utf-8", "replace")) > MAX_CODE_BYTES:
        return None, f"the code block is {len(code)} characters, over the {MAX_CODE_BYTES}-byte limit"
    return code.strip() + "\n", ""
