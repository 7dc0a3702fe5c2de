"""Raw images: the file is the disk.  Holes are found with SEEK_DATA/SEEK_HOLE."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from .errors import TruncatedImage
from .image import DiskImage, Extent, Kind

SECTOR = 512


class RawImage(DiskImage):
    format_name = "raw"

    def __init__(self, path: str | os.PathLike[str], size: int | None = None) -> None:
        #: a fixed VHD read as raw passes size = file size - 512 to hide its footer
        self._size = size
        super().__init__(path)

    def _open(self) -> None:
        size = self._size
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
        yield from data_runs(self, start, end)


def data_runs(img: DiskImage, start: int, end: int) -> Iterator[Extent]:
    """DATA/UNALLOCATED runs of ``img``'s file between ``start`` and ``end`` (host == guest).
    A file found shorter than when it was opened was truncated under the reader: TruncatedImage,
    not a hole (SEEK_DATA and SEEK_HOLE fail with ENXIO past the end of the file)."""
    fd = img.fileno()
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:       # no data after pos: the rest is a hole
                _not_shrunk(img, pos)
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
        try:
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        except OSError as e:
            if e.errno == errno.ENXIO:       # pos was data a moment ago: the file shrank
                _not_shrunk(img, pos)
            raise
        yield Extent(pos, hole - pos, Kind.DATA, pos)
        pos = hole


def _not_shrunk(img: DiskImage, pos: int) -> None:
    now = os.lseek(img.fileno(), 0, os.SEEK_END)
    if now < img.file_size:
        raise TruncatedImage(img.path, "file", now,
                             f"the file ends here, not at {img.file_size:#x} as when it was "
                             f"opened: it shrank while it was being read (at {pos:#x})")
