"""Read a disk image's guest in-process: no root, no KVM, no appliance (the ``native`` engine).

The image is opened with the format core (``formats.open_image``: raw, VHD, VHDX, qcow2 read
directly, never converted); partitions come from ``formats.partitions``; LVM2 logical volumes and
the ext2/3/4, XFS, btrfs and FAT filesystems are read by the pure-Python ``dissect.*`` readers
(``pip install 'vhdtool[native]'``; why those, and what their AGPL licence implies: docs/engines.md).

It does what the libguestfs engine (``vhdtool.guestfs_engine``) does, the same way, so the checks
see the same guest:

* every partition (``/dev/sdaN``, numbered as Linux numbers them) and visible logical volume
  (``/dev/VG/LV``) is probed like ``blkid`` (:mod:`vhdtool.blkid`), giving the same
  :class:`checks.guest.Filesystem` facts (TYPE, UUID, LABEL, PARTUUID, PARTLABEL);
* the root is the first ext/XFS/btrfs filesystem holding ``/etc/fstab``; the fstab entries are
  "mounted" on it shallowest first (specs resolved as ``guestfs_engine._resolve_spec`` does,
  btrfs ``subvol=``/``subvolid=`` honoured, an entry whose mountpoint is not a directory skipped);
* :class:`NativeView` implements :class:`checks.guest.GuestView`: paths are walked component by
  component across mountpoints, symbolic links in the middle of a path are followed *inside the
  guest* (an absolute target restarts at the guest's ``/``, ``..`` stops at it), at most
  :data:`checks.guest.MAX_LINK_HOPS` links per lookup; FAT names are looked up case-insensitively
  and shown with the NT lower-case bits, modes as Linux's vfat shows them.

Hostile images: every read goes through :class:`_Source`, which bounds a single read, caches
blocks, and enforces a deadline; a SIGALRM timer (main thread) also stops a reader spinning without
reading. Anything a reader raises becomes :class:`GuestReadError` (an ``OSError`` naming the image,
the device, the filesystem and the guest path), which the catalog reports as that check's error;
failures while opening become :class:`NativeEngineError` (guest checks skipped with the reason),
except the format core's ``FormatError`` (the image, its backing chain or its partition table
cannot be read), which propagates: exit 3, and ``--engine auto`` does not hand such an image to
libguestfs.

References:
  - guestfs_engine.py (the behaviour mirrored), checks/guest.py (the GuestView contract).
  - path_resolution(7): ELOOP after 40 links; ENOTDIR; ``..`` at the root stays at the root.
  - Linux ``fs/fat/``: vfat ``shortname=mixed`` honours the NT case bits (DIR_NTRes 0x08 lower-case
    base, 0x10 lower-case extension); lookups are case-insensitive; modes 0777 & ~umask (the
    libguestfs daemon mounts with umask 022: files 0755, directories 0755), uid/gid 0.
  - lvm(8) naming: ``/dev/VG/LV`` and ``/dev/mapper/VG-LV`` with ``-`` doubled inside names.
"""

from __future__ import annotations

import io
import posixpath
import signal
import stat as statmod
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from checks.guest import (MAX_LINK_HOPS, Filesystem, Guest, GuestLoopError, Stat, collect_facts,
                          parse_fstab)
from formats import FormatError, open_image
from formats.partitions import read_partition_table

from .blkid import probe
from .guestfs_engine import _resolve_spec

#: filesystems this engine reads (blkid TYPE names)
READABLE = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"})
ROOT_FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")
#: seconds allowed for the whole guest session (opening and every read)
DEFAULT_TIMEOUT = 60.0
#: largest single read a filesystem reader may ask for
MAX_SINGLE_READ = 64 << 20
#: entries listed from one directory at most
MAX_DIR_ENTRIES = 100_000
_BLOCK = 64 << 10
_CACHE_BLOCKS = 512          # 32 MiB of cached image blocks at most
#: libguestfs mounts vfat with the daemon's umask 022
_VFAT_FILE_MODE = statmod.S_IFREG | 0o755
_VFAT_DIR_MODE = statmod.S_IFDIR | 0o755


