"""Build :class:`checks.disk.DiskFacts` from an image file through the format core.

Reads only what the disk checks need: the footer (last 512 bytes of the file), sector 0, the GPT
header and its backup, the partition table, the first :data:`~vhdtool.fssniff.SNIFF_BYTES` of each
partition, and the disk's last sector.  Every read goes through a :class:`CountingReader`, so the
benchmark can show how little is read.

References:
  Virtual Hard Disk Image Format Specification v1.0 (footer at EOF; copy at offset 0 for
  dynamic disks); UEFI 2.10 §5.2-5.3 (protective MBR, GPT header, AlternateLBA, backup
  header at the last LBA); ``formats.vhd`` and ``formats.partitions`` (the parsers used).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from checks.disk import (DISK_TYPE_FIXED, SECTOR, VHD_COOKIE, VHD_VERSION, DiskFacts, FooterFacts,
                         PartitionFacts, StructureError, normalize_type_id)
from formats import DiskImage, open_image, probe
from formats import vhd as vhdfmt
from formats.partitions import Partition, PartitionTable, read_partition_table

from .fssniff import SNIFF_BYTES, sniff_fs

@dataclass
class CountingReader:
    """``read(offset, length)`` over an image, counting calls and bytes."""

    image: DiskImage
    calls: int = 0
    bytes_read: int = 0

    def read(self, offset: int, length: int) -> bytes:
        self.calls += 1
        self.bytes_read += length
        return self.image.read(offset, length)


def footer_facts(raw: bytes, path: str, offset: int) -> FooterFacts:
    f = vhdfmt.parse_footer(raw, path, offset, verify=False)
    return FooterFacts(
        cookie=f.cookie, checksum_ok=f.checksum_ok, version=f.version, data_offset=f.data_offset,
        disk_type=f.disk_type, current_size=f.current_size, original_size=f.original_size,
        geometry=f.disk_geometry, chs_size=f.chs_size,
        creator_app=f.creator_app.decode("latin-1"), offset=offset,
        sizes_by_reader=vhdfmt.sizes_by_reader(f))


def _looks_like_footer(f: FooterFacts) -> bool:
    """A footer with a damaged cookie still has the spec's version and a known disk type."""
    return f.cookie == VHD_COOKIE or (f.version == VHD_VERSION and f.disk_type in (2, 3, 4))


def read_footer(path: str, file_size: int) -> FooterFacts | None:
    """The VHD footer at the end of the file (or the copy at offset 0), if there is one."""
    if file_size < SECTOR:
        return None
    with open(path, "rb") as fh:
        tail = os.pread(fh.fileno(), SECTOR, file_size - SECTOR)
        head = os.pread(fh.fileno(), SECTOR, 0)
    end = footer_facts(tail, path, file_size - SECTOR)
    if end.cookie == VHD_COOKIE:
        return end
    if head[:8] == VHD_COOKIE:
        return footer_facts(head, path, 0)
    return end if _looks_like_footer(end) else None


def _stale_footer(read: Callable[[int, int], bytes], size: int, path: str) -> int | None:
    if size < SECTOR:
        return None
    last = read(size - SECTOR, SECTOR)
    if last[:8] != VHD_COOKIE:
        return None
    inner = vhdfmt.parse_footer(last, path, size - SECTOR, verify=False)
    return size - SECTOR if inner.checksum_ok else None


#: problems of formats.partitions that the partition checks report themselves
_PARTITION_LEVEL = re.compile(r"^(GPT|MBR) partition \d+$")


def _sniffed(p: Partition, read: Callable[[int, int], bytes]) -> PartitionFacts:
    head = read(p.start, min(SNIFF_BYTES, p.size)) if p.size > 0 else b""
    return PartitionFacts(index=p.index, start=p.start, size=p.size,
                          type_id=normalize_type_id(p.type_id), type_name=p.type_name,
                          name=p.name, bootable=p.bootable, fs=sniff_fs(head))


def _backup(table: PartitionTable, last_lba: int) -> tuple[int | None, bool | None]:
    """The primary header's AlternateLBA, and whether a valid backup sits at the last LBA."""
    gpt = table.gpt
    if gpt is None:
        return None, None
    alternate = gpt.primary.alternate_lba if gpt.primary is not None else None
    found = gpt.backup_valid and gpt.backup is not None and gpt.backup.my_lba == last_lba
    return alternate, found


def _layout(reader: CountingReader, img: DiskImage) -> dict[str, Any]:
    size, ss = img.virtual_size, img.logical_sector_size
    table = read_partition_table(reader.read, size, ss, img.path)
    alternate, found = _backup(table, size // ss - 1)
    parts = tuple(_sniffed(p, reader.read) for p in table.partitions
                  if p.type_short != "extended")
    problems = tuple(f"{p.structure}: {p.message}" for p in table.problems
                     if p.severity == "error" and not _PARTITION_LEVEL.match(p.structure))
    return {"scheme": "gpt" if table.scheme == "hybrid" else table.scheme,
            "partitions": parts,
            "mbr_boot_code": table.mbr is not None and table.mbr.boot_code_present,
            "gpt_alternate_lba": alternate, "gpt_backup_found": found,
            "table_problems": problems}


def _needs_conversion(fmt: str, footer: FooterFacts | None) -> bool:
    return fmt != "vpc" or footer is None or footer.disk_type != DISK_TYPE_FIXED


def build_disk_facts(path: str, fmt: str | None = None) -> tuple[DiskFacts, int]:
    """The disk facts of ``path`` and the number of image bytes read to get them.

    The image is opened with the format core, its whole backing chain included: a FormatError
    (corrupt or truncated structure, backing loop, missing backing file, a backing file that is
    no regular file...) propagates, so that no guest engine is ever handed an image vhdtool's own
    reader refuses (libguestfs' ``qemu-img create -b`` spins on a loop and blocks on a FIFO).
    An image that must be converted anyway whose reader is missing from this build (ImportError)
    still gets its container facts.
    """
    name = fmt or probe(path)
    name = "vpc" if name == "vhd" else name
    file_size = os.stat(path).st_size
    sniffed = name in ("vpc", "raw") and file_size >= SECTOR
    footer = read_footer(path, file_size) if sniffed else None
    footer_bytes = 2 * SECTOR if sniffed else 0
    subformat = footer.disk_type_name if footer is not None and name == "vpc" else ""
    try:
        img = open_image(path, name)
    except ImportError as e:
        if not _needs_conversion(name, footer):
            raise
        size = footer.current_size if footer is not None else None
        return DiskFacts(path=path, format=name, subformat=subformat, file_size=file_size,
                         virtual_size=size, footer=footer,
                         unreadable=f"not readable by this build: {e}"), footer_bytes
    with img:
        reader = CountingReader(img)
        layout = _layout(reader, img)
        stale = _stale_footer(reader.read, img.virtual_size, path)
        damage = tuple(StructureError(p.structure, p.offset, p.message)
                       for p in img.all_problems() if p.severity == "error")
        facts = DiskFacts(path=path, format=name, subformat=img.subformat or subformat,
                          file_size=file_size, virtual_size=img.virtual_size,
                          logical_sector_size=img.logical_sector_size, footer=footer,
                          stale_footer_at=stale, structure_errors=damage, **layout)
    return facts, reader.bytes_read + footer_bytes
