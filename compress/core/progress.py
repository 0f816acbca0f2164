"""Rich progress for long stages: a live bar with the loss terms, one summary line per epoch."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

BAR_WIDTH = 20
"""Width of the training progress bar (fixed, so the loss terms get the rest of the line)."""

PIPED_WIDTH = 120
"""Width of output to a pipe or file (CI logs) when `COLUMNS` does not say."""


def _width() -> int | None:
    """None lets rich use the terminal's width; `COLUMNS` wins when set, even when piped."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stderr.isatty() else PIPED_WIDTH


console = Console(stderr=True, highlight=False, soft_wrap=True, width=_width())


def stdout_console() -> Console:
    """A console on stdout (what a command prints as its result), sized like `console`."""
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else None if sys.stdout.isatty() else PIPED_WIDTH
    return Console(highlight=False, width=width)


def count_text(n: int) -> str:
    """A parameter count for people: 900, 48.0K, 0.34M, 1.23M (never '0.00M' for a small model)."""
    if n >= 1e5:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def quiet() -> bool:
    """True when progress bars should be off (KDTOOL_QUIET=1, e.g. in tests)."""
    return os.environ.get("KDTOOL_QUIET", "") == "1"


class EpochBar:
    """Progress of one training stage; `advance` shows the running mean of each loss term."""

    def __init__(self, progress: Progress | None, label: str, epochs: int, steps: int) -> None:
        self.progress, self.label, self.epochs, self.steps = progress, label, epochs, steps
        self.task = None

    def start_epoch(self, epoch: int) -> None:
        if self.progress is None:
            return
        desc = f"{self.label} {epoch}/{self.epochs}"
        if self.task is None:
            self.task = self.progress.add_task(desc, total=self.steps, terms="")
        self.progress.reset(self.task, total=self.steps, description=desc, terms="")

    def advance(self, terms: dict[str, float]) -> None:
        if self.progress is not None and self.task is not None:
            text = " ".join(f"{k}={v:.3f}" for k, v in terms.items())
            self.progress.update(self.task, advance=1, terms=self._fit(text))

    def _fit(self, text: str) -> str:
        """Cut the loss terms (…) so description, bar, count and times stay whole on one line."""
        desc = self.progress.tasks[self.task].description
        count = 2 * len(str(self.steps)) + 1
        room = self.progress.console.width - len(desc) - BAR_WIDTH - count - 2 * len("0:00:00") - 5
        return text if len(text) <= room else text[: max(0, room - 1)] + "…"

    def end_epoch(self, record: dict[str, Any], metric: str) -> None:
        if quiet():
            return
        losses = " ".join(f"{k[5:]}={v:.4f}" for k, v in record.items() if k.startswith("loss_"))
        extra = f" agree={record['teacher_agreement']:.3f}" if "teacher_agreement" in record else ""
        schedule = f" alpha={record['alpha']:.2f} T={record['temperature']:.1f}" if record.get("alpha", 1) < 1 else ""
        value = record.get("val_" + metric)  # None: undefined on this validation split
        console.print(f"  {self.label} epoch {record['epoch']}/{self.epochs}: {losses} "
                      f"val_{metric}={'null' if value is None else f'{value:.4f}'}{schedule}{extra}")

    def log(self, message: str) -> None:
        if not quiet():
            console.print(message)


@contextlib.contextmanager
def epoch_progress(label: str, epochs: int, steps: int, enabled: bool = True) -> Iterator[EpochBar]:
    """A live progress bar for `epochs` × `steps` (disabled when quiet or not on rank 0)."""
    if not enabled or quiet():
        yield EpochBar(None, label, epochs, steps)
        return
    # the bar, count and times first and fixed; the loss terms last, cut with … at the terminal's edge
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=BAR_WIDTH), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[terms]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
                        console=console, transient=True)
    with progress:
        yield EpochBar(progress, label, epochs, steps)


@contextlib.contextmanager
def format_status(message: str) -> Iterator[None]:
    """A transient spinner with elapsed time while one step runs (a terminal only; nothing when quiet)."""
    if quiet() or not console.is_terminal:
        yield
        return
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                        transient=True)
    with progress:
        progress.add_task(message, total=None)
        yield


def progress_line(message: str) -> None:
    """One dim line of progress (e.g. an artifact done and its time); nothing when quiet."""
    if not quiet():
        console.print(f"[dim]{message}[/]", highlight=False)


@contextlib.contextmanager
def task_progress(description: str, total: int | None) -> Iterator[Any]:
    """A simple progress bar for non-training work (calibration, caching, benchmarking)."""
    if quiet():
        class _Null:
            def advance(self, n: int = 1) -> None: ...

        yield _Null()
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    with progress:
        tid = progress.add_task(description, total=total)

        class _Bar:
            def advance(self, n: int = 1) -> None:
                progress.advance(tid, n)

        yield _Bar()
