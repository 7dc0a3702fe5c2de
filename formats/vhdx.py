"""VHDX (Hyper-V virtual hard disk v2) reader: fixed, dynamic and differencing images.

Layout: a 1 MiB header section (file identifier, two headers, two region tables), then regions
(BAT, metadata), the log and 1 MiB-aligned payload and sector-bitmap blocks.  Everything is
little-endian; GUIDs are Microsoft mixed-endian; checksums are CRC-32C with the field zeroed.

A dirty image (header LogGuid non-zero) is replayed into an in-memory overlay of 4 KiB pages
(file offset -> page) consulted by every read of this file; the input is never written.

References:
    [MS-VHDX] Virtual Hard Disk v2 (VHDX) File Format, v4+ (learn.microsoft.com/openspecs/
    windows_protocols/ms-vhdx): 2.2 header section, 2.3 log and replay, 2.5 BAT, 2.6 metadata.
    qemu block/vhdx.c (header choice, region checks, metadata items, BAT states incl. legacy
    UNMAPPED=5, chunk ratio), block/vhdx-log.c (log search: entry/descriptor validation, active
    sequence, flush), block/vhdx-endian.c (field layout), block/vhdx.h (GUIDs, limits) — facts only.
    Every fact above verified against qemu-img 7.2 (Debian 12) and a Hyper-V-made sample in tests.
"""

from __future__ import annotations

import bisect
import ntpath
import os
import struct
import sys
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import construct as cs
import crc32c

from .errors import (CorruptImage, FormatError, MissingBackingFile, TruncatedImage,
                     UnsupportedFeature)
from .image import DiskImage, Extent, Kind, why_not_openable

KiB = 1 << 10
MiB = 1 << 20
TiB = 1 << 40
PAGE = 4 * KiB
ZERO_PAGE = bytes(PAGE)

HEADER_OFFSETS = (64 * KiB, 128 * KiB)
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
HEADER_SECTION = MiB
MAX_VIRTUAL_SIZE = 64 * TiB
MAX_BAT_BYTES = 256 * MiB
MAX_LOG_LENGTH = 256 * MiB
#: the replay overlay holds at most this many 4 KiB pages (data or zero)
MAX_OVERLAY_PAGES = 65536
#: bytes of log entries checksummed while searching, at most (bounds crafted logs)
MAX_LOG_SCAN_BYTES = 1 << 30

BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_DATA = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
NIL_GUID = uuid.UUID(int=0)

# payload block states (MS-VHDX 2.5.1.1); 5 = UNMAPPED in the v0.95 draft, accepted like qemu
NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, UNMAPPED_V095, FULLY_PRESENT, PARTIALLY_PRESENT = \
    0, 1, 2, 3, 5, 6, 7
STATE_NAMES = {NOT_PRESENT: "not_present", UNDEFINED: "undefined", ZERO: "zero",
               UNMAPPED: "unmapped", UNMAPPED_V095: "unmapped", FULLY_PRESENT: "fully_present",
               PARTIALLY_PRESENT: "partially_present"}
SB_NOT_PRESENT, SB_PRESENT = 0, 6
OFFSET_MASK = 0xFFFFFFFFFFF00000

# -- structures ----------------------------------------------------------------------------------
FileIdentifier = cs.Struct("signature" / cs.Bytes(8), "creator" / cs.Bytes(512))

Header = cs.Struct(
    "signature" / cs.Bytes(4), "checksum" / cs.Int32ul, "sequence_number" / cs.Int64ul,
    "file_write_guid" / cs.Bytes(16), "data_write_guid" / cs.Bytes(16), "log_guid" / cs.Bytes(16),
    "log_version" / cs.Int16ul, "version" / cs.Int16ul, "log_length" / cs.Int32ul,
    "log_offset" / cs.Int64ul)
HEADER_SIZE = 4 * KiB

RegionTableHeader = cs.Struct("signature" / cs.Bytes(4), "checksum" / cs.Int32ul,
                              "entry_count" / cs.Int32ul, "reserved" / cs.Int32ul)
RegionTableEntry = cs.Struct("guid" / cs.Bytes(16), "file_offset" / cs.Int64ul,
                             "length" / cs.Int32ul, "flags" / cs.Int32ul)
REGION_TABLE_SIZE = 64 * KiB
MAX_TABLE_ENTRIES = 2047

MetadataTableHeader = cs.Struct("signature" / cs.Bytes(8), "reserved" / cs.Int16ul,
                                "entry_count" / cs.Int16ul, "reserved2" / cs.Bytes(20))
MetadataTableEntry = cs.Struct("item_id" / cs.Bytes(16), "offset" / cs.Int32ul,
                               "length" / cs.Int32ul, "flags" / cs.Int32ul,
                               "reserved" / cs.Int32ul)
METADATA_TABLE_SIZE = 64 * KiB
FileParameters = cs.Struct("block_size" / cs.Int32ul, "flags" / cs.Int32ul)
ParentLocatorHeader = cs.Struct("locator_type" / cs.Bytes(16), "reserved" / cs.Int16ul,
                                "key_value_count" / cs.Int16ul)
ParentLocatorEntry = cs.Struct("key_offset" / cs.Int32ul, "value_offset" / cs.Int32ul,
                               "key_length" / cs.Int16ul, "value_length" / cs.Int16ul)

