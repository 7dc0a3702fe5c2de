"""Exit codes, decided in one place (docs/exit-codes.md documents them for pipeline authors)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # imported where used: `vhdtool convert` need not load the check catalog
    from vhdtool.checks.catalog import Result, Severity, Verdict


class Exit(enum.IntEnum):
    OK = 0               #: nothing at or above --fail-on
    FINDINGS = 1         #: findings at or above --fail-on (or a report that could not be written)
    CHANGES = 1          #: ``vhdtool fix --diff``: fixes would change the image (as diff(1))
    USAGE = 2            #: bad command line (click's own code for usage errors)
    BAD_IMAGE = 3        #: unreadable, corrupt or unsupported image
    MISSING_TOOL = 4     #: a required tool is missing (libguestfs for guest checks...)
    CONVERT_FAILED = 5   #: ``vhdtool convert`` refused or failed (DST exists, disk full...)
    FIX_FAILED = 6       #: ``vhdtool fix``: a fix could not be applied (no DST is left)
    HANGUP = 129         #: SIGHUP (the terminal went away): 128 + 1, as a shell reports it
    INTERRUPTED = 130    #: Ctrl-C / SIGINT: 128 + 2
    TERMINATED = 143     #: SIGTERM (CI timeouts, systemd, ``timeout``): 128 + 15


class OutputError(Exception):
    """A report or manifest file could not be written (disk full, permissions ...): exit
    FINDINGS, as a gate whose report is missing has not passed."""


class FixFailed(Exception):
    """``vhdtool fix``: a fix could not be applied (a guest program failed or timed out, a full
    disk in the appliance...); the message names the fix and the file or program. Exit
    FIX_FAILED; DST and the temporary files are gone, the source untouched."""


class GuestUnopenable(Exception):
    """``vhdtool fix``: the image's guest cannot be opened, so nothing can be fixed: exit
    BAD_IMAGE (no DST is written)."""


def check_exit(results: Iterable[Result], fail_on: Severity) -> Exit:
    """The exit code of ``vhdtool check``: FINDINGS if any result trips the --fail-on gate.

    A result trips it when it failed at or above ``fail_on``, or when the check itself crashed
    (its verdict is unknown, so a gate must not pass it silently).
    """
    return Exit.FINDINGS if any(trips(r.verdict, r.severity, fail_on) for r in results) else Exit.OK


def trips(verdict: Verdict, severity: Severity, fail_on: Severity) -> bool:
    from vhdtool.checks.catalog import Verdict

    return verdict is Verdict.ERROR or (verdict is Verdict.FAIL and severity >= fail_on)