class NativeEngineUnavailable(RuntimeError):
    """The pure-Python filesystem readers (dissect.*) are not installed."""


class NativeEngineError(RuntimeError):
    """The guest cannot be opened natively (no root found, unreadable structures, timeout)."""


class GuestReadError(OSError):
    """Reading one guest path failed: the filesystem is damaged or the time budget is spent."""


class _Timeout(Exception):
    pass


_READER_MODULES = {"ext": ("dissect.extfs", "ExtFS"), "xfs": ("dissect.xfs", "XFS"),
                   "btrfs": ("dissect.btrfs", "Btrfs"), "vfat": ("dissect.fat", "FATFS"),
                   "lvm": ("dissect.volume.lvm", "LVM2"),
                   "pv": ("dissect.volume.lvm.physical", "LVM2Device")}


class _Readers:
    """The dissect reader classes, each imported on first use (dissect.xfs alone costs ~1 s)."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._loaded:
            import importlib
            module, name = _READER_MODULES[key]
            try:
                self._loaded[key] = getattr(importlib.import_module(module), name)
            except ImportError as e:
                raise NativeEngineUnavailable(
                    f"the native guest engine needs the dissect filesystem readers ({e.name} is "
                    "missing): pip install 'vhdtool[native]'") from None
        return self._loaded[key]


#: the distributions the readers come from (checked without importing them)
_DISTRIBUTIONS = ("dissect.extfs", "dissect.xfs", "dissect.btrfs", "dissect.fat", "dissect.volume")


def available() -> str | None:
    """None when the readers are installed, else why not (without importing them)."""
    from importlib.metadata import PackageNotFoundError, version
    missing = []
    for dist in _DISTRIBUTIONS:
        try:
            version(dist)
        except PackageNotFoundError:
            missing.append(dist)
    if missing:
        return f"{', '.join(missing)} not installed (pip install 'vhdtool[native]')"
    return None


def _import_readers() -> _Readers:
    reason = available()
    if reason is not None:
        raise NativeEngineUnavailable(f"the native guest engine needs the dissect filesystem "
                                      f"readers: {reason}")
    return _Readers()


# -- bounded, cached access to the image ------------------------------------------------------
class _Budget:
    """A deadline shared by every read of one session; SIGALRM stops CPU-bound loops too."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self._depth = 0

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Timeout()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Raise :class:`_Timeout` inside the block once the deadline passes (main thread only)."""
        self.check()
        if self._depth or threading.current_thread() is not threading.main_thread():
            yield
            return

        def fire(signum: int, frame: Any) -> None:
            raise _Timeout()

        old = signal.signal(signal.SIGALRM, fire)
        start = time.monotonic()
        outer = signal.setitimer(signal.ITIMER_REAL, max(0.001, self.deadline - start))
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            if outer[0] > 0:        # the caller's own timer goes on where it was
                left = outer[0] - (time.monotonic() - start)
                signal.setitimer(signal.ITIMER_REAL, max(0.001, left), outer[1])


class _Source:
    """The image's ``read(offset, length)`` with a block cache and the session's bounds."""

    def __init__(self, read: Callable[[int, int], bytes], size: int, budget: _Budget) -> None:
        self._read, self.size, self.budget = read, size, budget
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def _block(self, n: int) -> bytes:
        data = self._cache.get(n)
        if data is None:
            self.budget.check()
            start = n * _BLOCK
            data = self._read(start, min(_BLOCK, self.size - start))
            self._cache[n] = data
            if len(self._cache) > _CACHE_BLOCKS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(n)
        return data

    def read(self, offset: int, length: int) -> bytes:
        if length > MAX_SINGLE_READ:
            raise OSError(f"a read of {length} bytes at {offset} exceeds the "
                          f"{MAX_SINGLE_READ >> 20} MiB bound")
        end = min(offset + length, self.size)
        if offset >= end or offset < 0:
            return b""
        if end - offset > 4 * _BLOCK:       # large reads bypass the cache
            self.budget.check()
            return self._read(offset, end - offset)
        first, last = offset // _BLOCK, (end - 1) // _BLOCK
        out = b"".join(self._block(n) for n in range(first, last + 1))
        skip = offset - first * _BLOCK
        return out[skip:skip + end - offset]


class _Window(io.RawIOBase):
    """A seekable file object over ``[start, start + size)`` of a source (what dissect reads)."""

    def __init__(self, read: Callable[[int, int], bytes], start: int, size: int) -> None:
        super().__init__()
        self._r, self.start, self.size, self.pos = read, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = max(0, min(n, self.size - self.pos))
        data = self._r(self.start + self.pos, n) if n else b""
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def pread(self, offset: int, n: int) -> bytes:
        return self._r(self.start + offset, max(0, min(n, self.size - offset)))


# -- volumes -----------------------------------------------------------------------------------
@dataclass
class Volume:
    """A partition or logical volume: its device name, bytes, and what blkid would say."""

    device: str
    size: int
    read: Callable[[int, int], bytes]
    fs: Filesystem | None = None


def _stream_reader(fh: Any) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        fh.seek(offset)
        return fh.read(length)
    return read


def _probe(vol: Volume, partuuid: str | None = None, partlabel: str | None = None) -> None:
    p = probe(vol.read, vol.size)
    if p is not None:
        vol.fs = Filesystem(vol.device, p.type, p.uuid, p.label, partuuid or None,
                            partlabel or None)


def _lvm_escape(name: str) -> str:
    return name.replace("-", "--")


def _logical_volumes(pvs: Sequence[Volume], readers: _Readers) -> list[Volume]:
    """Visible logical volumes of every volume group found on ``pvs`` (sorted as ``lvs`` does)."""
    groups: dict[str, list[Any]] = {}
    for pv in pvs:
        fh = _Window(pv.read, 0, pv.size)
        dev = readers["pv"](fh)
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
            out.append(Volume(f"/dev/{vg_name}/{lv.name}", size, _stream_reader(fh)))
    return out


def _slice(source: _Source, start: int, size: int) -> Callable[[int, int], bytes]:
    """``read(offset, length)`` of ``[start, start + size)`` of the disk, clipped to it."""
    def read(offset: int, length: int) -> bytes:
        return source.read(start + offset, max(0, min(length, size - offset)))
    return read


def find_volumes(path: str, source: _Source, readers: _Readers | None,
                 warn: Callable[[str], None]) -> list[Volume]:
    """Partitions then logical volumes, each probed (as ``list_partitions`` + ``lvs`` + blkid)."""
    table = read_partition_table(source.read, source.size, 512, path)
    vols = []
    for p in sorted(table.partitions, key=lambda p: p.index):
        if p.size <= 0:
            continue
        vol = Volume(f"/dev/sda{p.index}", p.size, _slice(source, p.start, p.size))
        uuid = p.uuid.lower() if p.uuid else None
        _probe(vol, uuid, p.name if p.scheme == "gpt" else None)
        vols.append(vol)
    pvs = [v for v in vols if v.fs is not None and v.fs.fstype == "LVM2_member"]
    if pvs and readers is not None:
        try:
            lvs = _logical_volumes(pvs, readers)
        except _Timeout:
            raise
        except Exception as e:  # noqa: BLE001 - hostile LVM metadata: no LV, said clearly
            warn(f"{path}: LVM2 metadata on {', '.join(v.device for v in pvs)} unreadable: "
                 f"{type(e).__name__}: {e}")
            lvs = []
        for lv in lvs:
            _probe(lv)
            vols.append(lv)
    return vols


# -- filesystems -------------------------------------------------------------------------------
class _Fs:
    """One mounted filesystem: lookups, stat, readlink and reads over dissect nodes."""

    fstype = ""

    def __init__(self, vol: Volume) -> None:
        self.vol = vol

    def root(self) -> Any:
        raise NotImplementedError

    def entries(self, node: Any) -> dict[str, Any]:
        raise NotImplementedError

    def lookup(self, node: Any, name: str) -> Any | None:
        return self._entries(node).get(name)

    def _entries(self, node: Any) -> dict[str, Any]:
        key = id(node)
        cache = self.__dict__.setdefault("_dircache", {})
        hit = cache.get(key)
        if hit is None or hit[0] is not node:
            names: dict[str, Any] = {}
            for name, child in self.entries(node):
                if name in (".", ".."):
                    continue
                names[name] = child
                if len(names) > MAX_DIR_ENTRIES:
                    raise OSError(f"directory has more than {MAX_DIR_ENTRIES} entries")
            hit = cache[key] = (node, names)
        return hit[1]

    def stat(self, node: Any) -> Stat:
        raise NotImplementedError

    def readlink(self, node: Any) -> str:
        if self.stat(node).size > 4096:       # PATH_MAX: a damaged size must not allocate GiBs
            raise OSError("symbolic link longer than PATH_MAX (4096)")
        return str(node.link)

    def read(self, node: Any, limit: int) -> bytes:
        size = min(self.stat(node).size, limit)
        if size <= 0:
            return b""
        return node.open().read(size)


class _InodeFs(_Fs):
    """ext2/3/4 and XFS: dissect inodes with ``filename``, the raw inode in ``inode``."""

    reader = ""

    def __init__(self, vol: Volume, readers: _Readers) -> None:
        super().__init__(vol)
        self.fs = readers[self.reader](_Window(vol.read, 0, vol.size))

    def root(self) -> Any:
        return self.fs.root

    def entries(self, node: Any) -> Iterator[tuple[str, Any]]:
        for child in node.iterdir():
            yield child.filename, child


class _ExtFs(_InodeFs):
    reader = "ext"

    def stat(self, node: Any) -> Stat:
        i = node.inode
        return Stat(i.i_mode, node.size, i.i_uid | (i.i_uid_high << 16),
                    i.i_gid | (i.i_gid_high << 16))


class _XfsFs(_InodeFs):
    reader = "xfs"

    def stat(self, node: Any) -> Stat:
        i = node.inode
        return Stat(i.di_mode, node.size, i.di_uid, i.di_gid)


class _BtrfsFs(_Fs):
    def __init__(self, vol: Volume, readers: _Readers, options: str = "") -> None:
        super().__init__(vol)
        self.fs = readers["btrfs"](_Window(vol.read, 0, vol.size))
        self.subvol = self.fs.default_subvolume
        for opt in options.split(","):
            key, _, val = opt.partition("=")
            if key == "subvolid" and val.isdigit():
                self.subvol = self.fs.open_subvolume(int(val))
            elif key == "subvol" and val:
                want = val.strip("/")
                found = self.fs.find_subvolume(want)
                if found is None:
                    raise OSError(f"btrfs subvolume {val!r} not found")
                self.subvol = found

    def root(self) -> Any:
        return self.subvol.root

    def entries(self, node: Any) -> Iterator[tuple[str, Any]]:
        yield from node.iterdir()

    def stat(self, node: Any) -> Stat:
        return Stat(node.mode, node.size, node.uid, node.gid)


class _FatFs(_Fs):
    def __init__(self, vol: Volume, readers: _Readers) -> None:
        super().__init__(vol)
        self.fs = readers["vfat"](_Window(vol.read, 0, vol.size))

    def root(self) -> Any:
        return self.fs.root

    @staticmethod
    def _name(entry: Any) -> str:
        if entry.ldirents:
            return str(entry.name)
        raw = bytes(entry.dirent.DIR_Name)
        if raw[0] == 0x05:
            raw = b"\xe5" + raw[1:]
        base = raw[:8].decode("cp437").rstrip(" \0")
        ext = raw[8:].decode("cp437").rstrip(" \0")
        nt = entry.dirent.DIR_NTRes
        if nt & 0x08:
            base = base.lower()
        if nt & 0x10:
            ext = ext.lower()
        return f"{base}.{ext}" if ext else base

    def entries(self, node: Any) -> Iterator[tuple[str, Any]]:
        for child in node.iterdir():
            if child.is_volume_id():
                continue
            yield self._name(child), child

    def lookup(self, node: Any, name: str) -> Any | None:
        names = self._entries(node)
        hit = names.get(name)
        if hit is None:
            folded = name.casefold()
            hit = next((v for k, v in names.items() if k.casefold() == folded), None)
        return hit

    def stat(self, node: Any) -> Stat:
        if node is self.fs.root:
            return Stat(_VFAT_DIR_MODE, node.size, 0, 0)
        if node.is_directory():
            clusters = sum(n for _, n in node.dataruns())
            return Stat(_VFAT_DIR_MODE, clusters * self.fs.cluster_size, 0, 0)
        return Stat(_VFAT_FILE_MODE, node.size, 0, 0)

    def readlink(self, node: Any) -> str:
        raise OSError("FAT has no symbolic links")


def open_fs(vol: Volume, readers: _Readers, options: str = "") -> _Fs:
    kind = vol.fs.fstype if vol.fs else None
    if kind in ("ext2", "ext3", "ext4"):
        return _ExtFs(vol, readers)
    if kind == "xfs":
        return _XfsFs(vol, readers)
    if kind == "btrfs":
        return _BtrfsFs(vol, readers, options)
    if kind == "vfat":
        return _FatFs(vol, readers)
    raise OSError(f"{kind or 'unknown'} filesystems are not readable by the native engine")


# -- the guest view ----------------------------------------------------------------------------
@dataclass
class _Mount:
    fs: _Fs
    root: Any


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


class NativeView:
    """:class:`checks.guest.GuestView` over the mounted filesystems (read-only, bounded)."""

    def __init__(self, image: str, budget: _Budget) -> None:
        self.image, self.budget = image, budget
        self.mounts: dict[str, _Mount] = {}
        self.calls = 0

    def mount(self, mountpoint: str, fs: _Fs) -> None:
        self.mounts[mountpoint] = _Mount(fs, fs.root())

    # -- path walk --------------------------------------------------------------------------
    def _walk(self, path: str, follow_last: bool) -> tuple[_Fs, Any] | None:
        """(filesystem, node) of ``path`` in the guest tree; None when a component is missing."""
        top = self.mounts["/"]
        stack: list[tuple[str, _Fs, Any]] = [("/", top.fs, top.root)]
        todo = _split(path)
        hops = 0
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            where, fs, node = stack[-1]
            if not statmod.S_ISDIR(fs.stat(node).mode):
                return None
            child = fs.lookup(node, name)
            if child is None:
                return None
            child_path = posixpath.join(where, name)
            mnt = self.mounts.get(child_path)
            if mnt is not None:
                stack.append((child_path, mnt.fs, mnt.root))
                continue
            if (todo or follow_last) and statmod.S_ISLNK(fs.stat(child).mode):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise GuestLoopError(f"too many symbolic links resolving {path}")
                target = fs.readlink(child)
                if target.startswith("/"):
                    del stack[1:]
                todo = _split(target) + todo
                continue
            stack.append((child_path, fs, child))
        return stack[-1][1], stack[-1][2]

    @contextmanager
    def _guard(self, path: str, fs_hint: _Fs | None = None) -> Iterator[None]:
        self.calls += 1
        try:
            with self.budget.guard():
                yield
        except (GuestLoopError, GuestReadError):
            raise
        except _Timeout:
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
        with self._guard(path):
            try:
                hit = self._walk(path, follow_last=False)
            except GuestLoopError:
                return None
            return None if hit is None else hit[0].stat(hit[1])

    def readlink(self, path: str) -> str | None:
        with self._guard(path):
            try:
                hit = self._walk(path, follow_last=False)
            except GuestLoopError:
                return None
            if hit is None or not statmod.S_ISLNK(hit[0].stat(hit[1]).mode):
                return None
            return hit[0].readlink(hit[1])

    def list_dir(self, path: str) -> list[str]:
        with self._guard(path):
            try:
                hit = self._walk(path, follow_last=True)
            except GuestLoopError:
                return []
            if hit is None or not statmod.S_ISDIR(hit[0].stat(hit[1]).mode):
                return []
            return list(hit[0]._entries(hit[1]))

    def read_raw(self, path: str, limit: int) -> bytes | None:
        with self._guard(path):
            try:
                hit = self._walk(path, follow_last=True)
            except GuestLoopError:
                return None
            if hit is None or not statmod.S_ISREG(hit[0].stat(hit[1]).mode):
                return None
            return hit[0].read(hit[1], limit)

    def is_dir(self, path: str) -> bool:
        try:
            hit = self._walk(path, follow_last=True)
        except GuestLoopError:
            return False
        return hit is not None and statmod.S_ISDIR(hit[0].stat(hit[1]).mode)


# -- opening -----------------------------------------------------------------------------------
class _LvNames:
    """Stands in for the libguestfs handle in ``guestfs_engine._resolve_spec``: canonical LV names
    (``/dev/mapper/VG-LV`` or ``/dev/VG/LV`` -> ``/dev/VG/LV``) from the LVs found natively."""

    def __init__(self, fss: Sequence[Filesystem]) -> None:
        self.names: dict[str, str] = {}
        for fs in fss:
            parts = fs.device.split("/")
            if len(parts) == 4:                       # /dev/VG/LV (partitions: /dev/sdaN)
                vg, lv = parts[2], parts[3]
                self.names[f"/dev/mapper/{_lvm_escape(vg)}-{_lvm_escape(lv)}"] = fs.device
                self.names[fs.device] = fs.device

    def lvm_canonical_lv_name(self, spec: str) -> str:
        if spec not in self.names:
            raise RuntimeError(f"{spec}: not a logical volume")
        return self.names[spec]


def resolve_spec(spec: str, fss: Sequence[Filesystem]) -> str | None:
    """The device of an fstab spec, exactly as the libguestfs engine resolves it."""
    return _resolve_spec(_LvNames(fss), spec, fss)


@dataclass
class Timing:
    open: float = 0.0
    checks: float = 0.0
    backend: str = "native"
    unreadable: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"native engine: volumes, filesystems and mounts {self.open:.2f} s, " \
               f"checks {self.checks:.2f} s"


@dataclass
class NativeSession:
    path: str
    fmt: str
    guest: Guest
    view: NativeView
    filesystems: tuple[Filesystem, ...]
    timing: Timing
    image: Any

    def close(self) -> None:
        self.image.close()

    def __enter__(self) -> NativeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warn(msg: str) -> None:
    print(f"vhdtool: warning: {msg}", file=sys.stderr)


def _find_root(view: NativeView, vols: Sequence[Volume], readers: _Readers,
               warn: Callable[[str], None]) -> Volume | None:
    for vol in vols:
        if vol.fs is None or vol.fs.fstype not in ROOT_FSTYPES:
            continue
        try:
            with view.budget.guard():
                view.mounts = {}
                view.mount("/", open_fs(vol, readers))
                st = Guest(view).stat("/etc/fstab")
        except _Timeout:
            raise
        except GuestReadError as e:
            warn(f"{e} (so {vol.device} is not taken as the root)")
            continue
        except Exception as e:  # noqa: BLE001 - a damaged filesystem is not the root; said why
            warn(f"{view.image}: cannot read {vol.device} ({vol.fs.fstype}): {type(e).__name__}: {e}")
            continue
        if st is not None and st.is_reg:
            return vol
    view.mounts = {}
    return None


def _mount_fstab(view: NativeView, root: Volume, vols: Sequence[Volume], readers: _Readers,
                 warn: Callable[[str], None]) -> tuple[dict[str, str], list[str]]:
    """Mount the fstab entries as the libguestfs engine does; (mounted, unreadable reasons)."""
    fss = [v.fs for v in vols if v.fs is not None]
    by_dev = {v.device: v for v in vols}
    mounted = {"/": root.device}
    unreadable: list[str] = []
    text = (Guest(view).read_text("/etc/fstab", 1 << 20) or "")
    for e in sorted(parse_fstab(text), key=lambda e: e.mountpoint.count("/")):
        if not e.mountpoint.startswith("/") or e.mountpoint == "/" or e.fstype in ("swap", "none"):
            continue
        dev = resolve_spec(e.spec, fss)
        if dev is None or not view.is_dir(e.mountpoint):
            continue
        vol = by_dev[dev]
        kind = vol.fs.fstype if vol.fs else "unknown"
        if kind not in READABLE:
            unreadable.append(f"{e.mountpoint} is {kind} ({dev})")
            warn(f"cannot mount {dev} on {e.mountpoint}: the native engine cannot read {kind}")
            continue
        try:
            real = Guest(view).realpath(e.mountpoint)
            subvol = ",".join(o for o in e.options.split(",")
                              if o.startswith(("subvol=", "subvolid=")))
            view.mount(real, open_fs(vol, readers, subvol))
            mounted[e.mountpoint] = dev
        except _Timeout:
            raise
        except Exception as err:  # noqa: BLE001 - like a failed mount: warned, the rest goes on
            unreadable.append(f"{e.mountpoint} ({dev}, {kind}): {type(err).__name__}: {err}")
            warn(f"cannot mount {dev} on {e.mountpoint}: {type(err).__name__}: {err}")
    return mounted, unreadable


def open_guest(path: str, fmt: str | None = None, timeout: float = DEFAULT_TIMEOUT,
               warn: Callable[[str], None] = _warn) -> NativeSession:
    """Open ``path``'s guest: volumes probed, root found by /etc/fstab, fstab mounts applied.

    Raises :class:`NativeEngineUnavailable` (readers not installed), :class:`NativeEngineError`
    (no root, damaged filesystem structures, time budget spent) or the format core's
    :class:`~formats.FormatError` (the image itself, or its partition table, cannot be read: no
    other engine can do better, so ``--engine auto`` does not fall back on it) -- never another
    exception.
    """
    readers = _import_readers()
    t0 = time.monotonic()
    budget = _Budget(timeout)
    try:
        img = open_image(path, fmt)
    except OSError as e:
        raise NativeEngineError(f"{path}: {e.strerror or e}") from None
    try:
        source = _Source(img.read, img.virtual_size, budget)
        view = NativeView(path, budget)
        with budget.guard():
            vols = find_volumes(path, source, readers, warn)
            root = _find_root(view, vols, readers, warn)
            if root is None:
                raise NativeEngineError(
                    f"{path}: no ext2/3/4, XFS or btrfs filesystem holding /etc/fstab among "
                    f"{len(vols)} volumes ({', '.join(_describe(v) for v in vols) or 'none'})")
            mounted, unreadable = _mount_fstab(view, root, vols, readers, warn)
        where = {dev: mp for mp, dev in mounted.items()}
        fss = tuple(replace(v.fs, mountpoint=where.get(v.device)) for v in vols if v.fs is not None)
        guest = Guest(view)
        guest._facts = collect_facts(guest, fss)
        timing = Timing(open=time.monotonic() - t0, unreadable=unreadable)
        return NativeSession(path, fmt or "", guest, view, fss, timing, img)
    except NativeEngineError:
        img.close()
        raise
    except _Timeout:
        img.close()
        raise NativeEngineError(f"{path}: opening the guest took longer than {timeout:.0f} s "
                                "(damaged or hostile image)") from None
    except FormatError:
        img.close()
        raise
    except GuestReadError as e:
        img.close()
        raise NativeEngineError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - hostile structures: a clear error, never a traceback
        img.close()
        raise NativeEngineError(f"{path}: cannot open the guest: {type(e).__name__}: {e}") from None


def _describe(v: Volume) -> str:
    return f"{v.device} {v.fs.fstype if v.fs else 'unknown'}"


class NativeEngine:
    """The pipeline's guest engine reading the image in-process (see :class:`GuestfsEngine`)."""

    name = "native"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, warn: Callable[[str], None] = _warn) -> None:
        self.timeout, self.warn = timeout, warn
        self.session: NativeSession | None = None
        self.timing: Timing | None = None
        self.skip_reason: str | None = None

    def __call__(self, image: str, facts: Any) -> Guest | None:
        """The guest, or None with ``skip_reason``; a FormatError propagates (exit 3)."""
        fmt = getattr(facts, "format", None) or None
        try:
            self.session = open_guest(image, fmt, self.timeout, self.warn)
        except NativeEngineError as e:
            self.skip_reason = str(e)
            return None
        self.timing = self.session.timing
        return self.session.guest

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


__all__ = ["open_guest", "NativeEngine", "NativeSession", "NativeView", "NativeEngineError",
           "NativeEngineUnavailable", "GuestReadError", "READABLE", "resolve_spec", "find_volumes"]
