"""Signals: SIGTERM and SIGHUP end vhdtool as Ctrl-C does -- cleanly, with nothing left behind.

Python turns SIGINT into KeyboardInterrupt, which every write path already treats as "stop, remove
the partial file, exit 130"; :func:`install` makes SIGTERM (what CI runners, systemd and
``timeout`` send) and SIGHUP (a closed terminal) raise :class:`Terminated`, a KeyboardInterrupt
that remembers its signal, so the same clean-up runs and the exit code is 128 + the signal's number
(143 for SIGTERM), as a shell reports a process killed by it.  :func:`deferred_signals` holds the
three back while a file is being given its final name, so that an interruption is either before
(no file) or after (a complete file, and the message says so) -- never in between.

References: signal(7) (the default actions and the 128+N convention of sh), pthread_sigmask(3).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

#: the signals that end vhdtool cleanly
ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is, like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class InterruptedAfterOutput(KeyboardInterrupt):
    """Interrupted once the output file was complete and had its final name: say so."""

    def __init__(self, signum: int, path: str) -> None:
        super().__init__(signum, path)
        self.signum, self.path = signum, path


def _raise(signum: int, _frame: Any) -> None:
    raise Terminated(signum)


def install() -> None:
    """SIGTERM and SIGHUP raise Terminated in the main thread (SIGINT stays Python's own)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _raise)


def exit_code(exc: BaseException) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def describe(exc: BaseException) -> str:
    """The one line vhdtool prints when a signal ended it."""
    name = signal.Signals(exit_code(exc) - 128).name
    if isinstance(exc, InterruptedAfterOutput):
        return (f"interrupted ({name}) after {exc.path} was complete: it is a finished, verified "
                f"file; only the summary was not printed")
    return f"interrupted ({name})"


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back for the duration (main thread only; elsewhere a
    no-op); one that arrived meanwhile is delivered when the block ends."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, ENDING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
