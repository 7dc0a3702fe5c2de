"""Progress on stderr: only when enabled (a terminal, or forced), throttled, one final line."""

from __future__ import annotations

import io

from vhdtool import progress as pg


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = pg.Progress(100 << 20, stream=out)
    for _ in range(100):
        bar.advance(1 << 20)
    bar.finish()
    assert out.getvalue() == ""


def test_terminal_shows_bytes_rate_and_time_left(monkeypatch) -> None:
    clock = iter(float(i) for i in range(1000))
    monkeypatch.setattr(pg.time, "monotonic", lambda: next(clock))
    out = Tty()
    bar = pg.Progress(4 << 30, "convert: ", stream=out)
    bar.advance(1 << 30)          # t=1: 1 GiB in 1 s
    bar.finish()
    text = out.getvalue()
    assert "convert: 1.0 GiB / 4.0 GiB  25.0%" in text
    assert "GiB/s" in text and "left" in text
    assert text.endswith("\n")


def test_forced_off_and_throttled(monkeypatch) -> None:
    out = Tty()
    bar = pg.Progress(10, stream=out, enabled=False)
    bar.advance(10)
    bar.finish()
    assert out.getvalue() == ""
    monkeypatch.setattr(pg.time, "monotonic", lambda: 5.0)   # the clock stands still
    out = Tty()
    bar = pg.Progress(1000, stream=out, enabled=True)
    for _ in range(1000):
        bar.advance(1)
    assert out.getvalue().count("\r") == 1                   # drawn once, not 1000 times


def test_human() -> None:
    assert pg.human(512) == "512 B"
    assert pg.human(1536) == "1.5 KiB"
    assert pg.human(3 << 40) == "3.0 TiB"
