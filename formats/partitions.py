"""The partition table of a disk, whatever its scheme, with every structural problem found.

``read_partition_table`` reads sector 0 (MBR), the GPT headers at LBA 1 and at the last LBA and
their entry arrays through a ``read(offset, length)`` callable (``DiskImage.read`` or a file), and
returns one :class:`PartitionTable`: scheme ``gpt`` (protective MBR), ``hybrid`` (GPT plus an MBR
with 0xEE beside other entries), ``mbr`` or ``none``.  Damage never escapes as an exception: it
becomes a :class:`~formats.image.Problem` naming the structure and its byte offset, and every
size, count and offset from the disk is bounded before anything is read or looped over.

``relocate_gpt_backup`` computes the writes that move the backup GPT to the new end of a grown
disk, exactly as ``sgdisk -e`` does (GPT fdisk 1.0.9 ``GPTData::MoveSecondHeaderToEnd``):

* ``alternate_lba`` (primary) and ``my_lba`` (backup) become the new last LBA;
* ``last_usable_lba`` in both headers becomes ``total_sectors - first_usable_lba`` — sgdisk keeps
  the layout symmetric, so it also grows the usable area (for the usual first_usable 34 with a
  32-sector table this is the standard ``last LBA - 33``);
* the backup entry array goes to ``last_usable_lba + 1``;
* when the usable area changed and the MBR is protective, the 0xEE entry is rebuilt to cover
  ``1 .. min(last LBA, 2^32 - 1)`` (sgdisk ``MakeProtectiveMBR``; boot code and disk signature
  are kept).  A hybrid MBR is left as it is (sgdisk would re-optimise its 0xEE entry).

References:
  * UEFI Specification 2.10, sections 5.2 (protective MBR) and 5.3 (GPT layout, validity rules).
  * GPT fdisk 1.0.9 ``gpt.cc`` (``Verify``, ``CheckHeaderValidity``, ``MoveSecondHeaderToEnd``),
    ``basicmbr.cc`` (``MakeProtectiveMBR``, hybrid detection).
  * util-linux ``libfdisk/src/gpt.c`` and ``dos.c`` (what ``sfdisk --json`` lists).
  * Linux ``block/partitions/efi.c`` (``is_pmbr_valid``: GPT is used only with an 0xEE entry).
  * Microsoft, "Prepare a Linux VHD for Azure": the first MiB of the disk stays free, partitions
    aligned to 1 MiB.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptImage
from .gpt import (OFF_ALTERNATE, OFF_ENTRIES_LBA, OFF_HEADER_CRC, OFF_LAST_USABLE, OFF_MY_LBA,
                  SIGNATURE, ATTR_LEGACY_BIOS_BOOTABLE, GptEntry, GptHeader, header_crc,
                  parse_entries, parse_header, read_entry_array)
from .image import Problem
from .mbr import MBR_TYPES, PROTECTIVE_TYPE, Mbr, MbrEntry, read_mbr

MiB = 1 << 20
Read = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition; ``start``/``size``/``end`` are bytes (``end`` exclusive)."""

    index: int
    start: int
    size: int
    end: int
    type_id: str               # GPT type GUID, or "0x83" for an MBR type byte
    type_name: str
    name: str
    uuid: str                  # GPT unique GUID, or the MBR PARTUUID "<disk signature>-<nn>"
    bootable: bool             # MBR active flag, or the GPT legacy-BIOS-bootable attribute
    scheme: str                # "gpt" | "mbr"
    type_short: str = "unknown"
    first_lba: int = 0
    last_lba: int = 0          # inclusive
    attributes: int = 0

    @property
    def aligned(self) -> bool:
        """Starts on a 1 MiB boundary."""
        return self.start % MiB == 0

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "size": self.size, "end": self.end,
                "first_lba": self.first_lba, "last_lba": self.last_lba,
                "type_id": self.type_id, "type": self.type_short, "type_name": self.type_name,
                "name": self.name, "uuid": self.uuid, "bootable": self.bootable,
                "attributes": self.attributes, "scheme": self.scheme,
                "aligned_1mib": self.aligned}


