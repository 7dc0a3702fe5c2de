"""The Master Boot Record: sector 0's boot code, four primary entries and the EBR chain.

Layout of sector 0 (always the first 512 bytes, whatever the logical sector size): 440 bytes of
boot code, a 4-byte disk signature, 2 reserved bytes, four 16-byte partition entries (status,
first CHS, type, last CHS, first LBA, sector count) and the 0x55 0xAA signature.  An extended
partition (type 0x05, 0x0F or 0x85) holds a chain of Extended Boot Records: each EBR's first entry
is a logical partition relative to that EBR, its second entry points to the next EBR relative to
the start of the extended partition.  A single type 0xEE entry is a GPT protective MBR; 0xEE
beside other entries is a hybrid MBR.

References:
  * UEFI Specification 2.10, section 5.2 "LBA 0 Format" (legacy and protective MBR).
  * util-linux ``libfdisk/src/dos.c`` and ``include/pt-mbr.h`` (entry layout, extended types,
    EBR chain walk, the limit on logical partitions).
  * Linux ``block/partitions/msdos.c`` (``parse_extended``: a chain is followed at most a bounded
    number of times; loops are cut).
  * GPT fdisk ``basicmbr.cc`` / ``mbrpart.cc`` (hybrid MBR handling).
  * construct's ``deprecated_gallery/mbr.py`` (declarative shape of the sector).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import construct as cs

from .errors import CorruptImage, TruncatedImage
from .image import Problem

MBR_SIZE = 512
SIGNATURE = b"\x55\xaa"
PROTECTIVE_TYPE = 0xEE
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
#: Linux's msdos parser stops after this many logical partitions; so do we.
MAX_LOGICAL = 256

MBR_TYPES: dict[int, tuple[str, str]] = {
    0x01: ("fat12", "FAT12"),
    0x04: ("fat16", "FAT16 <32M"),
    0x05: ("extended", "Extended (CHS)"),
    0x06: ("fat16", "FAT16"),
    0x07: ("ntfs", "HPFS/NTFS/exFAT"),
    0x0B: ("fat32", "W95 FAT32"),
    0x0C: ("fat32", "W95 FAT32 (LBA)"),
    0x0E: ("fat16", "W95 FAT16 (LBA)"),
    0x0F: ("extended", "W95 Extended (LBA)"),
    0x82: ("swap", "Linux swap"),
    0x83: ("linux", "Linux"),
    0x85: ("extended", "Linux extended"),
    0x8E: ("lvm", "Linux LVM"),
    0xA5: ("freebsd", "FreeBSD"),
    0xEE: ("protective", "GPT protective"),
    0xEF: ("esp", "EFI (FAT-12/16/32)"),
    0xFD: ("raid", "Linux raid autodetect"),
}

PartitionEntry = cs.Struct(
    "status" / cs.Int8ul,
    "chs_first" / cs.Bytes(3),
    "type" / cs.Int8ul,
    "chs_last" / cs.Bytes(3),
    "lba_start" / cs.Int32ul,
    "num_sectors" / cs.Int32ul,
)

MbrSector = cs.Struct(
    "boot_code" / cs.Bytes(440),
    "disk_signature" / cs.Int32ul,
    "reserved" / cs.Int16ul,
    "entries" / cs.Array(4, PartitionEntry),
    "signature" / cs.Const(SIGNATURE),
)


@dataclass(frozen=True, slots=True)
class MbrEntry:
    """One used MBR slot.  ``lba_start`` is absolute (EBR-relative values already resolved)."""

    index: int                 # 1-4 primary, 5.. logical (Linux numbering)
    status: int
    type: int
    lba_start: int
    num_sectors: int
    chs_first: bytes
    chs_last: bytes
    offset: int                # byte offset of the 16-byte entry on the disk

    @property
    def bootable(self) -> bool:
        return self.status == 0x80

    @property
    def extended(self) -> bool:
        return self.type in EXTENDED_TYPES

    @property
    def lba_end(self) -> int:
        """First LBA after the partition."""
        return self.lba_start + self.num_sectors


@dataclass(frozen=True, slots=True)
class Mbr:
    disk_signature: int
    boot_code_present: bool
    primary: tuple[MbrEntry, ...]          # used primary slots (type != 0), in slot order
    logical: tuple[MbrEntry, ...]          # logical partitions found through the EBR chain
    problems: tuple[Problem, ...] = ()

    @property
    def entries(self) -> tuple[MbrEntry, ...]:
        return self.primary + self.logical

    @property
    def protective(self) -> bool:
        """A GPT protective MBR: exactly one used entry, of type 0xEE."""
        return len(self.primary) == 1 and self.primary[0].type == PROTECTIVE_TYPE

    @property
    def hybrid(self) -> bool:
        """A hybrid MBR: an 0xEE entry beside other used entries."""
        return (any(e.type == PROTECTIVE_TYPE for e in self.primary)
                and len(self.primary) > 1)

    @property
    def has_gpt_entry(self) -> bool:
        return any(e.type == PROTECTIVE_TYPE for e in self.primary)


def parse_sector(data: bytes, path: str = "", base: int = 0, structure: str = "MBR") -> cs.Container:
    """The construct Container of one MBR/EBR sector; CorruptImage without 0x55AA."""
    if len(data) < MBR_SIZE:
        raise TruncatedImage(path, structure, base, f"needs {MBR_SIZE} bytes, got {len(data)}")
    try:
        return MbrSector.parse(data[:MBR_SIZE])
    except cs.ConstError:
        raise CorruptImage(path, structure, base + 510, "no 0x55AA boot signature") from None


def _entry(c: cs.Container, index: int, lba_base: int, offset: int) -> MbrEntry:
    return MbrEntry(index, c.status, c.type, lba_base + c.lba_start, c.num_sectors,
                    bytes(c.chs_first), bytes(c.chs_last), offset)


def read_mbr(read: Callable[[int, int], bytes], disk_size: int, sector_size: int = 512,
             path: str = "") -> Mbr:
    """Sector 0 plus the logical partitions of its extended partition (if any).

    Raises :class:`CorruptImage` when sector 0 has no 0x55AA signature; damage in the EBR chain
    is reported in ``Mbr.problems`` instead (the primary entries stay usable).
    """
    sec = parse_sector(read(0, MBR_SIZE), path)
    primary = tuple(_entry(c, i + 1, 0, 446 + 16 * i) for i, c in enumerate(sec.entries)
                    if c.type != 0)
    problems: list[Problem] = []
    logical: list[MbrEntry] = []
    ext = [e for e in primary if e.extended]
    if len(ext) > 1:
        problems.append(Problem("error", "MBR", 446, "more than one extended partition"))
    if ext:
        logical = _walk_ebr_chain(read, disk_size, sector_size, ext[0], path, problems)
    return Mbr(sec.disk_signature, any(sec.boot_code), primary, tuple(logical), tuple(problems))


def _walk_ebr_chain(read: Callable[[int, int], bytes], disk_size: int, sector_size: int,
                    ext: MbrEntry, path: str, problems: list[Problem]) -> list[MbrEntry]:
    """Follow the EBR chain, bounded by MAX_LOGICAL steps, the disk and the extended partition."""
    out: list[MbrEntry] = []
    seen: set[int] = set()
    ebr_lba = ext.lba_start
    ext_end = ext.lba_end
    while True:
        off = ebr_lba * sector_size
        if ebr_lba in seen:
            problems.append(Problem("error", "EBR", off, "EBR chain loops back to an earlier EBR"))
            break
        if len(seen) >= MAX_LOGICAL:
            problems.append(Problem("error", "EBR", off,
                                    f"more than {MAX_LOGICAL} logical partitions; chain cut"))
            break
        if not ext.lba_start <= ebr_lba < ext_end or off + MBR_SIZE > disk_size:
            problems.append(Problem("error", "EBR", off,
                                    "EBR lies outside the extended partition or the disk"))
            break
        seen.add(ebr_lba)
        try:
            sec = parse_sector(read(off, MBR_SIZE), path, off, "EBR")
        except CorruptImage as e:
            problems.append(Problem("error", "EBR", e.offset, e.message))
            break
        first, link = sec.entries[0], sec.entries[1]
        if first.type != 0 and first.num_sectors:
            out.append(_entry(first, 5 + len(out), ebr_lba, off + 446))
        if link.type == 0 or link.num_sectors == 0:
            break
        ebr_lba = ext.lba_start + link.lba_start
    return out
