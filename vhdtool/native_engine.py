"""Read a disk image's guest in-process: no root, no KVM, no appliance (the ``native`` engine).

The engine reads the run's opened :class:`vhdtool.disk.Disk` (raw, VHD, VHDX, qcow2 read directly
by the format core, never converted): its partitions and their ``blkid`` probes come from there;
LVM2 logical volumes and the ext2/3/4, XFS, btrfs and FAT filesystems are read by the pure-Python
``dissect.*`` readers (``pip install 'vhdtool[native]'``; why those, and what their AGPL licence
implies: docs/engines.md).  What to mount is decided by the mount core (:mod:`vhdtool.mountplan`),
as for the libguestfs engine, so the checks see the same guest:

* every partition (``/dev/sdaN``, numbered as Linux numbers them) and visible logical volume
  (``/dev/VG/LV``, sorted as ``lvs`` sorts them) is probed like ``blkid``;
* :class:`NativeBackend` implements :class:`vhdtool.mountplan.MountBackend` over
  :mod:`vhdtool.native_fs` (the filesystems) and :mod:`vhdtool.native_view` (the checks' view);
  it is read-only (no writable view).

Hostile images: every read goes through :class:`vhdtool.native_io.Source` (bounded, cached, under
a deadline, with a SIGALRM timer for readers spinning without reading).  Failures while opening
become :class:`NativeEngineError` (guest checks skipped with the reason), except the format core's
``FormatError`` (the image, its backing chain or its partition table cannot be read), which
propagates: exit 3, and ``--engine auto`` does not hand such an image to libguestfs.

References:
  - vhdtool/mountplan.py (root, fstab, specs), checks/guest.py (the GuestView contract).
  - lvm(8) naming: ``/dev/VG/LV``; ``lvs`` lists logical volumes sorted by VG then LV name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from vhdtool.checks.fixes import WritableGuestView
from vhdtool.checks.guest import Filesystem, Guest, GuestView
from vhdtool.formats import FormatError

from . import mountplan
from .blkid import probe
from .disk import Disk
from .mountplan import MountError
from .native_fs import READABLE, Volume, open_fs
from .native_io import (Budget, NativeEngineUnavailable, Readers, Source, Timeout, Window,
                        available, import_readers)
from .native_view import GuestReadError, NativeView
from .session import Engine, Session, Timing, warn as _warn

#: seconds allowed for the whole guest session (opening and every read)
DEFAULT_TIMEOUT = 60.0
#: Linux reads a disk with 512-byte sectors whatever the container says (so does libguestfs)
GUEST_SECTOR = 512


class NativeEngineError(RuntimeError):
    """The guest cannot be opened natively (no root found, unreadable structures, timeout)."""


# -- volumes -----------------------------------------------------------------------------------
def _stream_reader(fh: Any) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        fh.seek(offset)
        return fh.read(length)
    return read


def _logical_volumes(pvs: Sequence[Volume], readers: Readers) -> list[Volume]:
    """Visible logical volumes of every volume group found on ``pvs`` (sorted as ``lvs`` does)."""
    groups: dict[str, list[Any]] = {}
    for pv in pvs:
        dev = readers["pv"](Window(pv.read, 0, pv.size))
        meta = dev.metadata or {}
        name = next((k for k, v in meta.items() if isinstance(v, dict)), None)
        if name is not None:
            groups.setdefault(name, []).append(dev)
    out = []
    for vg_name in sorted(groups):
        lvm = readers["lvm"](groups[vg_name])
        for lv in sorted(lvm.volume_group.lv, key=lambda lv: lv.name):
            if not lv.is_visible:
                continue
            fh = lv.open()
            size = fh.seek(0, 2) if not hasattr(fh, "size") or fh.size is None else fh.size
            vol = Volume(f"/dev/{vg_name}/{lv.name}", size, _stream_reader(fh))
            p = probe(vol.read, vol.size)
            vol.fs = Filesystem(vol.device, p.type, p.uuid, p.label) if p is not None else None
            out.append(vol)
    return out


def _slice(source: Source, start: int, size: int) -> Callable[[int, int], bytes]:
    """``read(offset, length)`` of ``[start, start + size)`` of the disk, clipped to it."""
    def read(offset: int, length: int) -> bytes:
        return source.read(start + offset, max(0, min(length, size - offset)))
    return read


def find_volumes(disk: Disk, source: Source, readers: Readers | None,
                 warn: Callable[[str], None]) -> list[Volume]:
    """Partitions (probed once, by the disk) then logical volumes (as ``list_partitions`` +
    ``lvs`` + blkid)."""
    parts = sorted(disk.partitions(GUEST_SECTOR), key=lambda v: v.partition.index)
    vols = [Volume(v.device, v.partition.size, _slice(source, v.partition.start, v.partition.size),
                   v.filesystem) for v in parts]
    pvs = [v for v in vols if v.fs is not None and v.fs.fstype == "LVM2_member"]
    if pvs and readers is not None:
        try:
            vols += _logical_volumes(pvs, readers)
        except Timeout:
            raise
        except Exception as e:  # noqa: BLE001 - hostile LVM metadata: no LV, said clearly
            warn(f"{disk.path}: LVM2 metadata on {', '.join(v.device for v in pvs)} unreadable: "
                 f"{type(e).__name__}: {e}")
    return vols


# -- the backend -------------------------------------------------------------------------------
class NativeBackend:
    """:class:`vhdtool.mountplan.MountBackend` over the dissect readers (read-only)."""

    name = "native"

    def __init__(self, path: str, vols: Sequence[Volume], readers: Readers,
                 budget: Budget) -> None:
        self.volumes = {v.device: v for v in vols}
        self.readers = readers
        self._view = NativeView(path, budget)

    def readable(self, fstype: str) -> bool:
        return fstype in READABLE

    def mount(self, fs: Filesystem, mountpoint: str, options: Sequence[str]) -> None:
        vol = self.volumes[fs.device]
        try:
            real = "/" if mountpoint == "/" else Guest(self._view).realpath(mountpoint)
            self._view.mount(real, open_fs(vol, self.readers, ",".join(options)))
        except Timeout:
            raise
        except Exception as e:  # noqa: BLE001 - like a failed mount: said, the rest goes on
            raise MountError(f"{type(e).__name__}: {e}") from None

    def unmount_all(self) -> None:
        self._view.mounts = {}

    def is_file(self, path: str) -> bool:
        try:
            with self._view.budget.guard():
                st = Guest(self._view).stat(path)
        except GuestReadError as e:
            raise MountError(str(e)) from None
        return st is not None and st.is_reg

    def is_dir(self, path: str) -> bool:
        return self._view.is_dir(path)

    def read_file(self, path: str, limit: int) -> bytes:
        return Guest(self._view).read_file(path, limit) or b""

    def view(self) -> GuestView:
        return self._view

    def writable_view(self) -> WritableGuestView:
        raise NativeEngineError("the native engine reads the guest only: vhdtool fix needs "
                                "--engine guestfs")

    def close(self) -> None:
        self._view.mounts = {}


def _describe(v: Volume) -> str:
    return f"{v.device} {v.fs.fstype if v.fs else 'unknown'}"


def _open(disk: Disk, readers: Readers, budget: Budget,
          warn: Callable[[str], None]) -> tuple[NativeBackend, mountplan.Mounted]:
    if disk.image is None:
        raise NativeEngineError(f"{disk.path}: {disk.unreadable}")
    source = Source(disk.image.read, disk.image.virtual_size, budget)
    vols = find_volumes(disk, source, readers, warn)
    backend = NativeBackend(disk.path, vols, readers, budget)
    fss = [v.fs for v in vols if v.fs is not None]
    root = mountplan.find_root(backend, fss, warn, disk.path)
    if root is None:
        raise NativeEngineError(
            f"{disk.path}: no ext2/3/4, XFS or btrfs filesystem holding /etc/fstab among "
            f"{len(vols)} volumes ({', '.join(_describe(v) for v in vols) or 'none'})")
    return backend, mountplan.mount_fstab(backend, root, fss, warn)


def open_disk(disk: Disk, timeout: float = DEFAULT_TIMEOUT,
              warn: Callable[[str], None] = _warn) -> Session:
    """Open the guest of an opened disk: volumes probed, root found, fstab mounts applied.

    Raises :class:`NativeEngineUnavailable` (readers not installed), :class:`NativeEngineError`
    (no root, damaged filesystem structures, time budget spent) or the format core's
    :class:`~formats.FormatError` (the partition table cannot be read: no other engine can do
    better, so ``--engine auto`` does not fall back on it) -- never another exception.  The disk
    stays open: its owner closes it.
    """
    readers = import_readers()
    t0 = time.monotonic()
    budget = Budget(timeout)
    path = disk.path
    try:
        with budget.guard():
            backend, mounted = _open(disk, readers, budget, warn)
        guest, fss = mountplan.open_view(backend.view(), [v.fs for v in backend.volumes.values()
                                                          if v.fs is not None], mounted.where)
    except (NativeEngineError, FormatError):
        raise
    except Timeout:
        raise NativeEngineError(f"{path}: opening the guest took longer than {timeout:.0f} s "
                                "(damaged or hostile image)") from None
    except GuestReadError as e:
        raise NativeEngineError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - hostile structures: a clear error, never a traceback
        raise NativeEngineError(f"{path}: cannot open the guest: {type(e).__name__}: {e}") from None
    timing = Timing(inspect=time.monotonic() - t0, unreadable=mounted.unreadable)
    return Session(path, disk.format, guest, fss, timing, backend)


class _OwnDisk:
    """A backend that also closes the disk it opened (:func:`open_guest` without a run)."""

    def __init__(self, backend: Any, disk: Disk) -> None:
        self.backend, self.disk = backend, disk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def close(self) -> None:
        self.backend.close()
        self.disk.close()


def open_guest(path: str, fmt: str | None = None, timeout: float = DEFAULT_TIMEOUT,
               warn: Callable[[str], None] = _warn) -> Session:
    """:func:`open_disk` of ``path`` opened here (closed with the session); an image that cannot
    be opened is a :class:`NativeEngineError`, a refused one a ``FormatError``."""
    import_readers()
    try:
        disk = Disk(path, fmt)
    except FormatError:
        raise
    except OSError as e:
        raise NativeEngineError(f"{path}: {e.strerror or e}") from None
    try:
        s = open_disk(disk, timeout, warn)
    except BaseException:
        disk.close()
        raise
    s.backend = _OwnDisk(s.backend, disk)
    return s


class NativeEngine(Engine):
    """The pipeline's guest engine reading the run's disk in-process."""

    name = "native"
    skips = (NativeEngineError,)

    def __init__(self, timeout: float = DEFAULT_TIMEOUT,
                 warn: Callable[[str], None] = _warn) -> None:
        super().__init__()
        self.timeout, self.warn = timeout, warn

    def open(self, image: str, disk: Any) -> Session:
        """The run's disk; a caller without one (``disk`` None or facts) gets it opened here."""
        if isinstance(disk, Disk):
            return open_disk(disk, self.timeout, self.warn)
        return open_guest(image, getattr(disk, "format", None) or None, self.timeout, self.warn)


__all__ = ["open_guest", "open_disk", "NativeEngine", "NativeBackend", "NativeView",
           "NativeEngineError", "NativeEngineUnavailable", "GuestReadError", "READABLE",
           "find_volumes", "available", "DEFAULT_TIMEOUT"]