@dataclass(frozen=True, slots=True)
class Gpt:
    """What was found of both GPT copies.  ``entries`` come from the first valid copy."""

    primary: GptHeader | None
    backup: GptHeader | None
    primary_entries_ok: bool
    backup_entries_ok: bool
    entries: tuple[GptEntry, ...]

    @property
    def primary_valid(self) -> bool:
        return self.primary is not None and self.primary.header_crc_ok and self.primary_entries_ok

    @property
    def backup_valid(self) -> bool:
        return self.backup is not None and self.backup.header_crc_ok and self.backup_entries_ok

    def as_dict(self) -> dict[str, Any]:
        def hdr(h: GptHeader | None, ok: bool) -> dict[str, Any] | None:
            if h is None:
                return None
            return {"offset": h.offset, "my_lba": h.my_lba, "alternate_lba": h.alternate_lba,
                    "first_usable_lba": h.first_usable_lba, "last_usable_lba": h.last_usable_lba,
                    "entries_lba": h.entries_lba, "num_entries": h.num_entries,
                    "entry_size": h.entry_size, "disk_guid": h.disk_guid,
                    "header_crc_ok": h.header_crc_ok, "entries_crc_ok": ok}
        return {"primary": hdr(self.primary, self.primary_entries_ok),
                "backup": hdr(self.backup, self.backup_entries_ok)}


@dataclass(frozen=True, slots=True)
class PartitionTable:
    scheme: str                # "gpt" | "mbr" | "hybrid" | "none"
    sector_size: int
    disk_size: int
    mbr: Mbr | None
    gpt: Gpt | None
    partitions: list[Partition] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        mbr = None
        if self.mbr is not None:
            mbr = {"disk_signature": f"{self.mbr.disk_signature:08x}",
                   "boot_code_present": self.mbr.boot_code_present,
                   "protective": self.mbr.protective, "hybrid": self.mbr.hybrid}
        return {"scheme": self.scheme, "sector_size": self.sector_size, "mbr": mbr,
                "gpt": self.gpt.as_dict() if self.gpt is not None else None,
                "partitions": [p.as_dict() for p in self.partitions],
                "problems": [p.as_dict() for p in self.problems]}


# -- reading ------------------------------------------------------------------------------------

def read_partition_table(read: Read, disk_size: int, sector_size: int = 512,
                         path: str = "") -> PartitionTable:
    """The partition table of a disk of ``disk_size`` bytes read through ``read``."""
    if sector_size not in (512, 4096):
        raise ValueError(f"unsupported logical sector size {sector_size}")
    problems: list[Problem] = []
    mbr = _read_mbr_or_none(read, disk_size, sector_size, path, problems)
    gpt = _read_gpt(read, disk_size, sector_size, path, problems)
    if gpt is None:
        _check_foreign_sector_size(read, disk_size, sector_size, problems)
    scheme = _scheme(mbr, gpt, problems)
    if scheme in ("gpt", "hybrid"):
        assert gpt is not None
        parts = [_gpt_partition(e, sector_size) for e in gpt.entries]
        _check_gpt_layout(gpt, parts, disk_size, sector_size, problems)
        if mbr is not None:
            _check_mbr_beside_gpt(mbr, gpt, parts, disk_size, sector_size, problems)
    elif scheme == "mbr":
        assert mbr is not None
        parts = [_mbr_partition(mbr, e, sector_size) for e in mbr.entries]
        _check_logical_inside_extended(mbr, problems)
    else:
        parts = []
    _check_partitions(parts, disk_size, problems)
    return PartitionTable(scheme, sector_size, disk_size, mbr, gpt, parts, problems)


def _read_mbr_or_none(read: Read, disk_size: int, sector_size: int, path: str,
                      problems: list[Problem]) -> Mbr | None:
    if disk_size < 512:
        return None
    try:
        mbr = read_mbr(read, disk_size, sector_size, path)
    except CorruptImage:
        return None           # no 0x55AA: no MBR (a blank disk, or a GPT without a pMBR)
    problems.extend(mbr.problems)
    return mbr


