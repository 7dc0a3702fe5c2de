"""What a conversion will write, decided before any byte is copied: whether the source may be
converted at all, the output's size and Azure's limits on it, the footer, the GPT patches, and the
windows of the output to materialise (everything between them is a hole).

When the disk grows to reach a whole MiB and carries a GPT, the backup header and entries move to
the new last LBA (what ``sgdisk -e`` does), patched into the same single pass so digests match.

References:
- Microsoft Virtual Hard Disk Image Format Specification (fixed disk footer: the last 512 bytes).
- qemu block/vpc.c (``force_size``, the 2040 GiB limit).
- Azure: learn.microsoft.com/azure/virtual-machines/linux/create-upload-generic (virtual size
  aligned to 1 MiB, fixed VHD only); .../disks-upload-vhd-to-managed-disk-cli (upload size between
  20 MiB + 512 and 32 TiB + 512 bytes); the catalog's ``disk.size.*`` checks cite the same
  pages (vhdtool.checks.sources).
- UEFI 2.10 §5.3 (GPT backup header at the last LBA), sgdisk(8) ``-e``.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vhdtool.formats import CorruptImage, DiskImage, FormatError, Kind

from .result import ConvertError
from .sysio import CHUNK

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
FOOTER_SIZE = 512
#: data runs closer than this are read as one window
GAP = 1 * MiB
#: Azure direct upload: UploadSizeBytes between 20 MiB + 512 and 32 TiB + 512 (UPL, MKT)
AZURE_MIN_SIZE = 20 * MiB
AZURE_MAX_SIZE = 32 * TiB

#: (output offset, bytes) written over what the source reads there
Patch = tuple[int, bytes]


# -- may it be converted, and to what size ---------------------------------------------------------
def refuse_empty(img: DiskImage) -> None:
    """A disk of 0 bytes is a failed build, not an image: refused rather than padded to 1 MiB."""
    if img.virtual_size == 0:
        raise ConvertError(f"{img.path}: the image is empty (virtual size 0 bytes): "
                           "nothing to convert")


def structure_errors(img: DiskImage, salvage: bool) -> list[str]:
    """The error-level structure problems of ``img`` and its chain (what ``vhdtool info`` lists as
    errors: overlapping blocks, a bad checksum, a missing footer, data shorter than the size).

    A damaged image is refused (CorruptImage, exit 3, naming the first problem's structure and
    offset): converting it would bless it, and what its damaged parts read as is a guess that
    other readers (qemu-img, Hyper-V) may not share.  With ``salvage`` it is copied as vhdtool
    reads it, best-effort, and the problems come back as warnings for the result."""
    errors = [p for p in img.all_problems() if p.severity == "error"]
    if not errors or salvage:
        return [f"salvaged despite {p.structure}"
                + (f" at offset {p.offset:#x}" if p.offset is not None else "")
                + f": {p.message}" for p in errors]
    first = errors[0]
    more = f"; and {len(errors) - 1} more (vhdtool info {img.path})" if len(errors) > 1 else ""
    raise CorruptImage(img.path, first.structure, first.offset,
                       f"{first.message}{more} -- the image is damaged, so it is not converted "
                       f"(re-export it from its source; --salvage copies it anyway, best-effort, "
                       f"as vhdtool reads it)")


def rounded_size(virtual_size: int) -> int:
    """``virtual_size`` rounded up to a whole MiB (never down, never 0)."""
    return max(MiB, -(-virtual_size // MiB) * MiB)


def size_warnings(size: int, sector_size: int = 512) -> list[str]:
    """Azure limits a size of ``size`` bytes meets (the hard 32 TiB limit is an error instead),
    and a source sector size a VHD cannot keep."""
    out = []
    if size < AZURE_MIN_SIZE:
        out.append(f"{size} bytes is below Azure's 20 MiB minimum upload size")
    if size > 4 * TiB:
        out.append("larger than 4 TiB: usable as a data disk only, not as an OS disk")
    elif size > 2 * TiB:
        out.append("larger than 2 TiB: as an OS disk it needs a Generation 2 VM")
    elif size > 1023 * GiB:
        out.append("larger than 1,023 GiB: the Marketplace and Azure's generic Linux guide cap "
                   "OS disk VHDs there")
    if size > 2040 * GiB:
        out.append("larger than 2040 GiB: qemu refuses to open VHDs this big (Azure accepts up "
                   "to 32 TiB)")
    if sector_size != 512:
        out.append(f"the source has {sector_size}-byte logical sectors; a VHD has 512-byte "
                   "sectors, so a partition table laid out for the source's sectors will not be "
                   "found at the same LBAs")
    return out


def check_size(size: int, dst: str) -> None:
    if size > AZURE_MAX_SIZE:
        raise ConvertError(f"{dst}: a {size}-byte disk exceeds Azure's upload limit of "
                           f"{AZURE_MAX_SIZE} bytes (32 TiB) for a VHD")


def file_backed(img: DiskImage) -> bool:
    """A source ``--in-place`` can finish: its guest bytes are the file's own."""
    return img.format_name == "raw" or (img.format_name == "vpc" and img.subformat == "fixed")


