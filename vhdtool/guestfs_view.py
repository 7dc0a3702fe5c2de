"""The libguestfs engine's guest views over a launched, mounted handle.

* :class:`GuestfsView`: the checks' read-only :class:`checks.guest.GuestView`, cached (the image
  cannot change under a read-only mount) with directory listings prefetched in one ``lstatnslist``
  and ``readlinklist`` each, and bounded ``pread`` reads.
* :class:`GuestfsWritableView`: the same view writing through the handle
  (:class:`checks.fixes.WritableGuestView`, for ``vhdtool fix``): into libguestfs' discarded
  overlay when the drive was added read-only, into ``vhdtool fix``'s own qcow2 overlay when that
  was added read-write -- the source image is never written.  Each write drops the caches; a
  failed write (a full disk in the appliance...) raises :class:`~checks.fixes.FixError` naming
  the file; guest programs run chrooted in the guest (``command``: libguestfs bind-mounts
  ``/dev``, ``/proc`` and ``/sys`` into it), bounded by the guest's own ``timeout``.

References: guestfs(3) (``lstatns``, ``lstatnslist``, ``readlinklist``, ``ls``, ``pread``,
``write``, ``chmod``, ``mkdir_p``, ``rm_rf``, ``ln_sf``, ``command``; ``add_drive_opts``
readonly: writes go to a discarded overlay); timeout(1) (``-s KILL``; exit 124 on time-out).
"""

from __future__ import annotations

import stat as statmod
import time
from collections.abc import Sequence
from typing import Any

from vhdtool.checks.fixes import FixError
from vhdtool.checks.guest import Stat

#: bytes per pread message (libguestfs' protocol carries up to ~4 MB per message)
READ_CHUNK = 2 << 20


class GuestfsView:
    """:class:`checks.guest.GuestView` over a mounted libguestfs handle (cached, read-only)."""

    def __init__(self, g: Any) -> None:
        self.g = g
        self._stat: dict[str, Stat | None] = {}
        self._links: dict[str, str | None] = {}
        self._dirs: dict[str, list[str]] = {}
        self.calls = 0

    def _call(self, name: str, *args: Any) -> Any:
        self.calls += 1
        return getattr(self.g, name)(*args)

    @staticmethod
    def _to_stat(st: dict[str, int]) -> Stat:
        return Stat(st["st_mode"], st["st_size"], st["st_uid"], st["st_gid"])

    def lstat(self, path: str) -> Stat | None:
        if path not in self._stat:
            try:
                self._stat[path] = self._to_stat(self._call("lstatns", path))
            except RuntimeError:
                self._stat[path] = None
        return self._stat[path]

    def readlink(self, path: str) -> str | None:
        if path not in self._links:
            try:
                self._links[path] = self._call("readlink", path)
            except RuntimeError:
                self._links[path] = None
        return self._links[path]

    def list_dir(self, path: str) -> list[str]:
        if path not in self._dirs:
            try:
                names = list(self._call("ls", path))
            except RuntimeError:
                names = []
            self._dirs[path] = names
            self._prefetch(path, names)
        return self._dirs[path]

    def _prefetch(self, path: str, names: list[str]) -> None:
        """Stat (and readlink) every entry in one call each, so walks cost few round trips."""
        if not names:
            return
        base = path.rstrip("/")
        try:
            stats = self._call("lstatnslist", path, names)
        except RuntimeError:
            return
        links = []
        for name, st in zip(names, stats):
            full = f"{base}/{name}"
            self._stat[full] = self._to_stat(st)
            if statmod.S_ISLNK(st["st_mode"]):
                links.append(name)
        if links:
            try:
                targets = self._call("readlinklist", path, links)
            except RuntimeError:
                return
            for name, target in zip(links, targets):
                self._links[f"{base}/{name}"] = target or None

    def read_raw(self, path: str, limit: int) -> bytes | None:
        """Up to ``limit`` bytes of a regular file, in ``pread`` pieces of :data:`READ_CHUNK`.

        (A 16 MB initramfs: ~0.35 s this way under TCG, ~1.5 s through ``download`` and a
        temporary file.)
        """
        st = self.lstat(path)
        if st is None:
            return None
        size = min(st.size, limit)
        parts, done = [], 0
        while done < size:
            piece = bytes(self._call("pread", path, min(READ_CHUNK, size - done), done))
            if not piece:
                break          # the file is shorter than its stat said
            parts.append(piece)
            done += len(piece)
        return b"".join(parts)


class GuestfsWritableView(GuestfsView):
    """A :class:`GuestfsView` that writes: :class:`checks.fixes.WritableGuestView`."""

    def _changed(self) -> None:
        self._stat.clear()
        self._links.clear()
        self._dirs.clear()

    def _write_call(self, what: str, name: str, *args: Any) -> None:
        try:
            self._call(name, *args)
        except RuntimeError as e:
            raise FixError(f"{what}: {str(e).splitlines()[0] if str(e) else e}") from None
        finally:
            self._changed()

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Replace or create a regular file; an existing file keeps its owner and mode (it is
        truncated and written, not replaced), a new one is root's with ``mode``."""
        st = self.lstat(path)
        if st is not None and not st.is_reg:
            self._write_call(f"cannot replace {path}", "rm_rf", path)
            st = None
        self._write_call(f"cannot write {path}", "write", path, data)
        if st is None:
            self._write_call(f"cannot set the mode of {path}", "chmod", mode, path)

    def make_dir(self, path: str) -> None:
        self._write_call(f"cannot make the directory {path}", "mkdir_p", path)

    def remove(self, path: str) -> None:
        self._write_call(f"cannot delete {path}", "rm_rf", path)

    def symlink(self, target: str, path: str) -> None:
        self._write_call(f"cannot make the link {path} -> {target}", "ln_sf", target, path)

    def run(self, argv: Sequence[str], timeout: float) -> str:
        """``argv`` chrooted in the guest, killed after ``timeout`` seconds (the guest's
        ``timeout``); FixError naming the program when it fails or times out."""
        limit = max(1, int(timeout + 0.999))
        start = time.monotonic()
        try:
            return str(self._call("command", ["timeout", "-s", "KILL", str(limit), *argv]))
        except RuntimeError as e:
            took = time.monotonic() - start
            what = " ".join(argv)
            if took >= limit:
                raise FixError(f"{what}: timed out after {limit} s in the guest") from None
            first = str(e).strip().splitlines()
            raise FixError(f"{what}: failed in the guest ({first[-1] if first else e})") from None
        finally:
            self._changed()


__all__ = ["GuestfsView", "GuestfsWritableView", "READ_CHUNK"]
