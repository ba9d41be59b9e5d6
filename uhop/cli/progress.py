"""Progress for long CLI work: a live bar on a terminal, a plain line every few seconds when piped.

``with Reporter(console, "candidates") as rep: rep.update(done, total, "best 1.2 ms")``. On a
terminal it is a rich progress bar (cleared at the end); otherwise (a pipe, a CI log, a file) it
prints ``candidates 12/40  31 s  best 1.2 ms`` at most every ``every_s`` seconds, plus the first
and the last update, so a log always shows the work is alive and how far it got.
"""

from __future__ import annotations

import time
from typing import Any


class Reporter:
    def __init__(self, console: Any, label: str, every_s: float = 5.0, live: bool | None = None) -> None:
        self.console = console
        self.label = label
        self.every_s = every_s
        self.live = console.is_terminal if live is None else live
        self._prog = None
        self._task = None
        self._t0 = time.perf_counter()
        self._last_line = -float("inf")
        self._pending: tuple[int, int | None, str] | None = None

    def __enter__(self) -> Reporter:
        self._t0 = time.perf_counter()
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._prog = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[note]}"), console=self.console, transient=True,
            )  # fmt: skip
            self._prog.__enter__()
            self._task = self._prog.add_task(self.label, total=None, note="")
        return self

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        """``done`` of ``total`` (None or 0: unknown) items finished; ``note`` is shown after."""
        if self._prog is not None:
            self._prog.update(self._task, completed=done, total=total or None, note=note)
            return
        now = time.perf_counter()
        self._pending = (done, total, note)
        if now - self._last_line >= self.every_s:
            self._line(now)

    def _line(self, now: float) -> None:
        if self._pending is None:
            return
        done, total, note = self._pending
        count = f"{done}/{total}" if total else f"{done}"
        self.console.print(f"{self.label} {count}  {now - self._t0:.0f} s" + (f"  {note}" if note else ""),
                           highlight=False, soft_wrap=True)  # fmt: skip
        self._last_line = now
        self._pending = None

    def __exit__(self, *exc: Any) -> None:
        if self._prog is not None:
            self._prog.__exit__(*exc)
        elif exc[0] is None:
            self._line(time.perf_counter())  # the final count, unless it was just printed
