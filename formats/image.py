"""The one interface every image format offers: virtual size, an allocation map, and ``read()``.

An opened image describes the guest-visible disk as a sequence of :class:`Extent` runs:

* ``DATA``: bytes stored in a file (this image's, or a backing/parent layer's), at ``host_offset``;
* ``ZERO``: the format says these bytes read as zeros (qcow2 zero clusters, VHDX ZERO/UNMAPPED);
* ``UNALLOCATED``: nothing is stored anywhere in the chain; reads as zeros.

``read()`` is built on that map, so the converter and the reader can never disagree.  Each format
implements ``_extents(start, end)`` and, when its data is not plain bytes (qcow2 compressed
clusters), ``_read_data``.  The base class clips, merges and checks the runs.
"""

from __future__ import annotations

import enum
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import CorruptImage, FormatError, TruncatedImage

#: Largest single read() a caller may ask for: reads are bounded so memory is.
MAX_READ = 256 * 1024 * 1024


class Kind(enum.Enum):
    DATA = "data"
    ZERO = "zero"
    UNALLOCATED = "unallocated"


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of guest bytes ``[offset, offset + length)`` of one kind."""

    offset: int
    length: int
    kind: Kind
    #: DATA only: where the first byte lives in ``source``'s file (or a format-private descriptor
    #: when ``compressed``).
    host_offset: int | None = None
    #: DATA only: the image whose file holds the bytes (a backing or parent layer); None = this one.
    source: DiskImage | None = field(default=None, compare=False)
    #: a run of qcow2 compressed clusters: ``host_offset`` is not a file offset but the guest offset
    #: where the run starts (the format finds each cluster's stream from it), and ``inner`` is the
    #: distance from there to ``offset`` (non-zero once the run has been clipped).
    compressed: bool = False
    inner: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length

    def clip(self, start: int, end: int) -> Extent | None:
        lo, hi = max(self.offset, start), min(self.end, end)
        if lo >= hi:
            return None
        if lo == self.offset and hi == self.end:
            return self
        host, inner = self.host_offset, self.inner
        if self.compressed:
            inner += lo - self.offset
        elif host is not None:
            host += lo - self.offset
        return Extent(lo, hi - lo, self.kind, host, self.source, self.compressed, inner)


_NOT_AN_IMAGE = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
                 stat.S_IFCHR: "a character device", stat.S_IFDIR: "a directory"}


def open_file(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(read-only descriptor, size in bytes) of an image: a regular file or a block device.

    A FIFO, socket, character device or directory is a FormatError naming the file, found before
    opening it (opening a FIFO would wait for a writer forever, a socket cannot be opened) and
    again after (it is opened without blocking, in case the path changed in between).  A block
    device's size is where it ends (its st_size is 0).  OSErrors carry the path."""
    p = os.fspath(path)
    fd = -1
    try:
        _refuse_non_disk(p, os.stat(p).st_mode)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(fd)
        _refuse_non_disk(p, st.st_mode)
        size = os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
        os.set_blocking(fd, True)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        if isinstance(e, OSError):
            raise type(e)(e.errno, e.strerror, p) from e
        raise
    return fd, size


def _refuse_non_disk(path: str, mode: int) -> None:
    what = _not_a_disk(mode)
    if what is not None:
        raise FormatError(path, "file", None, what)


def _not_a_disk(mode: int) -> str | None:
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return None
    what = _NOT_AN_IMAGE.get(stat.S_IFMT(mode), "not a regular file")
    return f"{what}, not a disk image (a regular file or a block device)"


def why_not_openable(path: str) -> str | None:
    """Why a backing or parent file named by an image cannot serve as one, as a predicate ("not
    found", "is a FIFO, not a disk image ...", "cannot be read: Permission denied"), or None
    when it is a regular file or a block device that exists.  Never opens the file (a FIFO
    would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    what = _not_a_disk(mode)
    return None if what is None else "is " + what


@dataclass(frozen=True, slots=True)
class Problem:
    """Something readable but wrong or suspicious about an image's structure."""

    severity: str          # "error" | "warning" | "info"
    structure: str
    offset: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "structure": self.structure, "offset": self.offset,
                "message": self.message}


