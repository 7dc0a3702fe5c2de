"""Build :class:`checks.disk.DiskFacts` from an image file through the format core.

Reads only what the disk checks need: the footer (last 512 bytes of the file), sector 0, the GPT
header and its backup, the partition table, the first :data:`~vhdtool.fssniff.SNIFF_BYTES` of each
partition, and the disk's last sector.  Every read goes through a :class:`CountingReader`, so the
benchmark can show how little is read.

References:
  Virtual Hard Disk Image Format Specification v1.0 (footer at EOF; copy at offset 0 for
  dynamic disks); UEFI 2.10 §5.2-5.3 (protective MBR, GPT header, AlternateLBA, backup
  header at the last LBA); ``formats.vhd``, ``formats.mbr``, ``formats.gpt`` (the parsers used).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from checks.disk import (DISK_TYPE_FIXED, SECTOR, VHD_COOKIE, VHD_VERSION, DiskFacts, FooterFacts,
                         PartitionFacts, normalize_type_id)
from formats import DiskImage, FormatError, open_image, probe
from formats import gpt as gptfmt
from formats import mbr as mbrfmt
from formats import vhd as vhdfmt

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


@dataclass(frozen=True)
class _Table:
    scheme: str
    partitions: tuple[PartitionFacts, ...] = ()
    boot_code: bool = False
    alternate_lba: int | None = None
    backup_found: bool | None = None
    problems: tuple[str, ...] = ()


def _sniffed(read: Callable[[int, int], bytes], index: int, start: int, size: int, type_id: str,
             type_name: str, name: str = "", bootable: bool = False) -> PartitionFacts:
    head = read(start, min(SNIFF_BYTES, size)) if size > 0 else b""
    return PartitionFacts(index=index, start=start, size=size, type_id=normalize_type_id(type_id),
                          type_name=type_name, name=name, bootable=bootable, fs=sniff_fs(head))


def _gpt(read: Callable[[int, int], bytes], size: int, ss: int, path: str,
         boot_code: bool) -> _Table:
    problems: list[str] = []
    try:
        head = gptfmt.parse_header(read(ss, ss), ss, ss, path)
    except FormatError as e:
        return _Table("none", boot_code=boot_code,
                      problems=(f"protective MBR but no usable GPT header: {e}",))
    if not head.header_crc_ok:
        problems.append("primary GPT header CRC32 mismatch")
    try:
        data, crc_ok = gptfmt.read_entry_array(read, head, size, ss, path)
    except FormatError as e:          # a damaged table is a finding, not an unreadable image
        return _Table("gpt", boot_code=boot_code, alternate_lba=head.alternate_lba,
                      problems=tuple(problems) + (f"GPT entry array unusable: {e}",))
    if not crc_ok:
        problems.append("GPT entry array CRC32 mismatch")
    parts = tuple(_sniffed(read, e.index, e.first_lba * ss, (e.last_lba - e.first_lba + 1) * ss,
                           e.type_guid, e.type_name, e.name)
                  for e in gptfmt.parse_entries(data, head.entry_size) if e.last_lba >= e.first_lba)
    last = size // ss - 1
    try:
        backup = gptfmt.parse_header(read(last * ss, ss), last * ss, ss, path, "backup GPT header")
        found = backup.header_crc_ok and backup.my_lba == last
    except FormatError:
        found = False
    return _Table("gpt", parts, boot_code, head.alternate_lba, found, tuple(problems))


def _read_table(read: Callable[[int, int], bytes], size: int, ss: int, path: str) -> _Table:
    """MBR or GPT, through formats.mbr / formats.gpt; scheme "none" without a 0x55AA MBR."""
    try:
        mbr = mbrfmt.read_mbr(read, size, ss, path)
    except FormatError:
        return _Table("none")
    if mbr.has_gpt_entry:
        return _gpt(read, size, ss, path, mbr.boot_code_present)
    parts = tuple(_sniffed(read, e.index, e.lba_start * ss, e.num_sectors * ss, f"0x{e.type:02x}",
                           mbrfmt.MBR_TYPES.get(e.type, ("", ""))[1], bootable=e.bootable)
                  for e in mbr.entries if not e.extended)
    return _Table("mbr", parts, mbr.boot_code_present,
                  problems=tuple(p.message for p in mbr.problems))


def _layout(reader: CountingReader, img: DiskImage) -> dict[str, Any]:
    size, ss = img.virtual_size, img.logical_sector_size
    if size < 2 * ss:
        return {"scheme": "none"}
    t = _read_table(reader.read, size, ss, img.path)
    return {"scheme": t.scheme, "partitions": t.partitions, "mbr_boot_code": t.boot_code,
            "gpt_alternate_lba": t.alternate_lba, "gpt_backup_found": t.backup_found,
            "table_problems": t.problems}


def _needs_conversion(fmt: str, footer: FooterFacts | None) -> bool:
    return fmt != "vpc" or footer is None or footer.disk_type != DISK_TYPE_FIXED


def build_disk_facts(path: str, fmt: str | None = None) -> tuple[DiskFacts, int]:
    """The disk facts of ``path`` and the number of image bytes read to get them.

    An image this build cannot read (a dynamic VHD, a format whose reader is missing) still gets
    its container facts when it must be converted anyway; otherwise the FormatError propagates.
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
    except (FormatError, ImportError) as e:
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
        facts = DiskFacts(path=path, format=name, subformat=img.subformat or subformat,
                          file_size=file_size, virtual_size=img.virtual_size,
                          logical_sector_size=img.logical_sector_size, footer=footer,
                          stale_footer_at=stale, **layout)
    return facts, reader.bytes_read + footer_bytes