LogEntryHeader = cs.Struct(
    "signature" / cs.Bytes(4), "checksum" / cs.Int32ul, "entry_length" / cs.Int32ul,
    "tail" / cs.Int32ul, "sequence_number" / cs.Int64ul, "descriptor_count" / cs.Int32ul,
    "reserved" / cs.Int32ul, "log_guid" / cs.Bytes(16), "flushed_file_offset" / cs.Int64ul,
    "last_file_offset" / cs.Int64ul)
LOG_ENTRY_HEADER_SIZE = 64
# zero descriptor: "zero", reserved, ZeroLength, FileOffset, SequenceNumber;
# data descriptor: "desc", TrailingBytes, LeadingBytes, FileOffset, SequenceNumber
LogDescriptor = cs.Struct("signature" / cs.Bytes(4), "trailing_bytes" / cs.Bytes(4),
                          "leading_or_length" / cs.Bytes(8), "file_offset" / cs.Int64ul,
                          "sequence_number" / cs.Int64ul)
LOG_DESCRIPTOR_SIZE = 32
LogDataSector = cs.Struct("signature" / cs.Bytes(4), "sequence_high" / cs.Int32ul,
                          "data" / cs.Bytes(4084), "sequence_low" / cs.Int32ul)


@dataclass(frozen=True, slots=True)
class VhdxHeader:
    offset: int
    sequence_number: int
    file_write_guid: uuid.UUID
    data_write_guid: uuid.UUID
    log_guid: uuid.UUID
    log_version: int
    version: int
    log_length: int
    log_offset: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class Region:
    guid: uuid.UUID
    file_offset: int
    length: int
    required: bool


@dataclass(frozen=True, slots=True)
class MetadataItem:
    item_id: uuid.UUID
    offset: int           # relative to the metadata region
    length: int
    is_user: bool
    is_virtual_disk: bool
    is_required: bool


@dataclass(frozen=True, slots=True)
class LogEntry:
    offset: int           # inside the log
    sequence_number: int
    tail: int
    length: int
    flushed_file_offset: int
    last_file_offset: int
    #: (file_offset, page bytes or None for a zero range, length)
    writes: tuple[tuple[int, bytes | None, int], ...]


def _guid(b: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=bytes(b))


