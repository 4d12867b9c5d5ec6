"""One-line warnings to the user (stderr), for library code that must say what it did, and the
progress of long steps (training, embedding): a bar on a terminal, plain lines in a log."""

from __future__ import annotations

import math
import os
import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Seconds between two plain progress lines when the output is not a terminal (a log, CI, nohup).
PROGRESS_INTERVAL_ENV = "XBT_BENCH_PROGRESS_S"
DEFAULT_PROGRESS_INTERVAL_S = 30.0


def warn(message: str) -> None:
    """Print ``message`` as one yellow line on stderr (as written: brackets in it are text,
    not rich markup)."""
    Console(stderr=True).print(
        f"[yellow]{escape(message)}[/yellow]", highlight=False, soft_wrap=True
    )


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$XBT_BENCH_PROGRESS_S``, else 30."""
    try:
        value = float(os.environ.get(PROGRESS_INTERVAL_ENV, DEFAULT_PROGRESS_INTERVAL_S))
    except ValueError:
        return DEFAULT_PROGRESS_INTERVAL_S
    return value if math.isfinite(value) and value >= 0 else DEFAULT_PROGRESS_INTERVAL_S


def duration(seconds: float) -> str:
    """``seconds`` as ``42 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class StepProgress:
    """The progress of one long step of ``total`` units (steps, images, texts).

    On a terminal it is a rich bar (with the ``fields`` given to :meth:`advance`, e.g. the
    loss), removed when done if ``transient``. Elsewhere (output to a file, CI) a bar would only
    appear once finished, so it prints a plain line on stderr every :func:`progress_interval`
    seconds instead: the step, the rate, the ETA and the fields; and a last line when it
    printed any. Disabled, it prints nothing.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        unit: str = "steps",
        completed: int = 0,
        enabled: bool = True,
        console: Console | None = None,
        interval_s: float | None = None,
        transient: bool = True,
    ) -> None:
        self.desc = desc
        self.total = total
        self.unit = unit
        self.completed = completed
        self.fields: dict[str, str] = {}
        self.console = console if console is not None else Console(stderr=True)
        self.enabled = enabled
        self.terminal = self.console.is_terminal or self.console.is_jupyter
        self.interval_s = progress_interval() if interval_s is None else interval_s
        self.transient = transient
        self._bar: Progress | None = None
        self._task = None
        self._started = time.monotonic()
        self._first = completed
        self._last_line = self._started
        self._lines = 0

    def __enter__(self) -> StepProgress:
        self._started = self._last_line = time.monotonic()
        if self.enabled and self.terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[extra]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=self.transient,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(
                self.desc, total=self.total, completed=self.completed, extra=""
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, traceback)
        elif self.enabled and self._lines and kind is None:
            self.console.print(self.line(done=True), highlight=False, soft_wrap=True)

    def advance(self, n: int = 1, **fields: str) -> None:
        """Count ``n`` more units done (and show ``fields``, e.g. ``loss="1.2345"``)."""
        self.completed += n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self._bar is not None:
            extra = " ".join(f"{key} {value}" for key, value in self.fields.items())
            self._bar.update(self._task, completed=self.completed, extra=extra)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval_s and self.completed < self.total:
            self._last_line = now
            self._lines += 1
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    def line(self, done: bool = False) -> str:
        """The plain progress line: ``desc: 120/600 steps (20%), 3.1 steps/s, ETA 2 min 35 s``
        (or, ``done``, the time it took), then the fields."""
        elapsed = time.monotonic() - self._started
        rate = (self.completed - self._first) / elapsed if elapsed > 0 else 0.0
        share = 100 * self.completed / self.total if self.total else 100.0
        text = f"{self.desc}: {self.completed}/{self.total} {self.unit} ({share:.0f}%)"
        if done:
            text += f", done in {duration(elapsed)}"
        else:
            left = self.total - self.completed
            eta = duration(left / rate) if rate > 0 else "unknown"
            speed = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
            text += f", {speed} {self.unit}/s, ETA {eta}"
        return ", ".join([text, *(f"{key} {value}" for key, value in self.fields.items())])
