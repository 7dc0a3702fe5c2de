"""What both guest engines share: the timing, the opened session, the pipeline's engine callable,
and how they speak (the ``vhdtool`` logger, configured by ``vhdtool.cli``).

* :class:`Timing`: appliance launch (libguestfs only), volumes + mounts + facts, checks.
* :class:`Session`: an opened guest -- the checks' :class:`checks.guest.Guest`, the filesystems
  with their mountpoints, the timing, and the backend (:class:`vhdtool.mountplan.MountBackend`)
  that ``close()`` releases.
* :class:`Engine`: ``engine(image, disk)`` opens the guest once for ``vhdtool.pipeline`` (None
  with ``skip_reason`` when it cannot), ``close()`` closes it; subclasses say how to open.
* :func:`warn` and :func:`notice`: warnings (``vhdtool: warning: ...``) and what a person
  watching should see (the engine chosen, the appliance starting) -- shown by default; ``-v``
  adds the timings (INFO).

References: Python ``logging`` (levels, ``addLevelName``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:        # the CLI imports NOTICE: convert must not pay for the checks
    from vhdtool.checks.guest import Filesystem, Guest

log = logging.getLogger("vhdtool")
#: between INFO and WARNING: shown unless the CLI is asked to be quieter than its default
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")


def warn(msg: str) -> None:
    log.warning("warning: %s", msg)


def notice(msg: str) -> None:
    log.log(NOTICE, "%s", msg)


@dataclass
class Timing:
    """Seconds spent opening and checking one guest (``-v`` prints :meth:`describe`)."""

    #: libguestfs appliance launch (0 for the native engine)
    launch: float = 0.0
    #: volumes probed, root found, fstab mounted, guest facts collected
    inspect: float = 0.0
    checks: float = 0.0
    #: "native", or how the appliance ran: "KVM" / "TCG"
    backend: str = "native"
    attempts: list[str] = field(default_factory=list)
    #: fstab entries the engine could not mount, and why
    unreadable: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.backend == "native":
            return (f"native engine: volumes, filesystems and mounts {self.inspect:.2f} s, "
                    f"checks {self.checks:.2f} s")
        return (f"appliance launch {self.launch:.1f} s ({self.backend}), inspection and mounts "
                f"{self.inspect:.1f} s, checks {self.checks:.2f} s")


@dataclass
class Session:
    """An opened guest; ``close()`` (or ``with``) releases the backend (appliance, readers)."""

    path: str
    fmt: str
    guest: Guest
    filesystems: tuple[Filesystem, ...]
    timing: Timing
    backend: Any

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engine:
    """The pipeline's guest engine: ``engine(image, disk)`` opens the guest once.

    Subclasses implement :meth:`open` (a :class:`Session`) and list in ``skips`` the exceptions
    that mean "this guest cannot be opened" (then None is returned and ``skip_reason`` says why),
    in ``fatal`` those among them that propagate all the same (a missing tool: exit 4).
    """

    name = ""
    skips: tuple[type[BaseException], ...] = ()
    fatal: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self.session: Session | None = None
        self.timing: Timing | None = None
        self.skip_reason: str | None = None

    def open(self, image: str, disk: Any) -> Session:
        raise NotImplementedError

    def __call__(self, image: str, disk: Any) -> Guest | None:
        try:
            self.session = self.open(image, disk)
        except self.skips as e:
            if isinstance(e, self.fatal):
                raise
            self.skip_reason = self.describe_failure(image, e)
            return None
        self.timing = self.session.timing
        return self.session.guest

    def describe_failure(self, image: str, e: BaseException) -> str:
        return str(e)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


__all__ = ["Timing", "Session", "Engine", "warn", "notice", "log", "NOTICE"]
