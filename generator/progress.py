"""Progress of a long command (enroll, replay --failed, setup): on a terminal a bar with its ETA
(click.progressbar, redrawn in place); elsewhere (CI logs, pipes) a line at most every `every_s` seconds or
every tenth of the way, whichever comes first — a 10,000-patient enroll writes about ten lines, not hundreds."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar


def on_terminal(stream=None) -> bool:
    stream = stream if stream is not None else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """`update(done, note)` moves it to `done` of `total`; `close(summary)` ends it (the summary is printed)."""

    def __init__(
        self,
        total: int,
        label: str,
        *,
        echo: Callable[[str], None] = click.echo,
        tty: bool | None = None,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        file=None,
    ):
        self.total, self.label, self.echo, self.every_s, self.clock = max(0, total), label, echo, every_s, clock
        self.tty = on_terminal(file) if tty is None else tty
        self.done, self.note = 0, ""
        self.t0 = clock()
        self._last_line_at: float | None = None
        self._last_tenth = -1
        self._last_note: str | None = None
        self._bar: ProgressBar[int] | None = None
        if self.tty and self.total:
            self._bar = click.progressbar(
                length=self.total,
                label=label,
                show_eta=True,
                show_percent=True,
                show_pos=True,
                item_show_func=lambda _: self.note or None,
                file=file,
            )
            self._bar.__enter__()

    def update(self, done: int, note: str = "") -> None:
        done = max(0, min(done, self.total)) if self.total else max(0, done)
        step, self.done, self.note = done - self.done, done, note
        if self._bar is not None:
            self._bar.update(step) if step > 0 else self._bar.render_progress()
            return
        self._maybe_line()

    def _maybe_line(self) -> None:
        now = self.clock()
        tenth = (10 * self.done // self.total) if self.total else 0
        due = (
            self._last_line_at is None
            or tenth > self._last_tenth
            or self.note != self._last_note
            or now - self._last_line_at >= self.every_s
        )
        if not due:
            return
        self._last_line_at, self._last_tenth, self._last_note = now, tenth, self.note
        self.echo(self.line())

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        parts = [
            f"  {self.label}: {self.done}"
            + (f"/{self.total} ({100 * self.done // self.total} %)" if self.total else "")
        ]
        if self.total and 0 < self.done < self.total:
            eta = elapsed / self.done * (self.total - self.done)
            parts.append(f"ETA {_duration(eta)}")
        parts.append(f"{_duration(elapsed)} elapsed")
        return ", ".join(parts) + (f" — {self.note}" if self.note else "")

    def close(self, summary: str | None = None) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
        if summary:
            self.echo(summary)


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"
