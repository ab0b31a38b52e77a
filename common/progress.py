"""Progress of long work (feature extraction, rounds) that tells the truth.

On a terminal: rich's live line (bar, count, rate, time left), replaced as the work goes. Not
on a terminal (CI, a log file, `flwr log`): a plain line at the start, at most one every
``every`` seconds while it runs, and one at the end, so logs stay short and greppable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _rate_and_left(done: int, total: int, seconds: float) -> tuple[float, float | None]:
    rate = done / seconds if seconds > 0 else 0.0
    return rate, ((total - done) / rate if rate > 0 else None)


def _per(rate: float, unit: str) -> str:
    """``85 images/s``, or per minute for slow work (rounds)."""
    unit = f" {unit}" if unit else ""
    return f"{rate:.0f}{unit}/s" if rate >= 1 else f"{rate * 60:.1f}{unit}/min"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class LiveProgress:
    """``update(done)`` as work on ``total`` units advances; ``close()`` when it ends.

    ``live`` forces the terminal line on or off (default: whether ``stream`` is a terminal).
    """

    def __init__(self, label: str, total: int, unit: str = "images", *,
                 stream: TextIO | None = None, every: float = 10.0,
                 live: bool | None = None) -> None:
        self.label, self.total, self.unit, self.every = label, max(int(total), 0), unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.started = self._said = time.monotonic()
        self.done = 0
        self._bar = None
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn(unit),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[note]}"),
                                 console=Console(file=self.stream), transient=True)
            self._task = self._bar.add_task(label, total=self.total, rate="", note="")
            self._bar.start()
        else:
            self._say(f"{label}: 0/{self.total} {unit}")

    def update(self, done: int, note: str = "") -> None:
        """``done`` units so far; ``note`` (e.g. the last round's accuracy) shown beside."""
        self.done = min(int(done), self.total)
        rate, left = _rate_and_left(self.done, self.total, time.monotonic() - self.started)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=_per(rate, ""), note=note,
                             refresh=True)
        elif time.monotonic() - self._said >= self.every and self.done < self.total:
            self._say(f"{self.label}: {self.done}/{self.total} {self.unit}, "
                      f"{_per(rate, self.unit)}, about {_duration(left)} left"
                      + (f"; {note}" if note else ""))

    def close(self) -> str:
        """Stops the live line; prints and returns the summary."""
        seconds = time.monotonic() - self.started
        rate, _ = _rate_and_left(self.done, self.total, seconds)
        summary = (f"{self.label}: {self.done}/{self.total} {self.unit} in {seconds:.1f} s "
                   f"({_per(rate, self.unit)})")
        if self._bar is not None:
            self._bar.stop()
        self._say(summary)
        return summary

    def say(self, line: str) -> None:
        """A line of output above the live line (or simply printed)."""
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def _say(self, line: str) -> None:
        self._said = time.monotonic()
        self.say(line)


class ProgressCallback:
    """A ``(done, total)`` callback that opens its `LiveProgress` at the first call (when the
    total is known; never, if no work turns up, e.g. every feature was cached)."""

    def __init__(self, label: str, unit: str = "images", **options: object) -> None:
        self.label, self.unit, self.options = label, unit, options
        self.line: LiveProgress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.line is None:
            self.line = LiveProgress(self.label, total, self.unit, **self.options)  # type: ignore[arg-type]
        self.line.update(done)

    def close(self) -> str | None:
        return self.line.close() if self.line is not None else None

    def __enter__(self) -> ProgressCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # the summary even when the work failed: how far it got
