"""Exit codes, decided in one place (docs/exit-codes.md documents them for pipeline authors)."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    OK = 0               #: nothing at or above --fail-on
    FINDINGS = 1         #: findings at or above --fail-on (or a failed conversion)
    USAGE = 2            #: bad command line (click's own code for usage errors)
    BAD_IMAGE = 3        #: unreadable, corrupt or unsupported image
    MISSING_TOOL = 4     #: a required tool is missing (libguestfs for guest checks...)
    INTERRUPTED = 130    #: Ctrl-C / SIGINT
