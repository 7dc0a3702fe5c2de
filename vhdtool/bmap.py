"""A block map with per-range SHA-256 of a sparse file: the digest whose cost follows the data.

A fixed VHD is mostly holes: a 127 GiB disk holding 600 MiB of data.  A digest of every byte
(SHA-256, MD5) reads and hashes all 127 GiB of zeros -- 77 s where the conversion itself takes
0.13 s -- and nothing can shorten it: each block's hash state depends on all the bytes before.  So
the default digest of ``vhdtool convert`` is a *bmap*, as bmaptool makes one: the ranges of 4 KiB
blocks that hold data (``SEEK_DATA``/``SEEK_HOLE`` on the output file; holes read as zeros) and the
SHA-256 of each range -- work in proportion to the data.  Written with ``--bmap FILE`` in
bmaptool's own format (version 2.0), ``bmaptool copy --bmap FILE DISK.vhd TARGET`` verifies every
range as it copies.  Its one-line summary is the SHA-256 of the bmap file itself
(``BmapFileChecksum``): two files have the same one exactly when they have the same size, the same
blocks mapped and the same bytes in them.  A digest of every byte stays available
(``--digest sha256|md5``): Azure's Content-MD5 of a page blob is one.

References: bmap-tools 3.6 (Debian ``bmap-tools``): ``BmapCreate.py`` (format 2.0, the file
checksum computed with its own field set to zeros, each range's checksum over the bytes the file
has), ``Filemap.py`` (mapped blocks from SEEK_DATA/SEEK_HOLE); lseek(2).
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

BLOCK = 4096
#: hashing threads (hashlib and pread release the GIL)
THREADS = 2
READ = 1 << 20


@dataclass(frozen=True)
class Bmap:
    image_size: int
    #: (first block, last block, SHA-256 hex of those blocks' bytes in the file)
    ranges: tuple[tuple[int, int, str], ...]

    @property
    def blocks(self) -> int:
        return -(-self.image_size // BLOCK)

    @property
    def mapped_blocks(self) -> int:
        return sum(last - first + 1 for first, last, _ in self.ranges)

    def xml(self) -> str:
        """The bmap file (bmaptool's format 2.0), its own checksum filled in."""
        text = self._xml("0" * 64)
        return self._xml(hashlib.sha256(text.encode()).hexdigest())

    def file_checksum(self) -> str:
        """``BmapFileChecksum``: the SHA-256 of the bmap file with this field zeroed."""
        return hashlib.sha256(self._xml("0" * 64).encode()).hexdigest()

    def _xml(self, checksum: str) -> str:
        lines = ['<?xml version="1.0" ?>',
                 "<!-- Block map of a fixed VHD made by vhdtool convert: the 4 KiB blocks that",
                 "     hold data, each range with its SHA-256; every other block reads as zeros.",
                 "     bmaptool copy, given this file as its bmap, verifies each range. -->",
                 '<bmap version="2.0">',
                 f"    <ImageSize> {self.image_size} </ImageSize>",
                 f"    <BlockSize> {BLOCK} </BlockSize>",
                 f"    <BlocksCount> {self.blocks} </BlocksCount>",
                 f"    <MappedBlocksCount> {self.mapped_blocks} </MappedBlocksCount>",
                 "    <ChecksumType> sha256 </ChecksumType>",
                 f"    <BmapFileChecksum> {checksum} </BmapFileChecksum>",
                 "    <BlockMap>"]
        for first, last, digest in self.ranges:
            span = f"{first}-{last}" if first != last else f"{first}"
            lines.append(f'        <Range chksum="{digest}"> {span} </Range>')
        lines += ["    </BlockMap>", "</bmap>", ""]
        return "\n".join(lines)

    def summary(self, path: str | None = None) -> dict[str, object]:
        """What ``vhdtool convert --json`` reports under ``digests.bmap``."""
        return {"sha256": self.file_checksum(), "block_size": BLOCK,
                "mapped_bytes": min(self.mapped_blocks * BLOCK, self.image_size),
                "ranges": len(self.ranges), "file": path}


def mapped_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(first block, last block) of each run of blocks that holds data, ascending, from
    SEEK_DATA/SEEK_HOLE (a file system without them: the whole file is one range)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:          # only a hole is left
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield 0, (size - 1) // BLOCK
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        first, last = start // BLOCK, (min(end, size) - 1) // BLOCK
        yield first, last
        pos = (last + 1) * BLOCK


def _range_digest(fd: int, size: int, first: int, last: int) -> str:
    h = hashlib.sha256()
    pos, end = first * BLOCK, min((last + 1) * BLOCK, size)
    while pos < end:
        data = os.pread(fd, min(READ, end - pos), pos)
        if not data:
            raise OSError(errno.EIO, f"the file ends at {pos:#x}, inside a mapped range")
        h.update(data)
        pos += len(data)
    return h.hexdigest()


def compute(fd: int) -> Bmap:
    """The bmap of the open file ``fd`` as it is now (read in its mapped ranges only)."""
    size = os.fstat(fd).st_size
    spans = list(mapped_ranges(fd, size))
    with ThreadPoolExecutor(THREADS, thread_name_prefix="vhdtool-bmap") as pool:
        digests = list(pool.map(lambda r: _range_digest(fd, size, *r), spans))
    return Bmap(size, tuple((a, b, d) for (a, b), d in zip(spans, digests)))