class DiskImage(ABC):
    """An image file opened read-only."""

    format_name: ClassVar[str] = "?"

    def __init__(self, path: str | os.PathLike[str], _chain: tuple[str, ...] = ()) -> None:
        """Open ``path`` and read its structures (``_open``); on any error the file is closed
        again.  ``_chain``: the real paths of this image and of those it backs (``open_image``
        passes it; a backing or parent file is opened with it, which stops loops)."""
        self.path = os.fspath(path)
        self._fd = -1
        self._fd, self.file_size = open_file(self.path)
        self.problems: list[Problem] = []
        #: backing file (qcow2) or parent (VHD/VHDX differencing), opened, or None
        self.backing: DiskImage | None = None
        self._chain = _chain or (os.path.realpath(self.path),)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Read and check the format's structures (the file is open); FormatError if bad."""

    # -- what every format provides -------------------------------------------------------------
    @property
    @abstractmethod
    def virtual_size(self) -> int:
        """Size of the disk the guest sees, in bytes."""

    @property
    def subformat(self) -> str:
        return ""

    @property
    def logical_sector_size(self) -> int:
        return 512

    @abstractmethod
    def _extents(self, start: int, end: int) -> Iterator[Extent]:
        """Runs covering at least ``[start, end)`` in ascending order, without gaps."""

    def info(self) -> dict[str, Any]:
        """Format-specific facts for ``vhdtool info`` (creator, geometry, sizes per reader...)."""
        return {}

    # -- built on the above ---------------------------------------------------------------------
    def extents(self, start: int = 0, end: int | None = None) -> Iterator[Extent]:
        """The allocation map of ``[start, end)``: clipped, merged, checked runs."""
        end = self.virtual_size if end is None else min(end, self.virtual_size)
        pos = start
        pending: Extent | None = None
        for ext in self._extents(start, end):
            ext2 = ext.clip(pos, end)
            if ext2 is None:
                if ext.end <= pos:
                    continue
                break
            if ext2.offset != pos:
                raise CorruptImage(self.path, "allocation map", ext2.offset,
                                   f"internal gap: expected a run at {pos:#x}")
            pos = ext2.end
            if pending is not None and _mergeable(pending, ext2):
                host = pending.host_offset
                pending = Extent(pending.offset, pending.length + ext2.length, pending.kind, host,
                                 pending.source)
            else:
                if pending is not None:
                    yield pending
                pending = ext2
            if pos >= end:
                break
        if pending is not None:
            yield pending
        if pos < end:
            raise CorruptImage(self.path, "allocation map", pos, "allocation map ends early")

    def allocated_bytes(self) -> int:
        """Guest bytes whose data is stored in this image or its chain."""
        return sum(e.length for e in self.extents() if e.kind is Kind.DATA)

    def read(self, offset: int, length: int) -> bytes:
        """Guest bytes ``[offset, offset+length)``, clamped to the virtual size."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if length > MAX_READ:
            raise ValueError(f"read of {length} bytes exceeds the {MAX_READ}-byte limit")
        end = min(offset + length, self.virtual_size)
        if end <= offset:
            return b""
        buf = bytearray(end - offset)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` (assumed zeroed) with guest bytes from ``offset``."""
        mv = memoryview(buf)
        end = offset + len(mv)
        for ext in self.extents(offset, end):
            if ext.kind is not Kind.DATA:
                continue
            src = ext.source or self
            a = ext.offset - offset
            src._read_data(ext, mv[a:a + ext.length])

    def file_range(self, ext: Extent) -> tuple[int, int] | None:
        """``(fd, offset)`` when the guest bytes of DATA extent ``ext`` are exactly the bytes
        ``[offset, offset + ext.length)`` of an open file (so a copier may read them straight
        from that file, or hand them to the kernel); None when they must go through
        ``readinto`` (compressed, patched by a log, partly past the end of the file)."""
        return (ext.source or self)._file_range(ext)

    def _file_range(self, ext: Extent) -> tuple[int, int] | None:
        host = ext.host_offset
        plain = self._plain_read_data or type(self)._read_data is DiskImage._read_data
        if (not plain or ext.kind is not Kind.DATA or ext.compressed or host is None or host < 0
                or host + ext.length > self.file_size):
            return None
        return self._fd, host

    #: a format overriding ``_read_data`` sets this when its non-compressed data inside the file
    #: still reads as the plain file bytes
    _plain_read_data: ClassVar[bool] = False

    def _read_data(self, ext: Extent, out: memoryview) -> None:
        """Read a DATA extent stored in this image's file into ``out`` (len == ext.length)."""
        assert ext.host_offset is not None
        self._pread_into(ext.host_offset, out, "data")

    # -- file access helpers for the formats ----------------------------------------------------
    def _pread(self, offset: int, length: int, structure: str) -> bytes:
        """Read exactly ``length`` bytes of a structure, or raise TruncatedImage."""
        if offset < 0 or offset + length > self.file_size:
            raise TruncatedImage(self.path, structure, offset,
                                 f"needs {length} bytes but the file is {self.file_size} bytes long")
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise TruncatedImage(self.path, structure, offset, "short read")
        return data

    def _pread_into(self, offset: int, out: memoryview, structure: str) -> None:
        n = len(out)
        if offset < 0 or offset + n > self.file_size:
            raise TruncatedImage(self.path, structure, offset,
                                 f"needs {n} bytes but the file is {self.file_size} bytes long")
        done = 0
        while done < n:
            got = os.preadv(self._fd, [out[done:]], offset + done)
            if got <= 0:
                raise TruncatedImage(self.path, structure, offset + done, "short read")
            done += got

    def problem(self, severity: str, structure: str, offset: int | None, message: str) -> None:
        self.problems.append(Problem(severity, structure, offset, message))

    def all_problems(self) -> list[Problem]:
        out = list(self.problems)
        if self.backing is not None:
            out += [Problem(p.severity, f"backing {self.backing.path}: {p.structure}", p.offset,
                            p.message) for p in self.backing.all_problems()]
        return out

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self.backing is not None:
            self.backing.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} {self.subformat} {self.virtual_size}>"


def _mergeable(a: Extent, b: Extent) -> bool:
    if a.kind is not b.kind or a.end != b.offset:
        return False
    if a.kind is not Kind.DATA:
        return True
    return (not a.compressed and not b.compressed and a.source is b.source
            and a.host_offset is not None and b.host_offset is not None
            and a.host_offset + a.length == b.host_offset)


def zero_runs(start: int, end: int, kind: Kind = Kind.UNALLOCATED) -> Extent:
    return Extent(start, end - start, kind)
