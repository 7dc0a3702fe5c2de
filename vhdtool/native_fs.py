"""The native engine's filesystems: ext2/3/4, XFS, btrfs and FAT over the dissect readers.

:func:`open_fs` opens a volume as a :class:`Fs`: a root node, directory entries (bounded, cached),
lookups, ``stat``, ``readlink`` and bounded reads -- what :class:`vhdtool.native_view.NativeView`
walks.  FAT names are looked up case-insensitively and shown with the NT lower-case bits, modes as
Linux's vfat shows them under the libguestfs daemon's umask.

References:
  - Linux ``fs/fat/``: vfat ``shortname=mixed`` honours the NT case bits (DIR_NTRes 0x08 lower-case
    base, 0x10 lower-case extension); lookups are case-insensitive; modes 0777 & ~umask (the
    libguestfs daemon mounts with umask 022: files 0755, directories 0755), uid/gid 0.
  - ext4 and XFS inode layouts (``i_uid_high``/``i_gid_high``; ``di_uid``/``di_gid``); btrfs
    ``subvol=``/``subvolid=`` mount options (btrfs(5)).
"""

from __future__ import annotations

import stat as statmod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vhdtool.checks.guest import Filesystem, Stat

from .native_io import Readers, Window

#: filesystems this engine reads (blkid TYPE names)
READABLE = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"})
#: entries listed from one directory at most
MAX_DIR_ENTRIES = 100_000
#: libguestfs mounts vfat with the daemon's umask 022
_VFAT_FILE_MODE = statmod.S_IFREG | 0o755
_VFAT_DIR_MODE = statmod.S_IFDIR | 0o755


@dataclass
class Volume:
    """A partition or logical volume: its device name, bytes, and what blkid would say."""

    device: str
    size: int
    read: Callable[[int, int], bytes]
    fs: Filesystem | None = None


class Fs:
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


class _InodeFs(Fs):
    """ext2/3/4 and XFS: dissect inodes with ``filename``, the raw inode in ``inode``."""

    reader = ""

    def __init__(self, vol: Volume, readers: Readers) -> None:
        super().__init__(vol)
        self.fs = readers[self.reader](Window(vol.read, 0, vol.size))

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


class _BtrfsFs(Fs):
    def __init__(self, vol: Volume, readers: Readers, options: str = "") -> None:
        super().__init__(vol)
        self.fs = readers["btrfs"](Window(vol.read, 0, vol.size))
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


class _FatFs(Fs):
    def __init__(self, vol: Volume, readers: Readers) -> None:
        super().__init__(vol)
        self.fs = readers["vfat"](Window(vol.read, 0, vol.size))

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


def open_fs(vol: Volume, readers: Readers, options: str = "") -> Fs:
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


__all__ = ["Volume", "Fs", "open_fs", "READABLE", "MAX_DIR_ENTRIES"]