def _read_header(read: Read, lba: int, disk_size: int, sector_size: int, path: str,
                 structure: str, problems: list[Problem]) -> GptHeader | None:
    off = lba * sector_size
    if lba < 1 or off + sector_size > disk_size:
        return None
    raw = read(off, sector_size)
    if raw[:8] != SIGNATURE:
        return None
    try:
        h = parse_header(raw, off, sector_size, path, structure)
    except CorruptImage as e:
        problems.append(Problem("error", e.structure, e.offset, e.message))
        return None
    if not h.header_crc_ok:
        problems.append(Problem("error", structure, off + OFF_HEADER_CRC,
                                f"header CRC32 {h.header_crc32:#010x} does not match the header"))
    if h.my_lba != lba:
        problems.append(Problem("error", structure, off + OFF_MY_LBA,
                                f"header says it is at LBA {h.my_lba} but sits at LBA {lba}"))
    return h


def _read_entries(read: Read, h: GptHeader | None, disk_size: int, sector_size: int, path: str,
                  copy: str, problems: list[Problem]) -> tuple[bytes | None, bool]:
    if h is None:
        return None, False
    structure = f"GPT {copy} entries"
    try:
        data, ok = read_entry_array(read, h, disk_size, sector_size, path, structure,
                                    f"GPT {copy} header")
    except CorruptImage as e:
        problems.append(Problem("error", e.structure, e.offset, e.message))
        return None, False
    if not ok:
        problems.append(Problem("error", structure, h.entries_lba * sector_size,
                                f"entry array CRC32 does not match {h.entries_crc32:#010x}"))
    return data, ok


def _read_gpt(read: Read, disk_size: int, sector_size: int, path: str,
              problems: list[Problem]) -> Gpt | None:
    last_lba = disk_size // sector_size - 1
    primary = _read_header(read, 1, disk_size, sector_size, path, "GPT primary header", problems)
    p_data, p_ok = _read_entries(read, primary, disk_size, sector_size, path, "primary",
                                 problems)
    backup = None
    if primary is not None and primary.alternate_lba != last_lba:
        backup = _read_header(read, primary.alternate_lba, disk_size, sector_size, path,
                              "GPT backup header", problems)
        if primary.alternate_lba < last_lba:
            problems.append(Problem(
                "warning", "GPT primary header", primary.offset + OFF_ALTERNATE,
                f"backup header is at LBA {primary.alternate_lba}, not at the last LBA "
                f"{last_lba} (disk grown?): relocate it (sgdisk -e)"))
        else:
            problems.append(Problem(
                "error", "GPT primary header", primary.offset + OFF_ALTERNATE,
                f"backup header LBA {primary.alternate_lba} lies beyond the last LBA {last_lba} "
                "(disk truncated?)"))
    if backup is None:
        backup = _read_header(read, last_lba, disk_size, sector_size, path, "GPT backup header",
                              problems)
    b_data, b_ok = _read_entries(read, backup, disk_size, sector_size, path, "backup",
                                 problems)
    if primary is None and backup is None:
        return None
    if primary is None:
        problems.append(Problem("error", "GPT primary header", sector_size,
                                "primary GPT header missing or unreadable; only the backup is left"))
    elif backup is None:
        problems.append(Problem("error", "GPT backup header", last_lba * sector_size,
                                "backup GPT header missing or unreadable"))
    else:
        _compare_copies(primary, backup, p_data, b_data, problems)
    entries = _pick_entries([(primary, p_data, p_ok), (backup, b_data, b_ok)])
    return Gpt(primary, backup, p_ok, b_ok, entries)


def _pick_entries(copies: list[tuple[GptHeader | None, bytes | None, bool]]
                  ) -> tuple[GptEntry, ...]:
    """Entries of the first fully valid copy, else of the first copy whose array was read."""
    valid = [(h, d) for h, d, ok in copies if h is not None and d and h.header_crc_ok and ok]
    readable = [(h, d) for h, d, _ in copies if h is not None and d]
    for h, data in valid[:1] or readable[:1]:
        return parse_entries(data, h.entry_size)
    return ()


