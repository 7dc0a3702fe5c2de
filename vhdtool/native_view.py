"""The native engine's :class:`checks.guest.GuestView`: paths walked across mounted filesystems.

Paths are walked component by component across mountpoints (:func:`checks.guest.walk`, the one
link resolver the checks use too): symbolic links in the middle of a path are followed *inside
the guest* (an absolute target restarts at the guest's ``/``, ``..`` stops at it), at most
:data:`checks.guest.MAX_LINK_HOPS` links per lookup.  Every call runs under the session's
:class:`~vhdtool.native_io.Budget`; anything a reader raises becomes :class:`GuestReadError` (an
``OSError`` naming the image, the device, the filesystem and the guest path), which the catalog
reports as that check's error.

References: path_resolution(7) (ELOOP after 40 links; ENOTDIR; ``..`` at the root stays there).
"""

from __future__ import annotations

import posixpath
import stat as statmod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from vhdtool.checks.guest import GuestLoopError, Stat, walk

from .native_fs import Fs
from .native_io import Budget, Timeout

T = TypeVar("T")
#: (guest path, filesystem, node) of one step of a walk
_Node = tuple[str, Fs, Any]


class GuestReadError(OSError):
    """Reading one guest path failed: the filesystem is damaged or the time budget is spent."""


@dataclass
class _Mount:
    fs: Fs
    root: Any


class NativeView:
    """:class:`checks.guest.GuestView` over the mounted filesystems (read-only, bounded)."""

    def __init__(self, image: str, budget: Budget) -> None:
        self.image, self.budget = image, budget
        self.mounts: dict[str, _Mount] = {}
        self.calls = 0

    def mount(self, mountpoint: str, fs: Fs) -> None:
        self.mounts[mountpoint] = _Mount(fs, fs.root())

    # -- path walk --------------------------------------------------------------------------
    def _step(self, parent: _Node, name: str) -> _Node | None:
        where, fs, node = parent
        if not statmod.S_ISDIR(fs.stat(node).mode):
            return None
        child = fs.lookup(node, name)
        if child is None:
            return None
        child_path = posixpath.join(where, name)
        mnt = self.mounts.get(child_path)
        if mnt is not None:
            return child_path, mnt.fs, mnt.root
        return child_path, fs, child

    @staticmethod
    def _link(node: _Node) -> str | None:
        _, fs, n = node
        return fs.readlink(n) if statmod.S_ISLNK(fs.stat(n).mode) else None

    def _walk(self, path: str, follow_last: bool) -> tuple[Fs, Any] | None:
        """(filesystem, node) of ``path`` in the guest tree; None when a component is missing."""
        top = self.mounts["/"]
        stack, rest = walk(path, ("/", top.fs, top.root), self._step, self._link, follow_last)
        return None if rest else (stack[-1][1], stack[-1][2])

    def _at(self, path: str, follow_last: bool, kind: Callable[[int], bool],
            then: Callable[[Fs, Any], T], default: T) -> T:
        """``then(fs, node)`` of ``path`` when it is of ``kind`` (a ``stat.S_IS*``), else
        ``default`` (missing, another kind, or a link loop), under the session's guard."""
        with self._guard(path):
            try:
                hit = self._walk(path, follow_last)
            except GuestLoopError:
                return default
            if hit is None or not kind(hit[0].stat(hit[1]).mode):
                return default
            return then(*hit)

    @contextmanager
    def _guard(self, path: str, fs_hint: Fs | None = None) -> Iterator[None]:
        self.calls += 1
        try:
            with self.budget.guard():
                yield
        except (GuestLoopError, GuestReadError):
            raise
        except Timeout:
            raise GuestReadError(f"{self.image}: reading the guest took longer than "
                                 f"{self.budget.seconds:.0f} s (at {path})") from None
        except RecursionError:
            raise GuestReadError(f"{self.image}: {path}: filesystem structures nest too deep "
                                 "(damaged or hostile image)") from None
        except Exception as e:  # noqa: BLE001 - a damaged filesystem: named, never a traceback
            raise GuestReadError(f"{self.image}: cannot read {path}: {self._where(path)}"
                                 f"{type(e).__name__}: {e}") from None

    def _where(self, path: str) -> str:
        best = max((m for m in self.mounts if path == m or path.startswith(m.rstrip("/") + "/")),
                   key=len, default="/")
        fs = self.mounts[best].fs
        return f"{fs.vol.device} ({fs.vol.fs.fstype if fs.vol.fs else '?'}) mounted on {best}: "

    # -- GuestView --------------------------------------------------------------------------
    def lstat(self, path: str) -> Stat | None:
        return self._at(path, False, lambda mode: True, lambda fs, n: fs.stat(n), None)

    def readlink(self, path: str) -> str | None:
        return self._at(path, False, statmod.S_ISLNK, lambda fs, n: fs.readlink(n), None)

    def list_dir(self, path: str) -> list[str]:
        return self._at(path, True, statmod.S_ISDIR, lambda fs, n: list(fs._entries(n)), [])

    def read_raw(self, path: str, limit: int) -> bytes | None:
        return self._at(path, True, statmod.S_ISREG, lambda fs, n: fs.read(n, limit), None)

    def is_dir(self, path: str) -> bool:
        try:
            hit = self._walk(path, follow_last=True)
        except GuestLoopError:
            return False
        return hit is not None and statmod.S_ISDIR(hit[0].stat(hit[1]).mode)


__all__ = ["NativeView", "GuestReadError"]