# -- the footer and the GPT (from the format core) -------------------------------------------------
def gpt_patches(img: DiskImage, size: int) -> tuple[list[Patch], list[str]]:
    """Writes that move a GPT's backup to the last LBA of a disk grown to ``size`` (as
    ``sgdisk -e``), and warnings: a damaged primary GPT is copied as it is, not relocated."""
    if size <= img.virtual_size:
        return [], []
    from vhdtool.formats.partitions import read_partition_table, relocate_gpt_backup  # only when growing

    ss = img.logical_sector_size
    table = read_partition_table(img.read, img.virtual_size, ss, img.path)
    if table.gpt is None or table.gpt.primary is None:
        return [], []
    try:
        return list(relocate_gpt_backup(img.read, img.virtual_size, size, ss)), []
    except FormatError as e:
        return [], [f"GPT backup not moved to the new last LBA ({e.structure}: {e.message}); "
                    f"repair the table with sgdisk -e"]


def make_footer(size: int, unique_id: bytes | None = None) -> bytes:
    from vhdtool.formats.vhd import build_fixed_footer

    footer = build_fixed_footer(size, unique_id=unique_id)
    if len(footer) != FOOTER_SIZE:
        raise AssertionError("build_fixed_footer must give 512 bytes")
    return footer


def verify_footer(fd: int, path: str, size: int) -> Any:
    """Re-read the footer just written at ``size`` and check that it reads back as ``size``."""
    from vhdtool.formats.vhd import parse_footer

    data = os.pread(fd, FOOTER_SIZE, size)
    footer = parse_footer(data, path, size, verify=True)
    if (footer.current_size != size or footer.disk_type_name != "fixed"
            or os.fstat(fd).st_size != size + FOOTER_SIZE):
        raise ConvertError(f"{path}: the footer written reads back as {footer.current_size} "
                           f"bytes, not {size}")
    return footer


# -- the windows of the output to materialise ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Window:
    """A range of the output to materialise; ``solid``: made only of DATA, read fills it all."""

    start: int
    end: int
    solid: bool


def windows(img: DiskImage, size: int, patches: Sequence[Patch], align: int = CHUNK,
            gap: int = GAP) -> Iterator[Window]:
    """Ranges of ``[0, size)`` to materialise (data runs and GPT patches), ``align``-aligned,
    merged when closer than ``gap``, ascending; everything between them is a hole.  Streams the
    map, so memory does not grow with the number of extents."""
    data = ((e.offset, e.end, True) for e in img.extents() if e.kind is Kind.DATA)
    spans = heapq.merge(data, sorted((o, o + len(b), False) for o, b in patches))
    cur: Window | None = None
    for a0, b0, is_data in spans:
        a, b = a0 // align * align, min(size, -(-b0 // align) * align)
        solid = is_data and (a, b) == (a0, b0)
        if cur is not None and a <= cur.end + gap:
            cur = Window(cur.start, max(cur.end, b), cur.solid and solid and a == cur.end)
            continue
        if cur is not None:
            yield cur
        cur = Window(a, b, solid)
    if cur is not None:
        yield cur