def crc_ok(buf: bytes, at: int = 4) -> bool:
    """CRC-32C of ``buf`` with its 4-byte checksum field at ``at`` zeroed equals that field."""
    want = struct.unpack_from("<I", buf, at)[0]
    return crc32c.crc32c(bytes(buf[:at]) + b"\0\0\0\0" + bytes(buf[at + 4:])) == want


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _runs_of_bits(bits: int, nbits: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, set?) runs of an LSB-first bitmap held in an int."""
    pos = 0
    while pos < nbits:
        rest = bits >> pos
        if rest & 1:
            inv = ~rest
            n = (inv & -inv).bit_length() - 1
        else:
            n = (rest & -rest).bit_length() - 1 if rest else nbits - pos
        n = min(n, nbits - pos)
        yield pos, pos + n, bool(rest & 1)
        pos += n


class VhdxImage(DiskImage):
    format_name = "vhdx"

    # -- opening ---------------------------------------------------------------------------------
    def _open(self) -> None:
        self._overlay: dict[int, bytes] = {}
        self._overlay_keys: list[int] = []
        self._eof = self.file_size
        self.log_replayed = 0
        ident = FileIdentifier.parse(self._pread(0, 520, "file type identifier"))
        if ident.signature != b"vhdxfile":
            raise CorruptImage(self.path, "file type identifier", 0,
                               f"signature {bytes(ident.signature)!r} is not b'vhdxfile'")
        self.creator = bytes(ident.creator).decode("utf-16-le", "replace").split("\0", 1)[0]
        self.headers = self._read_headers()
        self.header = max(self.headers.values(), key=lambda h: h.sequence_number)
        self.data_write_guid = self.header.data_write_guid
        self._check_log_location(self.header)
        if self.header.log_guid != NIL_GUID:
            if self.header.log_length:
                self._replay_log(self.header)
            else:    # qemu also reads this as "no log"
                self.problem("warning", "header", self.header.offset,
                             "LogGuid is set but the log is empty (LogLength 0)")
        self.regions = self._read_region_table()
        self._read_metadata(self.regions[METADATA_GUID])
        self._geometry()
        self._read_bat(self.regions[BAT_GUID])
        if self.has_parent:
            self._open_parent()

    def _read_headers(self) -> dict[int, VhdxHeader]:
        good: dict[int, VhdxHeader] = {}
        why = []
        for off in HEADER_OFFSETS:
            raw = self._pread(off, HEADER_SIZE, "header")
            h = Header.parse(raw)
            if h.signature != b"head":
                why.append((off, f"signature {bytes(h.signature)!r} is not b'head'"))
            elif not crc_ok(raw):
                why.append((off, "CRC-32C mismatch"))
            elif h.version != 1 or h.log_version != 0:
                why.append((off, f"version {h.version}/log version {h.log_version}, "
                                 "expected 1/0"))
            else:
                good[off] = VhdxHeader(off, h.sequence_number, _guid(h.file_write_guid),
                                       _guid(h.data_write_guid), _guid(h.log_guid),
                                       h.log_version, h.version, h.log_length, h.log_offset, raw)
        if not good:
            raise CorruptImage(self.path, "header", why[0][0],
                               "no valid header: " + "; ".join(f"{o:#x}: {m}" for o, m in why))
        for off, msg in why:
            self.problem("warning", "header", off, f"invalid header ignored: {msg}")
        if len(good) == 2:
            a, b = good.values()
            if a.sequence_number == b.sequence_number and a.raw != b.raw:
                raise CorruptImage(self.path, "header", HEADER_OFFSETS[1],
                                   f"both headers have sequence number {a.sequence_number} "
                                   "but differ")
        return good

    def _check_log_location(self, h: VhdxHeader) -> None:
        if h.log_length % MiB or h.log_offset % MiB:
            raise CorruptImage(self.path, "header", h.offset,
                               f"log offset {h.log_offset:#x}/length {h.log_length:#x} "
                               "not 1 MiB multiples")
        if h.log_length and h.log_offset < HEADER_SECTION:
            raise CorruptImage(self.path, "header", h.offset,
                               f"log offset {h.log_offset:#x} inside the header section")
        if h.log_guid != NIL_GUID and h.log_length:
            if h.log_offset + h.log_length > self.file_size:
                raise TruncatedImage(self.path, "log", h.log_offset,
                                     f"log of {h.log_length} bytes lies beyond the end of the "
                                     f"{self.file_size}-byte file")
            if h.log_length > MAX_LOG_LENGTH:
                raise UnsupportedFeature(self.path, "log", h.log_offset,
                                         f"log of {h.log_length} bytes exceeds the "
                                         f"{MAX_LOG_LENGTH}-byte limit")

    def _read_region_table(self) -> dict[uuid.UUID, Region]:
        errors: list[FormatError] = []
        for off in REGION_TABLE_OFFSETS:
            try:
                regions = self._parse_region_table(off)
            except UnsupportedFeature:
                raise
            except FormatError as e:
                errors.append(e)
                continue
            for e in errors:
                self.problem("warning", "region table", e.offset,
                             f"invalid region table ignored: {e.message}")
            return regions
        first = errors[0]
        raise type(first)(self.path, first.structure, first.offset,
                          f"{first.message} (and the second table: {errors[1].message})")

    def _parse_region_table(self, off: int) -> dict[uuid.UUID, Region]:
        raw = self._vread(off, REGION_TABLE_SIZE, "region table")
        hdr = RegionTableHeader.parse(raw)
        if hdr.signature != b"regi":
            raise CorruptImage(self.path, "region table", off,
                               f"signature {bytes(hdr.signature)!r} is not b'regi'")
        if not crc_ok(raw):
            raise CorruptImage(self.path, "region table", off, "CRC-32C mismatch")
        if hdr.entry_count > MAX_TABLE_ENTRIES:
            raise CorruptImage(self.path, "region table", off,
                               f"{hdr.entry_count} entries (at most {MAX_TABLE_ENTRIES})")
        regions: dict[uuid.UUID, Region] = {}
        spans = [(0, HEADER_SECTION, "header section")]
        if self.header.log_length:
            spans.append((self.header.log_offset, self.header.log_length, "log"))
        for i in range(hdr.entry_count):
            eoff = off + 16 + 32 * i
            e = RegionTableEntry.parse(raw[16 + 32 * i:48 + 32 * i])
            r = Region(_guid(e.guid), e.file_offset, e.length, bool(e.flags & 1))
            if r.guid not in (BAT_GUID, METADATA_GUID):
                if r.required:
                    raise UnsupportedFeature(self.path, "region table entry", eoff,
                                             f"unknown required region {r.guid}")
                self.problem("info", "region table entry", eoff, f"unknown region {r.guid}")
                continue
            if r.guid in regions:
                raise CorruptImage(self.path, "region table entry", eoff,
                                   f"region {r.guid} listed twice")
            if r.file_offset % MiB or r.length % MiB or r.length == 0:
                raise CorruptImage(self.path, "region table entry", eoff,
                                   f"region at {r.file_offset:#x} length {r.length:#x} not "
                                   "1 MiB-aligned")
            if r.file_offset + r.length > self._eof:
                raise TruncatedImage(self.path, "region table entry", eoff,
                                     f"region {r.file_offset:#x}+{r.length:#x} beyond the end "
                                     f"of the {self._eof}-byte file")
            for s, n, what in spans:
                if r.file_offset < s + n and s < r.file_offset + r.length:
                    raise CorruptImage(self.path, "region table entry", eoff,
                                       f"region {r.file_offset:#x}+{r.length:#x} overlaps "
                                       f"the {what}")
            spans.append((r.file_offset, r.length, f"region {r.guid}"))
            regions[r.guid] = r
        self._spans = spans
        for g, name in ((BAT_GUID, "BAT"), (METADATA_GUID, "metadata")):
            if g not in regions:
                raise CorruptImage(self.path, "region table", off, f"no {name} region")
        return regions

    def _read_metadata(self, region: Region) -> None:
        base = region.file_offset
        raw = self._vread(base, METADATA_TABLE_SIZE, "metadata table")
        hdr = MetadataTableHeader.parse(raw)
        if hdr.signature != b"metadata":
            raise CorruptImage(self.path, "metadata table", base,
                               f"signature {bytes(hdr.signature)!r} is not b'metadata'")
        if hdr.entry_count > MAX_TABLE_ENTRIES:
            raise CorruptImage(self.path, "metadata table", base,
                               f"{hdr.entry_count} entries (at most {MAX_TABLE_ENTRIES})")
        items: dict[uuid.UUID, tuple[MetadataItem, bytes]] = {}
        for i in range(hdr.entry_count):
            eoff = base + 32 + 32 * i
            e = MetadataTableEntry.parse(raw[32 + 32 * i:64 + 32 * i])
            it = MetadataItem(_guid(e.item_id), e.offset, e.length, bool(e.flags & 1),
                              bool(e.flags & 2), bool(e.flags & 4))
            if it.item_id in items:
                raise CorruptImage(self.path, "metadata table entry", eoff,
                                   f"item {it.item_id} listed twice")
            if it.length and (it.offset < METADATA_TABLE_SIZE or it.length > MiB
                              or it.offset + it.length > region.length):
                raise CorruptImage(self.path, "metadata table entry", eoff,
                                   f"item {it.item_id} at {it.offset:#x} length {it.length:#x} "
                                   f"outside the {region.length:#x}-byte metadata region")
            if it.item_id not in KNOWN_ITEMS:
                if it.is_required:
                    raise UnsupportedFeature(self.path, "metadata table entry", eoff,
                                             f"unknown required metadata item {it.item_id}")
                self.problem("info", "metadata table entry", eoff,
                             f"unknown metadata item {it.item_id} ignored")
                continue
            items[it.item_id] = (it, self._vread(base + it.offset, it.length, "metadata item"))
        self.metadata_items = {k: v[0] for k, v in items.items()}
        self._parse_items(items, base)

    def _item(self, items: dict[uuid.UUID, tuple[MetadataItem, bytes]], guid: uuid.UUID,
              base: int, size: int) -> bytes:
        name = KNOWN_ITEMS[guid]
        if guid not in items:
            raise CorruptImage(self.path, "metadata table", base, f"no {name} item")
        it, data = items[guid]
        if len(data) < size:
            raise CorruptImage(self.path, f"metadata item {name}", base + it.offset,
                               f"{len(data)} bytes, expected {size}")
        return data

    def _parse_items(self, items: dict[uuid.UUID, tuple[MetadataItem, bytes]], base: int) -> None:
        fp = FileParameters.parse(self._item(items, FILE_PARAMETERS, base, 8))
        self.block_size = fp.block_size
        self.leave_blocks_allocated = bool(fp.flags & 1)
        self.has_parent = bool(fp.flags & 2)
        self._virtual_size = struct.unpack_from("<Q", self._item(items, VIRTUAL_DISK_SIZE,
                                                                   base, 8))[0]
        self.page83 = _guid(self._item(items, PAGE83_DATA, base, 16)[:16])
        self._logical = struct.unpack_from("<I", self._item(items, LOGICAL_SECTOR_SIZE, base,
                                                               4))[0]
        self.physical_sector_size = struct.unpack_from(
            "<I", self._item(items, PHYSICAL_SECTOR_SIZE, base, 4))[0]
        self.parent_locator: dict[str, str] = {}
        if self.has_parent:
            self.parent_locator = self._parse_parent_locator(
                self._item(items, PARENT_LOCATOR, base, 20),
                base + items[PARENT_LOCATOR][0].offset)
        elif PARENT_LOCATOR in items:
            self.problem("warning", "metadata item parent locator", None,
                         "parent locator present but HasParent is clear; ignored")

    def _parse_parent_locator(self, data: bytes, at: int) -> dict[str, str]:
        hdr = ParentLocatorHeader.parse(data)
        where = "metadata item parent locator"
        if _guid(hdr.locator_type) != VHDX_PARENT_LOCATOR_TYPE:
            raise UnsupportedFeature(self.path, where, at,
                                     f"locator type {_guid(hdr.locator_type)} is not VHDX")
        if 20 + 12 * hdr.key_value_count > len(data):
            raise CorruptImage(self.path, where, at,
                               f"{hdr.key_value_count} entries do not fit in {len(data)} bytes")
        out: dict[str, str] = {}
        for i in range(hdr.key_value_count):
            e = ParentLocatorEntry.parse(data[20 + 12 * i:32 + 12 * i])
            if (e.key_offset + e.key_length > len(data) or e.value_offset + e.value_length >
                    len(data) or e.key_length % 2 or e.value_length % 2):
                raise CorruptImage(self.path, where, at + 20 + 12 * i,
                                   "key/value entry outside the item")
            try:
                key = data[e.key_offset:e.key_offset + e.key_length].decode("utf-16-le")
                val = data[e.value_offset:e.value_offset + e.value_length].decode("utf-16-le")
            except UnicodeDecodeError as exc:
                raise CorruptImage(self.path, where, at + 20 + 12 * i,
                                   f"key/value is not UTF-16LE: {exc}") from exc
            out[key] = val
        if "parent_linkage" not in out:
            raise CorruptImage(self.path, where, at, "no parent_linkage key")
        return out

    def _geometry(self) -> None:
        where = "metadata item"
        bs, lss, pss, vs = (self.block_size, self._logical, self.physical_sector_size,
                            self._virtual_size)
        if not (_is_pow2(bs) and MiB <= bs <= 256 * MiB):
            raise CorruptImage(self.path, f"{where} file parameters", None,
                               f"block size {bs} is not a power of two in 1 MiB..256 MiB")
        if lss not in (512, 4096):
            raise CorruptImage(self.path, f"{where} logical sector size", None,
                               f"logical sector size {lss} is not 512 or 4096")
        if pss not in (512, 4096):
            raise CorruptImage(self.path, f"{where} physical sector size", None,
                               f"physical sector size {pss} is not 512 or 4096")
        if vs == 0 or vs % lss or vs > MAX_VIRTUAL_SIZE:
            raise CorruptImage(self.path, f"{where} virtual disk size", None,
                               f"virtual size {vs} is not a multiple of {lss} in 1..64 TiB")
        self.chunk_ratio = (1 << 23) * lss // bs
        self.payload_blocks = -(-vs // bs)
        self.sb_blocks = -(-self.payload_blocks // self.chunk_ratio)
        if self.has_parent:
            self.bat_entries = self.sb_blocks * (self.chunk_ratio + 1)
        else:
            self.bat_entries = self.payload_blocks + (self.payload_blocks - 1) // self.chunk_ratio

    def _read_bat(self, region: Region) -> None:
        need = self.bat_entries * 8
        if need > region.length:
            raise CorruptImage(self.path, "BAT", region.file_offset,
                               f"{self.bat_entries} entries need {need} bytes; the region holds "
                               f"{region.length}")
        if need > MAX_BAT_BYTES:
            raise UnsupportedFeature(self.path, "BAT", region.file_offset,
                                     f"BAT of {need} bytes exceeds the {MAX_BAT_BYTES}-byte limit")
        raw = self._vread(region.file_offset, need, "BAT")
        bat = array("Q")
        bat.frombytes(raw)
        if sys.byteorder != "little":
            bat.byteswap()
        self._bat = bat
        self._bat_offset = region.file_offset
        self.state_counts = self._check_bat()

    def _check_bat(self) -> dict[str, int]:
        """Validate every entry (states, offsets inside the file); count payload states."""
        counts: dict[str, int] = {}
        cr, bs, bat = self.chunk_ratio, self.block_size, self._bat
        for i in range(self.payload_blocks):
            idx = i + i // cr
            e = bat[idx]
            st = e & 7
            if st not in STATE_NAMES or (st == PARTIALLY_PRESENT and not self.has_parent):
                raise CorruptImage(self.path, f"BAT entry {idx}", self._bat_offset + 8 * idx,
                                   f"payload block {i} has invalid state {st}")
            counts[STATE_NAMES[st]] = counts.get(STATE_NAMES[st], 0) + 1
            if st in (FULLY_PRESENT, PARTIALLY_PRESENT):
                self._check_block_offset(idx, e & OFFSET_MASK,
                                         min(bs, self._virtual_size - i * bs))
            if st == PARTIALLY_PRESENT:
                sb = (i // cr) * (cr + 1) + cr
                if bat[sb] & 7 != SB_PRESENT:
                    raise CorruptImage(self.path, f"BAT entry {sb}", self._bat_offset + 8 * sb,
                                       f"block {i} is partially present but its sector bitmap "
                                       "is not present")
        if self.has_parent:
            for c in range(self.sb_blocks):
                idx = c * (cr + 1) + cr
                e = bat[idx]
                if e & 7 not in (SB_NOT_PRESENT, SB_PRESENT):
                    raise CorruptImage(self.path, f"BAT entry {idx}", self._bat_offset + 8 * idx,
                                       f"sector bitmap block {c} has invalid state {e & 7}")
                if e & 7 == SB_PRESENT:
                    self._check_block_offset(idx, e & OFFSET_MASK, MiB)
        return counts

    def _check_block_offset(self, idx: int, off: int, length: int) -> None:
        """A payload or sector bitmap block lies inside the file and outside every region."""
        where = f"BAT entry {idx}"
        if off + length > self._eof:
            raise CorruptImage(self.path, where, self._bat_offset + 8 * idx,
                               f"block at {off:#x}+{length:#x} beyond the end of the file "
                               f"({self._eof} bytes)")
        for s, n, what in self._spans:
            if off < s + n and s < off + length:
                raise CorruptImage(self.path, where, self._bat_offset + 8 * idx,
                                   f"block at {off:#x}+{length:#x} overlaps the {what}")

    def _open_parent(self) -> None:
        loc = self.parent_locator
        here = os.path.dirname(os.path.abspath(self.path))
        tried = []
        for key in ("relative_path", "absolute_win32_path", "volume_path"):
            val = loc.get(key)
            if not val:
                continue
            p = val.replace("\\", "/")
            if key == "relative_path" or not ntpath.isabs(val):
                p = os.path.normpath(os.path.join(here, p))
            why = why_not_openable(p)
            if why is None:
                break
            tried.append(f"{p} ({why})")
        else:
            raise MissingBackingFile(self.path, "parent locator", None,
                                     "parent not found; tried " + (", ".join(tried) or "nothing"))
        from .probe import open_image
        try:
            parent = open_image(p, None, _chain=self._chain)
        except OSError as e:
            raise MissingBackingFile(self.path, "parent locator", None,
                                     f"cannot open parent {p}: {e.strerror}") from e
        self.backing = parent
        want = {loc.get("parent_linkage", ""), loc.get("parent_linkage2", "")} - {""}
        got = getattr(parent, "data_write_guid", None)
        if got is None or not any(_linkage_matches(w, got) for w in want):
            raise MissingBackingFile(self.path, "parent locator", None,
                                     f"parent {p} has DataWriteGuid {got}, but this image was "
                                     f"made from parent_linkage {loc.get('parent_linkage')}")
        if parent.virtual_size != self._virtual_size:
            self.problem("warning", "parent", None,
                         f"parent virtual size {parent.virtual_size} differs from "
                         f"{self._virtual_size}")

    # -- the log ---------------------------------------------------------------------------------
    def _replay_log(self, h: VhdxHeader) -> None:
        entries = self._active_sequence(h)
        if not entries:
            self.problem("warning", "log", h.log_offset,
                         "header names a log but no valid log sequence was found; nothing "
                         "replayed")
            return
        head = entries[-1]
        for ent in entries:
            if self.file_size < ent.flushed_file_offset:
                raise CorruptImage(self.path, "log entry", h.log_offset + ent.offset,
                                   f"file is {self.file_size} bytes but the log says "
                                   f"{ent.flushed_file_offset} were flushed (truncated file?)")
        pages: dict[int, bytes] = {}
        work = 0     # pages written, counting rewrites: zero descriptors may repeat a range
        for ent in entries:
            for foff, page, length in ent.writes:
                work += length // PAGE
                if work > MAX_OVERLAY_PAGES:
                    raise UnsupportedFeature(self.path, "log", h.log_offset + ent.offset,
                                             f"log replay writes more than "
                                             f"{MAX_OVERLAY_PAGES} pages")
                for p in range(foff, foff + length, PAGE):
                    pages[p] = page if page is not None else ZERO_PAGE
        end = max([head.last_file_offset, self.file_size]
                  + [p + PAGE for p in pages])
        self._eof = end
        self._overlay = pages
        self._overlay_keys = sorted(pages)
        self.log_replayed = len(entries)
        self.problem("warning", "log", h.log_offset,
                     f"the image is dirty: its log was replayed in memory ({len(entries)} "
                     f"entries, sequence {entries[0].sequence_number}.."
                     f"{head.sequence_number}, {len(pages)} pages); the file was not changed")

    def _active_sequence(self, h: VhdxHeader) -> list[LogEntry]:
        budget = [MAX_LOG_SCAN_BYTES]
        valid: dict[int, LogEntry] = {}
        for slot in range(0, h.log_length, PAGE):
            ent = self._log_entry(h, slot, budget)
            if ent is not None:
                valid[slot] = ent
        best = self._longest_newest_chain(valid, h.log_length)
        if best:
            # replay starts at the tail the head entry names, if it is part of this sequence
            offsets = [e.offset for e in best]
            if best[-1].tail in offsets:
                best = best[offsets.index(best[-1].tail):]
            else:
                self.problem("warning", "log", h.log_offset + best[-1].offset,
                             f"head entry's tail {best[-1].tail:#x} is not in its sequence")
        return best

    @staticmethod
    def _longest_newest_chain(valid: dict[int, LogEntry], log_length: int) -> list[LogEntry]:
        """The run of entries, each directly after the previous one in the circular log with the
        next sequence number, that ends at the highest sequence number (longest on ties).
        Sequence numbers strictly increase along a run, so runs cannot loop; O(entries)."""
        succ: dict[int, int] = {}
        for slot, ent in valid.items():
            nxt = (slot + ent.length) % log_length
            if nxt in valid and valid[nxt].sequence_number == ent.sequence_number + 1:
                succ[slot] = nxt
        end: dict[int, tuple[int, int]] = {}      # slot -> (head sequence, run length from it)
        for slot in valid:
            path = []
            s: int | None = slot
            while s is not None and s not in end:
                path.append(s)
                s = succ.get(s)
            tail_key = end[s] if s is not None else None
            for p in reversed(path):
                if tail_key is None:
                    tail_key = (valid[p].sequence_number, 1)
                else:
                    tail_key = (tail_key[0], tail_key[1] + 1)
                end[p] = tail_key
        if not end:
            return []
        start = max(end, key=lambda k: end[k])
        chain = [valid[start]]
        while chain[-1].offset in succ:
            chain.append(valid[succ[chain[-1].offset]])
        return chain

    def _log_bytes(self, h: VhdxHeader, off: int, length: int) -> bytes:
        """``length`` bytes of the circular log starting at ``off`` (wrapping at its end)."""
        first = min(length, h.log_length - off)
        data = self._pread(h.log_offset + off, first, "log")
        if first < length:
            data += self._pread(h.log_offset, length - first, "log")
        return data

    def _log_entry(self, h: VhdxHeader, slot: int, budget: list[int]) -> LogEntry | None:
        head = self._pread(h.log_offset + slot, PAGE, "log entry")
        if head[:4] != b"loge":
            return None
        e = LogEntryHeader.parse(head)
        if (_guid(e.log_guid) != h.log_guid or e.entry_length % PAGE or e.entry_length == 0
                or e.entry_length > h.log_length or e.sequence_number == 0
                or e.tail % PAGE or e.tail >= h.log_length):
            return None
        ndesc_sectors = -(-(LOG_ENTRY_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * e.descriptor_count)
                          // PAGE)
        if ndesc_sectors * PAGE > e.entry_length:
            return None
        budget[0] -= e.entry_length
        if budget[0] < 0:
            raise CorruptImage(self.path, "log", h.log_offset,
                               "log search exceeded its work bound (crafted log?)")
        if not self._log_crc_ok(h, slot, e.entry_length, e.checksum):
            return None
        writes = self._log_descriptors(h, slot, e, ndesc_sectors)
        if writes is None:
            return None
        return LogEntry(slot, e.sequence_number, e.tail, e.entry_length, e.flushed_file_offset,
                        e.last_file_offset, writes)

    def _log_crc_ok(self, h: VhdxHeader, slot: int, length: int, want: int) -> bool:
        """CRC-32C of a log entry (checksum field zeroed), read 1 MiB at a time."""
        first = self._log_bytes(h, slot, min(length, MiB))
        crc = crc32c.crc32c(first[:4] + b"\0\0\0\0" + first[8:])
        for off in range(MiB, length, MiB):
            crc = crc32c.crc32c(self._log_bytes(h, (slot + off) % h.log_length,
                                                min(MiB, length - off)), crc)
        return crc == want

    def _log_descriptors(self, h: VhdxHeader, slot: int, e: Any, ndesc_sectors: int
                         ) -> tuple[tuple[int, bytes | None, int], ...] | None:
        """The entry's writes (file offset, page or None for zeros, length), or None when a
        descriptor or data sector is invalid."""
        data = self._log_bytes(h, slot, ndesc_sectors * PAGE)
        writes = []
        sector = ndesc_sectors
        nsectors = e.entry_length // PAGE
        for i in range(e.descriptor_count):
            at = LOG_ENTRY_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * i
            d = LogDescriptor.parse(data[at:at + LOG_DESCRIPTOR_SIZE])
            if d.sequence_number != e.sequence_number or d.file_offset % PAGE:
                return None
            if d.signature == b"zero":
                length = struct.unpack("<Q", d.leading_or_length)[0]
                if length % PAGE or length > MAX_OVERLAY_PAGES * PAGE:
                    return None
                writes.append((d.file_offset, None, length))
            elif d.signature == b"desc":
                if sector >= nsectors:
                    return None
                ds = LogDataSector.parse(self._log_bytes(h, (slot + sector * PAGE) %
                                                         h.log_length, PAGE))
                sector += 1
                if ds.signature != b"data" or \
                        (ds.sequence_high << 32 | ds.sequence_low) != e.sequence_number:
                    return None
                page = bytes(d.leading_or_length) + bytes(ds.data) + bytes(d.trailing_bytes)
                writes.append((d.file_offset, page, PAGE))
            else:
                return None
        return tuple(writes)

    # -- reading the file through the overlay ---------------------------------------------------
    def _vread(self, offset: int, length: int, structure: str) -> bytes:
        """File bytes as they are after log replay (zeros past the real end, up to the log's)."""
        if not self._overlay and offset + length <= self.file_size:
            return self._pread(offset, length, structure)
        buf = bytearray(length)
        self._vread_into(offset, memoryview(buf), structure)
        return bytes(buf)

    def _vread_into(self, offset: int, out: memoryview, structure: str) -> None:
        n = len(out)
        if offset < 0 or offset + n > self._eof:
            raise TruncatedImage(self.path, structure, offset,
                                 f"needs {n} bytes but the file is {self._eof} bytes long")
        real = max(0, min(n, self.file_size - offset))
        if real:
            self._pread_into(offset, out[:real], structure)
        if real < n:
            out[real:] = bytes(n - real)
        keys = self._overlay_keys
        i = bisect.bisect_left(keys, offset - PAGE + 1)
        while i < len(keys) and keys[i] < offset + n:
            p = keys[i]
            lo, hi = max(p, offset), min(p + PAGE, offset + n)
            out[lo - offset:hi - offset] = self._overlay[p][lo - p:hi - p]
            i += 1

    def _read_data(self, ext: Extent, out: memoryview) -> None:
        assert ext.host_offset is not None
        self._vread_into(ext.host_offset, out, "data")

    #: data read as plain file bytes, except where a replayed log page covers them
    _plain_read_data = True

    def _file_range(self, ext: Extent) -> tuple[int, int] | None:
        host = ext.host_offset
        if host is not None and self._overlay:
            keys = self._overlay_keys
            i = bisect.bisect_left(keys, host - PAGE + 1)
            if i < len(keys) and keys[i] < host + ext.length:
                return None
        return super()._file_range(ext)

    # -- the image interface ---------------------------------------------------------------------
    @property
    def virtual_size(self) -> int:
        return self._virtual_size

    @property
    def logical_sector_size(self) -> int:
        return self._logical

    @property
    def subformat(self) -> str:
        if self.has_parent:
            return "differencing"
        if self.leave_blocks_allocated and \
                self.state_counts.get("fully_present", 0) == self.payload_blocks:
            return "fixed"
        return "dynamic"

    def _extents(self, start: int, end: int) -> Iterator[Extent]:
        """Runs of blocks; neighbouring blocks of one kind (and contiguous data) are merged here,
        so a huge sparse disk costs one cheap step per block, not one Extent per block."""
        bs, cr, bat, vs = self.block_size, self.chunk_ratio, self._bat, self._virtual_size
        run: tuple[Kind, int, int] | None = None     # (kind, guest start, host - guest offset)
        for i in range(start // bs, -(-end // bs)):
            lo = i * bs
            e = bat[i + i // cr]
            st = e & 7
            kind: Kind | None = None     # None: partially present, or taken from the parent
            delta = 0
            if st == FULLY_PRESENT:
                kind, delta = Kind.DATA, (e & OFFSET_MASK) - lo
            elif st in (ZERO, UNMAPPED, UNMAPPED_V095):
                kind = Kind.ZERO
            elif st == NOT_PRESENT and self.backing is None or st == UNDEFINED:
                kind = Kind.UNALLOCATED  # no parent, or contents undefined: zeros, like qemu
            if run is not None and kind is run[0] and delta == run[2]:
                continue
            if run is not None:
                yield _run_extent(run, lo)
                run = None
            if kind is not None:
                run = (kind, lo, delta)
            elif st == PARTIALLY_PRESENT:
                yield from self._partial_block(i, lo, min(lo + bs, vs), e & OFFSET_MASK)
            else:
                yield from self._parent_extents(lo, min(lo + bs, vs))
        if run is not None:
            yield _run_extent(run, min(-(-end // bs) * bs, vs))

    def _partial_block(self, i: int, lo: int, hi: int, host: int) -> Iterator[Extent]:
        cr, lss = self.chunk_ratio, self._logical
        spb = self.block_size // lss
        sb_idx = (i // cr) * (cr + 1) + cr
        sb_off = (self._bat[sb_idx] & OFFSET_MASK) + (i % cr) * spb // 8
        bits = int.from_bytes(self._vread(sb_off, spb // 8, "sector bitmap"), "little")
        for a, b, mine in _runs_of_bits(bits, (hi - lo + lss - 1) // lss):
            s, t = lo + a * lss, min(lo + b * lss, hi)
            if mine:
                yield Extent(s, t - s, Kind.DATA, host + a * lss)
            else:
                yield from self._parent_extents(s, t)

    def _parent_extents(self, lo: int, hi: int) -> Iterator[Extent]:
        parent = self.backing
        assert parent is not None
        pend = min(hi, parent.virtual_size)
        if lo < pend:
            for ext in parent.extents(lo, pend):
                if ext.kind is Kind.DATA and ext.source is None:
                    ext = Extent(ext.offset, ext.length, ext.kind, ext.host_offset, parent,
                                 ext.compressed, ext.inner)
                yield ext
        if max(lo, pend) < hi:
            yield Extent(max(lo, pend), hi - max(lo, pend), Kind.UNALLOCATED)

    def _sequence(self, offset: int) -> int | None:
        """A header's sequence number, None when that header is invalid."""
        hd = self.headers.get(offset)
        return hd.sequence_number if hd else None

    def info(self) -> dict[str, Any]:
        h = self.header
        out: dict[str, Any] = {
            "subformat": self.subformat,
            "creator": self.creator,
            "block_size": self.block_size,
            "logical_sector_size": self._logical,
            "physical_sector_size": self.physical_sector_size,
            "leave_blocks_allocated": self.leave_blocks_allocated,
            "has_parent": self.has_parent,
            "page83_id": str(self.page83),
            "header1_sequence": self._sequence(HEADER_OFFSETS[0]),
            "header2_sequence": self._sequence(HEADER_OFFSETS[1]),
            "current_header": f"{h.offset:#x}",
            "data_write_guid": str(h.data_write_guid),
            "log_state": ("replayed in memory" if self.log_replayed else
                          "dirty, nothing valid to replay" if h.log_guid != NIL_GUID
                          else "clean"),
            "log_entries_replayed": self.log_replayed,
            "log_offset": h.log_offset,
            "log_length": h.log_length,
            "log_guid": str(h.log_guid),
            "chunk_ratio": self.chunk_ratio,
            "payload_blocks": self.payload_blocks,
            "bat_states": dict(sorted(self.state_counts.items())),
        }
        if self.has_parent:
            out["parent"] = {"locator": dict(self.parent_locator),
                             "path": self.backing.path if self.backing else None}
        return out


def _run_extent(run: tuple[Kind, int, int], end: int) -> Extent:
    kind, lo, delta = run
    return Extent(lo, end - lo, kind, lo + delta if kind is Kind.DATA else None)


def _linkage_matches(text: str, guid: uuid.UUID) -> bool:
    try:
        return uuid.UUID(text.strip("{}")) == guid
    except ValueError:
        return False


KNOWN_ITEMS = {FILE_PARAMETERS: "file parameters", VIRTUAL_DISK_SIZE: "virtual disk size",
               PAGE83_DATA: "page 83 data", LOGICAL_SECTOR_SIZE: "logical sector size",
               PHYSICAL_SECTOR_SIZE: "physical sector size", PARENT_LOCATOR: "parent locator"}
