"""The fusion report: what the partitioner found and what each region runs.

One process-wide :data:`REPORT`, written to ``$UHOP_HOME/fusion_report.json`` whenever it
changes (read back by ``uhop fusion report``) and printed to stderr at compile time when
``UHOP_FUSION_REPORT=1``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RegionFound:
    """One region of one captured graph: its kind and the FX ops it replaced."""

    kind: str
    ops: list[str]
    #: bytes of intermediates that no longer round-trip through memory (each fused-away
    #: intermediate written once and read once), from the example inputs' shapes; 0 if unknown
    bytes_saved: int = 0
    #: "" (replaced by a UHOP region op) or why the ops were left as written ("left as written:
    #: served torch/eager": UHOP's kernel for the region is the aten op itself; on a GPU, a GEMM,
    #: conv or attention with nothing measured yet: the vendor kernel while UHOP tunes it)
    note: str = ""


@dataclass
class GraphCompiled:
    graph: int
    name: str
    nodes: int
    regions: list[RegionFound]
    rest: str
    mode: str
    dynamic: bool
    recompile: bool
    compile_s: float = 0.0
    #: "on" (to be replayed as a CUDA graph from its second call), then, once recorded, "on: ..." or
    #: "declined: ..." with the replays' measured speed over launching; "inductor's" (the Inductor
    #: mode records them), or why not ("off", "autograd", "not on one CUDA device", ...)
    cudagraphs: str = "off"
    #: graph rewrites other than regions (``x**3`` written out as ``x*x*x``), one line each
    rewrites: list[str] = field(default_factory=list)


@dataclass
class RegionRun:
    """First use of a region for one shape class: the kernel chosen, or the fallback and why."""

    kind: str
    problem: str
    kernel: str
    status: str  # "uhop", "fallback"
    reason: str = ""
    max_err: float = 0.0


@dataclass
class FusionReport:
    graphs: list[GraphCompiled] = field(default_factory=list)
    runs: list[RegionRun] = field(default_factory=list)
    graph_breaks: dict[str, int] = field(default_factory=dict)
    recompiles: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Dynamo's graph-break counters when the report was last cleared: they count for the whole
    #: process, a report counts from its clear (a model compiled after another one shows its own)
    _breaks_before: dict[str, int] = field(default_factory=dict, repr=False)

    def add_graph(self, g: GraphCompiled) -> None:
        with self._lock:
            self.graphs.append(g)
            self.recompiles += int(g.recompile)
            now = _graph_breaks()
            self.graph_breaks = {k: v - self._breaks_before.get(k, 0) for k, v in now.items()
                                 if v > self._breaks_before.get(k, 0)}  # fmt: skip
        self.save()
        if _report_on():
            print(format_graph(g), file=sys.stderr)

    def add_run(self, r: RegionRun) -> None:
        with self._lock:
            self.runs.append(r)
        self.save()
        if _report_on():
            print(format_run(r), file=sys.stderr)

    def clear(self) -> None:
        with self._lock:
            self.graphs.clear()
            self.runs.clear()
            self.graph_breaks = {}
            self.recompiles = 0
            self._breaks_before = _graph_breaks() if "torch._dynamo" in sys.modules else {}

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"graphs": [asdict(g) for g in self.graphs], "runs": [asdict(r) for r in self.runs],
                    "graph_breaks": dict(self.graph_breaks), "recompiles": self.recompiles}

    def save(self, path: Path | None = None) -> Path | None:
        """Atomically write the report (temp file + rename); None if the home is not writable."""
        try:
            path = path or report_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.to_json(), indent=1))
            tmp.replace(path)
            return path
        except OSError:
            return None


REPORT = FusionReport()


def report_path() -> Path:
    from uhop.config import settings

    return Path(settings().home) / "fusion_report.json"


def _graph_breaks() -> dict[str, int]:
    from torch._dynamo.utils import counters

    # "unimplemented": constructs that made Dynamo skip a frame (it then runs as written)
    found = {**counters.get("graph_break", {}), **counters.get("unimplemented", {})}
    return {k.split("\n")[0][:160]: int(v) for k, v in found.items()}


def format_graph(g: GraphCompiled | dict) -> str:
    g = g if isinstance(g, dict) else asdict(g)
    kept = sum(1 for r in g["regions"] if r.get("note"))
    cg = g.get("cudagraphs", "off")
    graphs = "" if cg in ("off", "not on CUDA") else f", CUDA graphs: {cg}"
    head = (f"[uhop] graph {g['graph']} ({g['name']}): {g['nodes']} nodes, {len(g['regions']) - kept} UHOP regions"
            f"{f' (+{kept} left as written)' if kept else ''}, "
            f"rest -> {g['rest']}, {g['mode']}{', dynamic' if g['dynamic'] else ''}"
            f"{', RECOMPILE' if g['recompile'] else ''}{graphs}, compiled in {g['compile_s']:.2f} s")
    lines = [head]
    for r in g["regions"]:
        saved = f", ~{r['bytes_saved'] / 1e6:.2f} MB saved" if r["bytes_saved"] else ""
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"    {r['kind']:<11} {' + '.join(r['ops'])}{saved}{note}")
    if g.get("rewrites"):
        lines.append(f"    rewritten  {'; '.join(g['rewrites'])}")
    return "\n".join(lines)


def format_run(r: RegionRun | dict) -> str:
    r = r if isinstance(r, dict) else asdict(r)
    why = f" ({r['reason']})" if r["reason"] else ""
    return f"[uhop] {r['kind']:<11} {r['problem']:<40} {r['status']:<8} {r['kernel']}{why}"


def format_report(data: dict[str, Any]) -> str:
    """The whole report as text (``uhop fusion report``)."""
    lines = [f"{len(data['graphs'])} graph(s) compiled, {data['recompiles']} recompile(s), "
             f"{sum(data['graph_breaks'].values())} graph break(s)"]
    lines += [format_graph(g) for g in data["graphs"]]
    if data["runs"]:
        lines.append("regions at first use (kernel chosen, or fallback and why):")
        lines += [format_run(r) for r in data["runs"]]
    for reason, n in data["graph_breaks"].items():
        lines.append(f"graph break x{n}: {reason}")
    return "\n".join(lines)


def _report_on() -> bool:
    """``UHOP_FUSION_REPORT`` (read at each event: it is switched on around a compile)."""
    from uhop.config import read

    return bool(read("fusion_report"))
