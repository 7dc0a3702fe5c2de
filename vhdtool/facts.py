"""The disk facts the checks judge (:class:`checks.disk.DiskFacts`): a projection of a ``Disk``.

Nothing here opens or probes anything: the footer is the one the format reader chose, the layout
is :meth:`vhdtool.disk.Disk.table` with the image's sector size, and each partition's ``fs`` is
its ``blkid`` TYPE (:mod:`vhdtool.blkid`) in the checks' coarser vocabulary (:data:`FS_KIND`).
Reads: the partition table (sector 0, the GPT header, its entries and backup), the first
:data:`~vhdtool.blkid.PROBE_BYTES` of each partition, and the disk's last sector.

References:
  Virtual Hard Disk Image Format Specification v1.0 (footer at EOF; copy at offset 0 for
  dynamic disks); UEFI 2.10 §5.2-5.3 (protective MBR, GPT header, AlternateLBA, backup
  header at the last LBA); ``formats.vhd`` and ``formats.partitions`` (the parsers used).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from vhdtool.checks.disk import (DISK_TYPE_FIXED, SECTOR, VHD_COOKIE, DiskFacts, FooterFacts,
                                  PartitionFacts, StructureError, normalize_type_id)
from vhdtool.formats import vhd as vhdfmt
from vhdtool.formats.partitions import Partition, PartitionTable

from .disk import Disk

#: blkid TYPE -> the name ``PartitionFacts.fs`` uses (checks.disk: fat, ext, xfs, swap, lvm2...)
FS_KIND = {"vfat": "fat", "ext2": "ext", "ext3": "ext", "ext4": "ext", "jbd": "ext",
           "LVM2_member": "lvm2", "crypto_LUKS": "luks"}

#: problems of formats.partitions that the partition checks report themselves
_PARTITION_LEVEL = re.compile(r"^(GPT|MBR) partition \d+$")


def footer_facts(f: vhdfmt.Footer) -> FooterFacts:
    return FooterFacts(
        cookie=f.cookie, checksum_ok=f.checksum_ok, version=f.version, data_offset=f.data_offset,
        disk_type=f.disk_type, current_size=f.current_size, original_size=f.original_size,
        geometry=f.disk_geometry, chs_size=f.chs_size,
        creator_app=f.creator_app.decode("latin-1"), offset=f.offset,
        sizes_by_reader=vhdfmt.sizes_by_reader(f))


def _stale_footer(read: Callable[[int, int], bytes], size: int, path: str) -> int | None:
    if size < SECTOR:
        return None
    last = read(size - SECTOR, SECTOR)
    if last[:8] != VHD_COOKIE:
        return None
    inner = vhdfmt.parse_footer(last, path, size - SECTOR, verify=False)
    return size - SECTOR if inner.checksum_ok else None


def _partition(p: Partition, fstype: str | None) -> PartitionFacts:
    return PartitionFacts(index=p.index, start=p.start, size=p.size,
                          type_id=normalize_type_id(p.type_id), type_name=p.type_name,
                          name=p.name, bootable=p.bootable,
                          fs=FS_KIND.get(fstype, fstype) if fstype else None)


def _backup(table: PartitionTable, last_lba: int) -> tuple[int | None, bool | None]:
    """The primary header's AlternateLBA, and whether a valid backup sits at the last LBA."""
    gpt = table.gpt
    if gpt is None:
        return None, None
    alternate = gpt.primary.alternate_lba if gpt.primary is not None else None
    found = gpt.backup_valid and gpt.backup is not None and gpt.backup.my_lba == last_lba
    return alternate, found


def _layout(disk: Disk) -> dict[str, Any]:
    table = disk.table()
    alternate, found = _backup(table, disk.virtual_size // disk.sector_size - 1)
    types = {v.partition.index: v.probe.type for v in disk.partitions() if v.probe is not None}
    parts = tuple(_partition(p, types.get(p.index)) for p in table.partitions
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


def disk_facts(disk: Disk) -> DiskFacts:
    """The disk facts of an opened :class:`Disk`.

    An image that must be converted anyway whose reader is missing from this build still gets
    its container facts; one that needs no conversion re-raises the missing reader.
    """
    footer = footer_facts(disk.footer) if disk.footer is not None else None
    subformat = footer.disk_type_name if footer is not None and disk.format == "vpc" else ""
    img = disk.image
    if img is None:
        if not _needs_conversion(disk.format, footer):
            raise ImportError(disk.unreadable)
        size = footer.current_size if footer is not None else None
        return DiskFacts(path=disk.path, format=disk.format, subformat=subformat,
                         file_size=disk.file_size, virtual_size=size, footer=footer,
                         unreadable=disk.unreadable)
    layout = _layout(disk)
    stale = _stale_footer(disk.read, img.virtual_size, disk.path)
    damage = tuple(StructureError(p.structure, p.offset, p.message)
                   for p in img.all_problems() if p.severity == "error")
    return DiskFacts(path=disk.path, format=disk.format, subformat=img.subformat or subformat,
                     file_size=disk.file_size, virtual_size=img.virtual_size,
                     logical_sector_size=img.logical_sector_size, footer=footer,
                     stale_footer_at=stale, structure_errors=damage, **layout)


def footer_bytes(disk: Disk) -> int:
    """Bytes of the file read to find the footer (the last sector, and the copy at offset 0)."""
    return 2 * SECTOR if disk.format in ("vpc", "raw") and disk.file_size >= SECTOR else 0


def build_disk_facts(path: str, fmt: str | None = None) -> tuple[DiskFacts, int]:
    """The disk facts of ``path`` and the number of image bytes read to get them (a FormatError
    propagates: see :class:`vhdtool.disk.Disk`)."""
    with Disk(path, fmt) as disk:
        return disk.facts, disk.bytes_read + footer_bytes(disk)
