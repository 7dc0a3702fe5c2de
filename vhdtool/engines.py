"""Which guest engine ``vhdtool check`` uses: ``--engine auto|native|guestfs``.

* ``native`` (:mod:`vhdtool.native_engine`): in-process pure-Python readers, well under a second,
  no root, KVM or appliance; reads ext2/3/4, XFS, btrfs, FAT, LVM2.
* ``guestfs`` (:mod:`vhdtool.guestfs_engine`): libguestfs's appliance (~10 s under TCG), reads
  whatever the Linux kernel reads.
* ``auto``: native when its readers are installed and it can read every filesystem the guest mounts
  (the root holding /etc/fstab and every fstab entry); libguestfs otherwise. The choice and its
  reason go to stderr and into the report (``CheckRun.extra["guest_engine"]``).

Both engines receive the run's opened disk (:class:`vhdtool.disk.Disk`), mount through the same
core (:mod:`vhdtool.mountplan`) and share their session and timing types (:mod:`vhdtool.session`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .session import notice, warn

ENGINES = ("auto", "native", "guestfs")


@dataclass(frozen=True)
class Choice:
    name: str | None     #: "native", "guestfs", or None when no engine could open the guest
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason}


class AutoEngine:
    """Tries the native engine, falls back to libguestfs; ``choice`` says which and why."""

    def __init__(self, mode: str = "auto", timeout: float = 300.0, progress: bool = True,
                 native_timeout: float | None = None) -> None:
        if mode not in ENGINES:
            raise ValueError(f"unknown guest engine {mode!r} (one of {', '.join(ENGINES)})")
        self.mode, self.timeout, self.progress = mode, timeout, progress
        self.native_timeout = native_timeout
        self.engine: Any = None
        self.choice: Choice | None = None
        self.skip_reason: str | None = None

    @property
    def timing(self) -> Any:
        return getattr(self.engine, "timing", None)

    def _guestfs(self, image: str, disk: Any, why: str) -> Any:
        from .guestfs_engine import GuestfsEngine
        self.engine = GuestfsEngine(progress=self.progress, timeout=self.timeout)
        self.choice = Choice("guestfs", why)
        notice(f"guest engine: libguestfs ({why})")
        guest = self.engine(image, disk)
        self.skip_reason = self.engine.skip_reason
        return guest

    def __call__(self, image: str, disk: Any) -> Any:
        from . import native_engine as ne
        if self.mode == "guestfs":
            return self._guestfs(image, disk, "--engine guestfs")
        missing = ne.available()
        if missing is not None:
            if self.mode == "native":
                raise ne.NativeEngineUnavailable(f"--engine native: {missing}")
            from .guestfs_engine import GuestEngineUnavailable
            try:
                return self._guestfs(image, disk, f"native readers unavailable: {missing}")
            except GuestEngineUnavailable as e:
                raise GuestEngineUnavailable(f"no guest engine: the native engine's readers are "
                                             f"missing ({missing}) and {e}") from None
        quiet: list[str] = []
        say = quiet.append if self.mode == "auto" else warn
        limit = self.native_timeout or min(self.timeout, ne.DEFAULT_TIMEOUT)
        native = ne.NativeEngine(timeout=limit, warn=say)
        guest = native(image, disk)
        if self.mode == "native":
            self.engine, self.skip_reason = native, native.skip_reason
            self.choice = Choice("native" if guest is not None else None,
                                 "--engine native" + (f": {native.skip_reason}"
                                                      if guest is None else ""))
            notice(f"guest engine: native ({self.choice.reason})")
            return guest
        if guest is None:
            return self._guestfs(image, disk, f"the native engine cannot open the guest: "
                                               f"{native.skip_reason}")
        unreadable = native.session.timing.unreadable if native.session else []
        if unreadable:
            native.close()
            return self._guestfs(image, disk, "the guest mounts filesystems the native engine "
                                               f"cannot read: {'; '.join(unreadable)}")
        self.engine = native
        for msg in quiet:
            warn(msg)
        mounted = ", ".join(f"{fs.fstype} {fs.mountpoint}" for fs in native.session.filesystems
                            if fs.mountpoint)
        self.choice = Choice("native", f"it reads every filesystem the guest mounts: {mounted}")
        notice(f"guest engine: native ({self.choice.reason})")
        return guest

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


__all__ = ["AutoEngine", "Choice", "ENGINES"]