def _compare_copies(p: GptHeader, b: GptHeader, p_data: bytes | None, b_data: bytes | None,
                    problems: list[Problem]) -> None:
    fields = ("disk_guid", "first_usable_lba", "last_usable_lba", "num_entries", "entry_size",
              "entries_crc32")
    diff = [f for f in fields if getattr(p, f) != getattr(b, f)]
    if b.alternate_lba != p.my_lba:
        diff.append("alternate_lba")
    if p_data is not None and b_data is not None and p_data != b_data:
        diff.append("entry array")
    if diff:
        problems.append(Problem("error", "GPT backup header", b.offset,
                                "primary and backup GPT differ: " + ", ".join(diff)))


def _check_foreign_sector_size(read: Read, disk_size: int, sector_size: int,
                               problems: list[Problem]) -> None:
    """A GPT written for the other logical sector size (the 4Kn-as-512 hazard)."""
    other = 4096 if sector_size == 512 else 512
    if disk_size >= 2 * other and read(other, 8) == SIGNATURE:
        problems.append(Problem(
            "error", "GPT primary header", other,
            f"a GPT header sits at LBA 1 for {other}-byte sectors, but the disk presents "
            f"{sector_size}-byte sectors: the partitions would be misread"))


def _scheme(mbr: Mbr | None, gpt: Gpt | None, problems: list[Problem]) -> str:
    if gpt is None:
        if mbr is not None and mbr.has_gpt_entry:
            problems.append(Problem("error", "MBR", 446,
                                    "protective 0xEE entry but no readable GPT header"))
            return "none"
        return "mbr" if mbr is not None and mbr.entries else "none"
    if mbr is None:
        problems.append(Problem("error", "MBR", 510,
                                "GPT found but no protective MBR (no 0x55AA signature): Linux "
                                "and UEFI firmware ignore this GPT"))
        return "none"
    if not mbr.has_gpt_entry:
        problems.append(Problem("warning", "MBR", 446,
                                "MBR without an 0xEE entry beside a GPT: firmware and Linux use "
                                "the MBR, the GPT is stale"))
        return "mbr"
    return "hybrid" if mbr.hybrid else "gpt"


def _gpt_partition(e: GptEntry, ss: int) -> Partition:
    start = e.first_lba * ss
    end = max((e.last_lba + 1) * ss, start)          # an inverted entry is reported as empty
    return Partition(e.index, start, end - start, end, e.type_guid, e.type_name, e.name,
                     e.unique_guid, bool(e.attributes & ATTR_LEGACY_BIOS_BOOTABLE), "gpt",
                     e.type_short, e.first_lba, e.last_lba, e.attributes)


def _mbr_partition(mbr: Mbr, e: MbrEntry, ss: int) -> Partition:
    short, desc = MBR_TYPES.get(e.type, ("unknown", "unknown"))
    return Partition(e.index, e.lba_start * ss, e.num_sectors * ss, e.lba_end * ss,
                     f"0x{e.type:02x}", desc, "", f"{mbr.disk_signature:08x}-{e.index:02d}",
                     e.bootable, "mbr", short, e.lba_start, e.lba_end - 1)


# -- checks -------------------------------------------------------------------------------------

def _check_gpt_layout(gpt: Gpt, parts: list[Partition], disk_size: int, ss: int,
                      problems: list[Problem]) -> None:
    h = gpt.primary if gpt.primary is not None else gpt.backup
    assert h is not None
    last_lba = disk_size // ss - 1
    if h.first_usable_lba > h.last_usable_lba or h.last_usable_lba >= last_lba:
        problems.append(Problem("error", "GPT header", h.offset + OFF_LAST_USABLE,
                                f"usable LBAs {h.first_usable_lba}..{h.last_usable_lba} are "
                                f"impossible on a disk whose last LBA is {last_lba}"))
    if gpt.primary is not None:
        table_end = gpt.primary.entries_lba + gpt.primary.table_sectors(ss)
        if h.first_usable_lba < table_end:
            problems.append(Problem("error", "GPT header", h.offset + 40,
                                    f"first usable LBA {h.first_usable_lba} lies inside the "
                                    f"primary entry array (ends at LBA {table_end - 1})"))
    for p in parts:
        if p.last_lba < p.first_lba:
            problems.append(Problem("error", f"GPT partition {p.index}", None,
                                    f"last LBA {p.last_lba} before first LBA {p.first_lba}"))
        elif p.first_lba < h.first_usable_lba or p.last_lba > h.last_usable_lba:
            problems.append(Problem("error", f"GPT partition {p.index}", None,
                                    f"LBAs {p.first_lba}..{p.last_lba} outside the usable "
                                    f"{h.first_usable_lba}..{h.last_usable_lba}"))


