"""Progress of long steps (zipping, installing, uploading, waiting), shown with rich on stderr.

Commands report through :class:`Reporter`; packaging and readiness never import rich themselves.
Progress is shown only on a terminal and never with ``--output json``, so scripts see clean output.
"""

from __future__ import annotations

import sys
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class Reporter(Protocol):
    def start(self, description: str, total: int | None = None) -> None: ...
    def advance(self, amount: int = 1) -> None: ...
    def finish(self) -> None: ...
    def note(self, text: str) -> None: ...


class QuietReporter:
    """Reports nothing (scripts, pipes, tests)."""

    def __enter__(self) -> QuietReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class RichReporter:
    """One progress line per step; a step without a total shows a spinner."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)
        self._task: int | None = None

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
        self._progress.stop()

    def start(self, description: str, total: int | None = None) -> None:
        self.finish()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, total=task.total or task.completed or 1,
                                  completed=task.total or task.completed or 1)
            self._task = None

    def note(self, text: str) -> None:
        self._progress.console.print(text)


def stderr_console() -> Console:
    return Console(file=sys.stderr)


def wants_progress(output: str) -> bool:
    return output != "json" and sys.stderr.isatty()
