"""Raw images: the file is the disk.  Holes are found with SEEK_DATA/SEEK_HOLE."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from .image import DiskImage, Extent, Kind

SECTOR = 512


class RawImage(DiskImage):
    format_name = "raw"

    def __init__(self, path: str | os.PathLike[str], size: int | None = None) -> None:
        super().__init__(path)
        #: a fixed VHD read as raw passes size = file size - 512 to hide its footer
        self._size = self.file_size if size is None else size
        if size is None and self.file_size % SECTOR:
            # qemu's block layer counts whole sectors: the last partial one reads as zero-padded
            self._size += SECTOR - self.file_size % SECTOR
            self.problem("warning", "file", self.file_size,
                         f"{self.file_size} bytes is not a whole number of 512-byte sectors: "
                         f"read as {self._size} bytes, zero-padded (as qemu-img does)")

    @property
    def virtual_size(self) -> int:
        return self._size

    def _extents(self, start: int, end: int) -> Iterator[Extent]:
        yield from data_runs(self._fd, start, end)


def data_runs(fd: int, start: int, end: int) -> Iterator[Extent]:
    """DATA/UNALLOCATED runs of a plain file between ``start`` and ``end`` (host == guest)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:       # no data after pos: the rest is a hole
                yield Extent(pos, end - pos, Kind.UNALLOCATED)
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):   # no SEEK_DATA: all data
                yield Extent(pos, end - pos, Kind.DATA, pos)
                return
            raise
        if data > pos:
            hole_end = min(data, end)
            yield Extent(pos, hole_end - pos, Kind.UNALLOCATED)
            pos = hole_end
            if pos >= end:
                return
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        yield Extent(pos, hole - pos, Kind.DATA, pos)
        pos = hole