def _check_mbr_beside_gpt(mbr: Mbr, gpt: Gpt, parts: list[Partition], disk_size: int, ss: int,
                          problems: list[Problem]) -> None:
    h = gpt.primary if gpt.primary is not None else gpt.backup
    assert h is not None
    for e in mbr.primary:
        if e.type == PROTECTIVE_TYPE:
            _check_protective_entry(e, mbr, disk_size // ss, problems)
            continue
        if e.lba_start < h.first_usable_lba or e.lba_end - 1 > h.last_usable_lba:
            problems.append(Problem("error", f"MBR entry {e.index}", e.offset,
                                    f"hybrid MBR entry (LBAs {e.lba_start}..{e.lba_end - 1}) "
                                    "overlaps the GPT structures"))
        elif not any(p.first_lba == e.lba_start and p.last_lba == e.lba_end - 1 for p in parts):
            problems.append(Problem("warning", f"MBR entry {e.index}", e.offset,
                                    "hybrid MBR entry matches no GPT partition"))


def _check_protective_entry(e: MbrEntry, mbr: Mbr, total_sectors: int,
                            problems: list[Problem]) -> None:
    """A protective 0xEE entry covers LBA 1 to the end of the disk (or 2^32 - 1 sectors).

    Hybrid MBRs are exempt: their 0xEE entry only needs to cover the GPT structures.
    """
    want = min(total_sectors - 1, 0xFFFFFFFF)
    if mbr.protective and (e.lba_start != 1 or e.num_sectors != want):
        problems.append(Problem("warning", f"MBR entry {e.index}", e.offset,
                                f"protective entry covers LBAs {e.lba_start}..{e.lba_end - 1}, "
                                f"expected 1..{want} (GPT PMBR size mismatch)"))


def _check_logical_inside_extended(mbr: Mbr, problems: list[Problem]) -> None:
    ext = next((e for e in mbr.primary if e.extended), None)
    for e in mbr.logical:
        if ext is not None and not (ext.lba_start < e.lba_start and e.lba_end <= ext.lba_end):
            problems.append(Problem("error", f"MBR partition {e.index}", e.offset,
                                    f"logical partition LBAs {e.lba_start}..{e.lba_end - 1} "
                                    "leave the extended partition"))


def _check_partitions(parts: list[Partition], disk_size: int, problems: list[Problem]) -> None:
    real = [p for p in parts if p.type_short != "extended" and p.size > 0]
    for p in parts:
        where = f"{p.scheme.upper()} partition {p.index}"
        if p.end > disk_size:
            problems.append(Problem("error", where, p.start,
                                    f"ends at byte {p.end}, beyond the {disk_size}-byte disk"))
        if p.type_short == "extended":
            continue
        if p.start < MiB:
            problems.append(Problem("warning", where, p.start,
                                    "starts inside the first MiB, which must stay free"))
        if not p.aligned:
            problems.append(Problem("info", where, p.start,
                                    f"start {p.start} is not aligned to 1 MiB"))
    ordered = sorted(real, key=lambda p: (p.start, p.end))
    reach: Partition | None = None
    for p in ordered:
        if reach is not None and p.start < reach.end:
            problems.append(Problem("error", f"{p.scheme.upper()} partition {p.index}", p.start,
                                    f"overlaps partition {reach.index}"))
        if reach is None or p.end > reach.end:
            reach = p


# -- relocating the backup GPT ------------------------------------------------------------------

def relocate_gpt_backup(read: Read, old_size: int, new_size: int,
                        sector_size: int = 512) -> list[tuple[int, bytes]]:
    """The ``(offset, bytes)`` writes that move the backup GPT to the end of a grown disk.

    ``read`` sees the disk's current content (at least ``old_size`` bytes).  Matches
    ``sgdisk -e`` byte for byte (see the module docstring).  Raises :class:`CorruptImage` when
    the primary GPT is not valid (CRCs) or the new size cannot hold the partitions.
    """
    ss = sector_size
    h = parse_header(read(ss, ss), ss, ss, "", "GPT primary header")
    if not h.header_crc_ok:
        raise CorruptImage(None, "GPT primary header", ss, "header CRC32 mismatch; not relocating")
    data, ok = read_entry_array(read, h, old_size, ss, "", "GPT primary entries")
    if not ok:
        raise CorruptImage(None, "GPT primary entries", h.entries_lba * ss,
                           "entry array CRC32 mismatch; not relocating")
    total = new_size // ss
    new_last = total - 1
    last_usable = total - h.first_usable_lba
    backup_entries = last_usable + 1
    top = max((e.last_lba for e in parse_entries(data, h.entry_size)), default=0)
    if top > last_usable or backup_entries + h.table_sectors(ss) > new_last:
        raise CorruptImage(None, "GPT primary header", ss,
                           f"a {new_size}-byte disk cannot hold the GPT and its partitions")
    primary = _patched_header(h.raw, h.header_size, my_lba=1, alternate=new_last,
                              last_usable=last_usable, entries_lba=h.entries_lba)
    backup = _patched_header(h.raw, h.header_size, my_lba=new_last, alternate=1,
                             last_usable=last_usable, entries_lba=backup_entries)
    writes = [(ss, primary), (backup_entries * ss, data), (new_last * ss, backup)]
    if last_usable != h.last_usable_lba:
        writes += _protective_mbr_update(read, total)
    return sorted(writes)


def _patched_header(raw: bytes, header_size: int, *, my_lba: int, alternate: int,
                    last_usable: int, entries_lba: int) -> bytes:
    buf = bytearray(raw)
    struct.pack_into("<QQ", buf, OFF_MY_LBA, my_lba, alternate)
    struct.pack_into("<Q", buf, OFF_LAST_USABLE, last_usable)
    struct.pack_into("<Q", buf, OFF_ENTRIES_LBA, entries_lba)
    struct.pack_into("<I", buf, OFF_HEADER_CRC, 0)
    struct.pack_into("<I", buf, OFF_HEADER_CRC, header_crc(bytes(buf), header_size))
    return bytes(buf)


def _protective_mbr_update(read: Read, total_sectors: int) -> list[tuple[int, bytes]]:
    """Rewrite a protective MBR's 0xEE entry for the new size (as sgdisk MakeProtectiveMBR)."""
    sector = read(0, 512)
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return []
    types = [sector[446 + 16 * i + 4] for i in range(4)]
    if types.count(PROTECTIVE_TYPE) != 1 or sum(1 for t in types if t) != 1:
        return []                        # hybrid or foreign MBR: left alone
    length = min(total_sectors - 1, 0xFFFFFFFF)
    entry = bytes([0, 0x00, 0x02, 0x00, PROTECTIVE_TYPE]) + _chs(length) + \
        struct.pack("<II", 1, length)
    table = entry + bytes(48)
    return [(446, table)]


def _chs(last_lba: int) -> bytes:
    """CHS bytes of ``last_lba`` for the 255-head/63-sector geometry; FF FF FF past 1023 cylinders."""
    cyl, rem = divmod(last_lba, 255 * 63)
    if cyl > 1023:
        return b"\xff\xff\xff"
    head, sec = divmod(rem, 63)
    return bytes([head, ((cyl >> 2) & 0xC0) | (sec + 1), cyl & 0xFF])


__all__ = ["Gpt", "Partition", "PartitionTable", "read_partition_table", "relocate_gpt_backup"]
