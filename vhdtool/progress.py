"""Progress of a long operation on stderr: bytes done, rate, time left.

Shown only when a person is watching (stderr is a terminal) unless forced on or off; redrawn at
most a few times a second so it never costs measurable time.  Library code reports through
:class:`Progress`; only the CLI decides whether it is visible.

References: none (presentation only).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: seconds between redraws
INTERVAL = 0.25


def human(n: float) -> str:
    """``n`` bytes as a short binary-prefixed figure (``1.5 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Counts bytes towards ``total`` and redraws one status line on ``stream`` when enabled."""

    def __init__(self, total: int, label: str = "", *, enabled: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.total = max(total, 0)
        self.label = label
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= INTERVAL:
            self._last = now
            self._draw(now)

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.label}{human(self.done)} / {human(self.total)} {pct:5.1f}%  "
                f"{human(rate)}/s  {_clock(left)} left")

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line(now) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
