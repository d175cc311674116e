"""Signs of life for long work: a rich spinner or bar on stderr, on a terminal only.

A step shows nothing for its first second, so quick commands print nothing extra, and nothing
at all when stderr is not a terminal (a pipe, a file, CI). Its display vanishes when it ends.
The display is drawn by rich's own thread a few times a second; the work only bumps a counter.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator

DELAY = 1.0                 # seconds of work before anything is shown
_REFRESHES_PER_SECOND = 4   # rich redraws from its own thread: kept low so the work keeps the CPU

quiet = False               # set by --quiet


class Step:
    """A running step: `advance()` after each unit of `total`, `describe()` to say what it is at."""

    def __init__(self, label: str, total: int | None):
        self.label, self.total, self.done = label, total, 0
        self._lock = threading.Lock()
        self._progress = self._task = None
        self._ended = False

    def advance(self, units: int = 1) -> None:
        self.done += units
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)

    def describe(self, label: str) -> None:
        self.label = label
        if self._progress is not None:
            self._progress.update(self._task, description=label)

    def _show(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if self.total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        with self._lock:
            if self._ended:
                return
            # sys.stdout and sys.stderr stay as they are: this runs on a timer's thread, and the
            # command may be printing (a --trace line) at that moment.
            progress = Progress(*columns, console=Console(stderr=True), transient=True,
                                refresh_per_second=_REFRESHES_PER_SECOND,
                                redirect_stdout=False, redirect_stderr=False)
            self._task = progress.add_task(self.label, total=self.total, completed=self.done)
            progress.start()
            self._progress = progress

    def _end(self) -> None:
        with self._lock:
            self._ended = True
            if self._progress is not None:
                self._progress.stop()


def shown() -> bool:
    """Whether steps are shown: on a terminal, unless --quiet."""
    try:
        return not quiet and sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr replaced or closed
        return False


@contextlib.contextmanager
def step(label: str, total: int | None = None) -> Iterator[Step]:
    """Show `label` with a spinner (or a bar of `total` units) if the work takes over DELAY s."""
    current = Step(label, total)
    if not shown():
        yield current
        return
    timer = threading.Timer(DELAY, current._show)
    timer.daemon = True
    timer.start()
    try:
        yield current
    finally:
        timer.cancel()
        current._end()


def load_graph(path: str):
    """`Graph.load(path)`, shown as a `loading PATH` step: every command starts with it, and a big
    model (or a SavedModel to freeze) takes seconds."""
    from gtt_rules.console import plain
    from gtt_rules.engine.graph import Graph

    with step(f"loading {plain(path)}"):
        return Graph.load(path)
