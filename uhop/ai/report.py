"""``uhop ai report``: what the factory produced and what it cost, from the ``ai_attempts`` table.

Figures (over the attempts since ``since_s`` seconds ago): variants generated, validated share,
rejections by category, promotions, the speedup distribution of validated kernels (over the
best at the time of the attempt and over the run's baseline), seconds and tokens spent per
promoted kernel, the promotion rate of prompts with and without knowledge from related problems,
and per op and model the same rates as ``cost_model`` rows (what a scheduler deciding where to
spend generation time needs: P(valid), P(promoted), tokens and seconds per attempt).
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any


def parse_since(text: str | None) -> float | None:
    """``7d``, ``12h``, ``30m``, ``90s`` (or plain seconds) -> seconds; ``None`` passes through."""
    if text is None or text == "":
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ValueError(f"since must look like 7d, 12h, 30m or 90s, got {text!r}")
    mult = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
    return float(m.group(1)) * mult


def _dist(xs: Sequence[float]) -> dict[str, float] | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"n": len(xs), "min": xs[0], "p25": q[0], "median": q[1], "p75": q[2], "max": xs[-1]}


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The report's figures for a set of attempt rows."""
    n = len(rows)
    ok = [r for r in rows if r["category"] == "ok"]
    promoted = [r for r in rows if r["promoted"]]
    seconds = sum((r.get("gen_s") or 0.0) + (r.get("check_s") or 0.0) for r in rows)
    tokens = sum((r.get("tokens_in") or 0) + (r.get("tokens_out") or 0) for r in rows)
    with_t = [r for r in rows if r["transfer"]]
    without_t = [r for r in rows if not r["transfer"]]
    return {
        "variants": n,
        "validated": len(ok),
        "validated_pct": None if not n else 100.0 * len(ok) / n,
        "rejected_by_category": dict(
            Counter(r["category"] for r in rows if r["category"] != "ok").most_common()
        ),
        "promoted": len(promoted),
        "speedup_over_previous": _dist([r["speedup_previous"] for r in ok if r.get("speedup_previous")]),
        "speedup_over_baseline": _dist([r["speedup_baseline"] for r in ok if r.get("speedup_baseline")]),
        "seconds": seconds,
        "tokens": tokens,
        "seconds_per_promoted": seconds / len(promoted) if promoted else None,
        "tokens_per_promoted": tokens / len(promoted) if promoted else None,
        "transfer": {
            "with": {
                "variants": len(with_t),
                "promoted": sum(r["promoted"] for r in with_t),
                "promotion_rate": _rate(sum(r["promoted"] for r in with_t), len(with_t)),
            },
            "without": {
                "variants": len(without_t),
                "promoted": sum(r["promoted"] for r in without_t),
                "promotion_rate": _rate(sum(r["promoted"] for r in without_t), len(without_t)),
            },
        },  # fmt: skip
    }


def cost_model_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (op, device, model, template): attempts, P(valid), P(promoted), mean tokens and
    seconds per attempt, median speedup of validated kernels over the previous best."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["op"], r["device"], r["model"], r["template"])].append(r)
    out = []
    for (op, device, model, tpl), rs in sorted(groups.items()):
        ok = [r for r in rs if r["category"] == "ok"]
        sp = [r["speedup_previous"] for r in ok if r.get("speedup_previous")]
        out.append({
            "op": op, "device": device, "model": model, "template": tpl, "attempts": len(rs),
            "p_valid": len(ok) / len(rs), "p_promoted": sum(r["promoted"] for r in rs) / len(rs),
            "tokens_per_attempt": statistics.fmean((r["tokens_in"] or 0) + (r["tokens_out"] or 0) for r in rs),
            "seconds_per_attempt": statistics.fmean((r.get("gen_s") or 0.0) + (r.get("check_s") or 0.0) for r in rs),
            "median_speedup_valid": statistics.median(sp) if sp else None,
        })  # fmt: skip
    return out


def report(store: Any = None, *, since_s: float | None = None, op: str | None = None) -> dict[str, Any]:
    """The report over the store's attempts (``since_s``: only the last so many seconds)."""
    from uhop.ai.attempts import attempt_store
    from uhop.store import open_store

    store = store or open_store()
    db = attempt_store(store)
    since = None if since_s is None else time.time() - since_s
    rows = db.attempts(since=since, op=op)
    doc = summarize(rows)
    doc["since_s"] = since_s
    doc["by_op"] = {o: summarize([r for r in rows if r["op"] == o]) for o in sorted({r["op"] for r in rows})}
    doc["cost_model"] = cost_model_rows(rows)
    doc["promotions"] = [
        {k: p[k] for k in ("id", "created", "key", "sha256", "file", "median_s", "quarantined", "reason")}
        for p in db.promotions() if (since is None or p["created"] >= since) and (op is None or p["op"] == op)
    ]  # fmt: skip
    return doc


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render(doc: dict[str, Any]) -> str:
    """The report as text lines."""
    vp = "-" if doc["validated_pct"] is None else f"{doc['validated_pct']:.0f}%"
    lines = [
        f"variants generated: {doc['variants']}   validated: {doc['validated']} ({vp})   promoted: {doc['promoted']}"
    ]
    if doc["rejected_by_category"]:
        lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in doc["rejected_by_category"].items()))
    for name in ("speedup_over_previous", "speedup_over_baseline"):
        d = doc[name]
        if d:
            lines.append(f"{name.replace('_', ' ')} (valid kernels, n={d['n']}): min {d['min']:.2f}x  median "
                         f"{d['median']:.2f}x  max {d['max']:.2f}x")  # fmt: skip
    if doc["promoted"]:
        lines.append(
            f"per promoted kernel: {doc['seconds_per_promoted']:.1f} s, {doc['tokens_per_promoted']:.0f} tokens"
        )
    t = doc["transfer"]
    lines.append(f"promotion rate with related-problem knowledge: {_pct(t['with']['promotion_rate'])} "
                 f"({t['with']['promoted']}/{t['with']['variants']}), without: {_pct(t['without']['promotion_rate'])} "
                 f"({t['without']['promoted']}/{t['without']['variants']})")  # fmt: skip
    for p in doc["promotions"]:
        state = f"quarantined ({p['reason']})" if p["quarantined"] else "active"
        lines.append(f"promotion {p['key']}  {p['sha256'][:16]}  {p['median_s'] * 1e6:.1f} us  {state}")
    return "\n".join(lines)
