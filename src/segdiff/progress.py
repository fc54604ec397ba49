"""Progress display for long loops: a tqdm bar on a terminal, plain lines everywhere else.

A redrawn bar is one line on a terminal but, written to a file or a CI log, it becomes a
carriage-return-separated flood of thousands of updates. When stderr is not a terminal,
`progress` returns a `PlainProgress` that prints a whole line now and then instead:

    train: step 250/7000 (3.6 %), 2.1 it/s, loss 0.0412, elapsed 2:00, eta 53:40

Both answer the few calls the loops make: `update`, `set_postfix`, `write` and `close`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["progress", "PlainProgress"]


def _clock(seconds: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainProgress:
    """Progress as whole lines on `stream`: one at each multiple of `every` steps and one when
    `every_s` seconds have passed since the last line (None leaves either out), and one at `close`.

    The rate and the eta count the steps of this session only (`initial` steps were done before).
    `write` prints a message to stdout, as tqdm's does.
    """

    def __init__(self, total: int, desc: str, *, initial: int = 0, every: int | None = None,
                 every_s: float | None = 30.0, unit: str = "step", stream: TextIO | None = None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"every={every} must be >= 1 (or None)")
        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self.every, self.every_s, self.unit, self.stream = every, every_s, unit, stream
        self.postfix: dict[str, Any] = {}
        self.started = self.last_time = time.monotonic()
        self.last_n = initial
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if ((self.every is not None and self.n // self.every > self.last_n // self.every)
                or (self.every_s is not None and now - self.last_time >= self.every_s)):
            self._print(now)

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line (`loss 0.0412`), replacing the previous ones."""
        self.postfix = values

    def write(self, message: str) -> None:
        print(message, flush=True)

    def refresh(self) -> None:
        """Nothing to redraw: a changed `total` shows in the next line (tqdm's bar redraws here)."""

    def close(self) -> None:
        if not self.closed and self.n != self.last_n:
            self._print(time.monotonic())
        self.closed = True

    def line(self, now: float) -> str:
        """The line printed at time `now` (time.monotonic())."""
        elapsed = now - self.started
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.unit} {self.n}/{self.total}"
                 + (f" ({100 * self.n / self.total:.1f} %)" if self.total else ""),
                 f"{rate:.3g} it/s"]
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        parts.append(f"elapsed {_clock(elapsed)}")
        if rate > 0 and self.total:
            parts.append(f"eta {_clock(max(0, self.total - self.n) / rate)}")
        return ", ".join(parts)

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.stream or sys.stderr, flush=True)
        self.last_n, self.last_time = self.n, now


def progress(total: int, desc: str, *, enabled: bool = True, initial: int = 0, every: int | None = None,
             every_s: float | None = 30.0, unit: str = "step", stream: TextIO | None = None) -> tqdm | PlainProgress:
    """A progress display for a loop of `total` steps: tqdm's bar when `stream` (default stderr) is a
    terminal, else a `PlainProgress` printing a line every `every` steps or `every_s` seconds
    ("`desc`: `unit` 250/7000 (3.6 %), ...").

    `enabled=False` shows nothing (a disabled tqdm bar, whose `write` still prints). For example:

        bar = progress(1000, "train", every=50)
        for step in range(1000): ...; bar.set_postfix(loss="0.0412"); bar.update(1)
        bar.close()
    """
    stream = stream or sys.stderr
    if not enabled:
        return tqdm(total=total, initial=initial, disable=True)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=stream)
    return PlainProgress(total, desc, initial=initial, every=every, every_s=every_s, unit=unit, stream=stream)
