"""VHD (Microsoft Virtual Hard Disk v1.0): footer, CHS geometry, and the fixed/dynamic/differencing
reader.

A VHD is a 512-byte footer (at the end of the file; dynamic and differencing disks also keep a copy
at offset 0) plus, for dynamic and differencing disks, a 1024-byte dynamic header, a block
allocation table (BAT) of big-endian sector numbers, and blocks made of a sector bitmap (MSB-first,
1 = sector present in this file) followed by the block's data.  All integers are big-endian.

Bitmaps.  In a *differencing* disk a clear bit means "read this sector from the parent".  In a
*dynamic* disk vhdtool reads every allocated block's stored data, as qemu-img does, and reports a
warning (structure "VHD block bitmap", at the bitmap's offset) wherever a clear bit lies over
non-zero data: the only case where the two readings found in the wild differ.  The evidence
(docs/formats.md, "VHD block bitmaps", has the full account):

* the spec: for dynamic disks a 0 bit marks a sector "never modified", and "all sectors within a
  block whose corresponding bits in the bitmap are zero must contain 512 bytes of zero on disk.
  Software that accesses the disk image may take advantage of this assumption": in a conforming
  file both readings agree, and reading the data area directly is sanctioned;
* writers: qemu ``block/vpc.c`` writes all-ones bitmaps when it allocates a block (``alloc_block``)
  and sets all bits on its first write to a block; VirtualBox ``VHD.cpp`` allocates a block only
  on a whole-block write and sets the bits of the sectors written; DiscUtils ``DynamicStream.cs``
  allocates with an all-zero bitmap, extends the file (zeros) and sets bits per sector written, so
  partial bitmaps exist, over zeros; the Hyper-V sample (``hyperv2012r2-dynamic.vhd``) allocates
  no block, so shows nothing;
* readers: qemu ignores the bitmap (its bitmap test is ``#if 0``); VirtualBox (``vhdRead``:
  VERR_VD_BLOCK_FREE, then zeros for a base image), libvhdi (``libvhdi_file.c``: a range flagged
  unallocated is zero-filled without a parent) and DiscUtils (a ``ZeroStream`` parent for dynamic
  disks) honour it.

So a disagreement means a non-conforming file (stale or unaccounted data under clear bits).
Reading the data never drops bytes some writer put there (a clear-bit sector holds zeros in every
conforming file), matches qemu-img (the oracle, and the converter Azure documents for Linux), and
the warning says what bitmap-honouring readers would show instead.

The footer is described once, by :data:`FOOTER`, which both parses footers and builds the footer
the converter writes (:func:`build_fixed_footer`).

References:
    * Microsoft, "Virtual Hard Disk Image Format Specification", v1.0, 2006-10-11 (footer,
      dynamic header, BAT, bitmaps, parent locators, CHS algorithm in Appendix, checksum).
    * qemu ``block/vpc.c`` (facts only): footer looked up at offset 0 then at EOF, checksum
      refusal, ``vpc_ignore_current_size`` (qemu 2.6-9.x: current_size for ``win ``, ``qem2``,
      ``d2v ``, ``CTXS``, ``tap\\0``, CHS for every other creator; qemu >= 10.0: CHS only for
      ``vpc `` and ``qemu``), current_size always used when CHS is 65535/16/255, refusal above
      0xff000000 sectors, ``-o force_size`` writing creator ``qem2`` and CHS 65535/16/255.
    * libyal libvhdi ``libvhdi_block_descriptor.c`` and DiscUtils ``DynamicStream.cs``: bitmap bit
      order MSB-first; libvhdi ``libvhdi_parent_locator_entry.c``: W2ru/W2ku data is UTF-16LE.
    * Bitmaps (facts only): spec section "Block Allocation Table and Data Blocks"; qemu
      ``block/vpc.c`` ``get_sector_offset``/``alloc_block`` and qemu 7.2 verified (a cleared bit
      over data still reads the data); VirtualBox ``src/VBox/Storage/VHD.cpp`` ``vhdRead``,
      ``vhdWrite``; libvhdi ``libvhdi_file.c`` (read), ``libvhdi_block_allocation_table.c``;
      DiscUtils ``Library/DiscUtils.Vhd/DynamicStream.cs`` (Read, AllocateBlock, Write),
      ``DiskImageFile.cs`` (``DoOpenContent``).
    * The size each reader sees (``sizes_by_reader``): verified against qemu-img 7.2 (Debian 12)
      and a Hyper-V-made sample in tests/formats/test_vhd.py; docs/formats.md.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
import uuid
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import construct as cs

from .errors import (CorruptImage, FormatError, MissingBackingFile, TruncatedImage,
                     UnsupportedFeature)
from .image import DiskImage, Extent, Kind, why_not_openable
from .raw import data_runs

SECTOR = 512
FOOTER_SIZE = 512
LEGACY_FOOTER_SIZE = 511          # Virtual PC before 2004 wrote a 511-byte footer
HEADER_SIZE = 1024
COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
UNALLOCATED = 0xFFFFFFFF
#: seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC)
VHD_EPOCH = 946684800

DISK_TYPES = {0: "none", 1: "deprecated (1)", 2: "fixed", 3: "dynamic", 4: "differencing",
              5: "deprecated (5)", 6: "deprecated (6)"}
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4

#: largest geometry the spec's algorithm produces (about 127.5 GiB)
CHS_MAX = (65535, 16, 255)
#: qemu (all versions) refuses VHDs larger than this many sectors (2040 GiB)
QEMU_MAX_SECTORS = 0xFF000000
#: creators for which qemu 2.6-9.x (so Debian's 7.2) trusts current_size instead of CHS
QEMU7_CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
#: creators for which qemu >= 10.0 trusts CHS instead of current_size
QEMU10_CHS_CREATORS = (b"vpc ", b"qemu")

#: sanity limits applied before anything is allocated
MAX_BLOCK_SIZE = 256 * 1024 * 1024
MAX_BAT_BYTES = 16 * 1024 * 1024         # 4M entries: 2 TiB even with 512 KiB blocks
MAX_LOCATOR_BYTES = 64 * 1024
#: decoded bitmap runs kept in memory (a few MiB even for pathological bitmaps)
RUNS_CACHE_LIMIT = 64 * 1024
#: blocks whose bitmap disagrees with their data reported one by one (the rest are counted), the
#: sector runs named in each, and the most data read at once while looking
MAX_BITMAP_PROBLEMS = 8
MAX_RUNS_NAMED = 6
SCAN_CHUNK = 1024 * 1024

GEOMETRY = cs.Struct(
    "cylinders" / cs.Int16ub,
    "heads" / cs.Int8ub,
    "sectors" / cs.Int8ub,
)

FOOTER = cs.Struct(
    "cookie" / cs.Default(cs.Bytes(8), COOKIE),
    "features" / cs.Default(cs.Int32ub, 2),
    "version" / cs.Default(cs.Int32ub, 0x00010000),
    "data_offset" / cs.Default(cs.Int64ub, NO_DATA_OFFSET),
    "timestamp" / cs.Int32ub,
    "creator_app" / cs.Bytes(4),
    "creator_version" / cs.Int32ub,
    "creator_host_os" / cs.Default(cs.Bytes(4), b"Wi2k"),
    "original_size" / cs.Int64ub,
    "current_size" / cs.Int64ub,
    "disk_geometry" / GEOMETRY,
    "disk_type" / cs.Int32ub,
    "checksum" / cs.Default(cs.Int32ub, 0),
    "unique_id" / cs.Bytes(16),
    "saved_state" / cs.Default(cs.Int8ub, 0),
    "reserved" / cs.Default(cs.Bytes(427), bytes(427)),
)
assert FOOTER.sizeof() == FOOTER_SIZE

PARENT_LOCATOR = cs.Struct(
    "platform_code" / cs.Bytes(4),
    "platform_data_space" / cs.Int32ub,
    "platform_data_length" / cs.Int32ub,
    "reserved" / cs.Int32ub,
    "platform_data_offset" / cs.Int64ub,
)

DYNAMIC_HEADER = cs.Struct(
    "cookie" / cs.Bytes(8),
    "data_offset" / cs.Int64ub,
    "table_offset" / cs.Int64ub,
    "header_version" / cs.Int32ub,
    "max_table_entries" / cs.Int32ub,
    "block_size" / cs.Int32ub,
    "checksum" / cs.Int32ub,
    "parent_unique_id" / cs.Bytes(16),
    "parent_timestamp" / cs.Int32ub,
    "reserved1" / cs.Int32ub,
    "parent_unicode_name" / cs.Bytes(512),
    "parent_locators" / cs.Array(8, PARENT_LOCATOR),
    "reserved2" / cs.Bytes(256),
)
assert DYNAMIC_HEADER.sizeof() == HEADER_SIZE

FOOTER_CHECKSUM_AT = 64
HEADER_CHECKSUM_AT = 36


# -- checksums and geometry ---------------------------------------------------------------------

def _checksum(data: bytes, at: int) -> int:
    """One's complement of the byte sum, the 4-byte checksum field at ``at`` counted as zero."""
    return ~(sum(data) - sum(data[at:at + 4])) & 0xFFFFFFFF


def vhd_checksum(footer_bytes: bytes) -> int:
    """The checksum a footer (512 bytes, or a 511-byte legacy footer) must carry."""
    return _checksum(footer_bytes, FOOTER_CHECKSUM_AT)


def header_checksum(header_bytes: bytes) -> int:
    """The checksum a 1024-byte dynamic disk header must carry."""
    return _checksum(header_bytes, HEADER_CHECKSUM_AT)


def chs_geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for a disk of ``size`` bytes (spec Appendix).

    The product times 512 never exceeds ``size``: CHS always rounds down, and stops at
    :data:`CHS_MAX` (about 127.5 GiB).
    """
    total = min(max(size, 0) // SECTOR, CHS_MAX[0] * CHS_MAX[1] * CHS_MAX[2])
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def geometry_size(geometry: tuple[int, int, int]) -> int:
    c, h, s = geometry
    return c * h * s * SECTOR


# -- the footer ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Footer:
    """A parsed VHD footer (the fields of :data:`FOOTER`), plus where it was read from."""

    cookie: bytes
    features: int
    version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_host_os: bytes
    original_size: int
    current_size: int
    disk_geometry: tuple[int, int, int]
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int
    reserved: bytes
    raw: bytes
    offset: int

    @property
    def cylinders(self) -> int:
        return self.disk_geometry[0]

    @property
    def heads(self) -> int:
        return self.disk_geometry[1]

    @property
    def sectors(self) -> int:
        return self.disk_geometry[2]

    @property
    def chs_size(self) -> int:
        return geometry_size(self.disk_geometry)

    @property
    def disk_type_name(self) -> str:
        return DISK_TYPES.get(self.disk_type, f"unknown ({self.disk_type})")

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == vhd_checksum(self.raw)

    @property
    def cookie_ok(self) -> bool:
        return self.cookie == COOKIE

    @property
    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.unique_id)

    @property
    def creator_version_text(self) -> str:
        return f"{self.creator_version >> 16}.{self.creator_version & 0xFFFF}"

    @property
    def time(self) -> _dt.datetime:
        return vhd_time(self.timestamp)


def vhd_time(timestamp: int) -> _dt.datetime:
    """A VHD timestamp (seconds since 2000-01-01 UTC) as an aware datetime."""
    return _dt.datetime(2000, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(seconds=timestamp)


def parse_footer(data: bytes, path: str | os.PathLike[str] | None, offset: int, *,
                 verify: bool = True) -> Footer:
    """Parse a 512-byte footer (a 511-byte legacy footer is accepted too).

    With ``verify``, a bad cookie or checksum raises :class:`CorruptImage`.
    """
    if len(data) not in (FOOTER_SIZE, LEGACY_FOOTER_SIZE):
        raise TruncatedImage(path, "VHD footer", offset,
                             f"a footer is 512 bytes, got {len(data)}")
    raw = bytes(data)
    try:
        c = FOOTER.parse(raw.ljust(FOOTER_SIZE, b"\0"))
    except cs.ConstructError as e:       # cannot happen on 512 bytes, but never let it escape
        raise CorruptImage(path, "VHD footer", offset, str(e)) from e
    g = c.disk_geometry
    footer = Footer(
        cookie=c.cookie, features=c.features, version=c.version, data_offset=c.data_offset,
        timestamp=c.timestamp, creator_app=c.creator_app, creator_version=c.creator_version,
        creator_host_os=c.creator_host_os, original_size=c.original_size,
        current_size=c.current_size, disk_geometry=(g.cylinders, g.heads, g.sectors),
        disk_type=c.disk_type, checksum=c.checksum, unique_id=c.unique_id,
        saved_state=c.saved_state, reserved=c.reserved, raw=raw, offset=offset)
    if verify:
        if not footer.cookie_ok:
            raise CorruptImage(path, "VHD footer", offset,
                               f"cookie is {footer.cookie!r}, expected {COOKIE!r}")
        if not footer.checksum_ok:
            raise CorruptImage(path, "VHD footer", offset,
                               f"checksum {footer.checksum:#010x} does not match the computed "
                               f"{vhd_checksum(raw):#010x}")
    return footer


def build_fixed_footer(size: int, *, unique_id: bytes | None = None,
                       timestamp: int | None = None, creator_app: bytes = b"vhdt",
                       creator_version: int = 0x00010000,
                       geometry: tuple[int, int, int] | None = None) -> bytes:
    """The 512-byte footer of a fixed VHD holding ``size`` bytes of disk data.

    The geometry defaults to the spec's CHS for ``size`` when that is exact, else to
    :data:`CHS_MAX`: qemu 7.2 reads CHS (not current_size) for creators it does not know, except
    when CHS is maxed, so either way every reader sees exactly ``size`` bytes.
    """
    if not 0 <= size < 1 << 64 or size % SECTOR:
        raise ValueError(f"a fixed VHD's size must be a whole number of sectors, got {size}")
    if len(creator_app) != 4:
        raise ValueError(f"creator_app must be 4 bytes, got {creator_app!r}")
    if unique_id is None:
        unique_id = uuid.uuid4().bytes
    if len(unique_id) != 16:
        raise ValueError("unique_id must be 16 bytes")
    if timestamp is None:
        timestamp = max(int(time.time()) - VHD_EPOCH, 0)
    if geometry is None:
        exact = chs_geometry(size)
        geometry = exact if geometry_size(exact) == size else CHS_MAX
    c, h, s = geometry
    fields: dict[str, Any] = dict(
        timestamp=timestamp, creator_app=creator_app, creator_version=creator_version,
        original_size=size, current_size=size,
        disk_geometry=dict(cylinders=c, heads=h, sectors=s), disk_type=FIXED,
        unique_id=unique_id)
    unsigned = FOOTER.build(fields)
    return FOOTER.build(dict(fields, checksum=vhd_checksum(unsigned)))


def sizes_by_reader(footer: Footer) -> dict[str, int]:
    """The virtual size each reader would present for this footer.

    ``qemu`` is Debian's qemu 7.2 (the 2.6-9.x rule), ``qemu-10`` the rule since qemu 10.0,
    ``hyper-v`` what Hyper-V and Azure use.
    """
    chs = footer.chs_size
    maxed = footer.disk_geometry == CHS_MAX
    qemu7 = footer.current_size if (maxed or footer.creator_app in QEMU7_CURRENT_SIZE_CREATORS) \
        else chs
    qemu10 = chs if (footer.creator_app in QEMU10_CHS_CREATORS and not maxed) \
        else footer.current_size
    return {"current_size": footer.current_size, "chs": chs, "qemu": qemu7 // SECTOR * SECTOR,
            "qemu-10": qemu10 // SECTOR * SECTOR, "hyper-v": footer.current_size}


# -- the reader ---------------------------------------------------------------------------------

class VhdImage(DiskImage):
    """A fixed, dynamic or differencing VHD opened read-only."""

    format_name = "vpc"

    def _open(self) -> None:
        self.footer = self._find_footer()
        self._open_body()
        self._note_sizes()

    # -- footer ---------------------------------------------------------------------------------
    def _find_footer(self) -> Footer:
        """The footer at EOF (512 or legacy 511 bytes), or the copy at offset 0 as a fallback."""
        if self.file_size < LEGACY_FOOTER_SIZE:
            raise TruncatedImage(self.path, "VHD footer", 0,
                                 f"the file is {self.file_size} bytes, shorter than a footer")
        end: Footer | None = None
        for size in (FOOTER_SIZE, LEGACY_FOOTER_SIZE):
            if self.file_size >= size:
                off = self.file_size - size
                f = parse_footer(self._pread(off, size, "VHD footer"), self.path, off, verify=False)
                if f.cookie_ok:
                    end = f
                    break
        head = None
        if self.file_size >= FOOTER_SIZE + HEADER_SIZE:
            head = parse_footer(self._pread(0, FOOTER_SIZE, "VHD footer copy"), self.path, 0,
                                verify=False)
            if not head.cookie_ok or head.disk_type not in (DYNAMIC, DIFFERENCING):
                head = None
        if end is None and head is None:
            raise CorruptImage(self.path, "VHD footer", self.file_size - FOOTER_SIZE,
                               f"no {COOKIE.decode()!r} cookie in the last 512 (or 511) bytes "
                               "nor at offset 0")
        if end is None:
            assert head is not None
            self.problem("error", "VHD footer", self.file_size - FOOTER_SIZE,
                         "no footer at the end of the file; using the copy at offset 0")
            return self._checked(head)
        if len(end.raw) == LEGACY_FOOTER_SIZE:
            self.problem("info", "VHD footer", end.offset,
                         "511-byte footer (written by Virtual PC before 2004)")
        if end.disk_type == FIXED and end.checksum_ok:
            head = None                 # a fixed disk keeps no copy: offset 0 is guest data
        if head is not None and not end.checksum_ok and head.checksum_ok:
            self.problem("error", "VHD footer", end.offset,
                         "footer checksum mismatch; using the valid copy at offset 0 (spec)")
            return self._checked(head)
        if head is not None and head.raw[:len(end.raw)] != end.raw:
            self.problem("warning", "VHD footer copy", 0,
                         "the footer copy at offset 0 differs from the footer at the end")
        if head is None and end.disk_type in (DYNAMIC, DIFFERENCING):
            self.problem("warning", "VHD footer copy", 0,
                         f"a {end.disk_type_name} VHD keeps a copy of its footer here and this "
                         "one is missing or damaged: vhdtool reads the file by the footer at "
                         "the end (the spec's), qemu-img refuses it ('invalid VPC image')")
        return self._checked(end)

    def _checked(self, f: Footer) -> Footer:
        if not f.checksum_ok:
            self.problem("error", "VHD footer", f.offset,
                         f"checksum {f.checksum:#010x} does not match the computed "
                         f"{vhd_checksum(f.raw):#010x} (qemu refuses such a file)")
        if f.disk_type not in (FIXED, DYNAMIC, DIFFERENCING):
            raise UnsupportedFeature(self.path, "VHD footer", f.offset,
                                     f"disk type {f.disk_type_name} is not supported")
        if f.version != 0x00010000:
            self.problem("warning", "VHD footer", f.offset + 12,
                         f"file format version {f.version:#010x}, expected 0x00010000")
        if not f.features & 2:
            self.problem("warning", "VHD footer", f.offset + 8,
                         f"features {f.features:#x}: the reserved bit 0x2 must always be set")
        if f.saved_state:
            self.problem("warning", "VHD footer", f.offset + 84,
                         "saved_state is set: the disk belongs to a saved (suspended) VM")
        if f.current_size % SECTOR:
            self.problem("warning", "VHD footer", f.offset + 48,
                         f"current_size {f.current_size} is not a whole number of sectors")
        return f

    # -- layout ---------------------------------------------------------------------------------
    def _open_body(self) -> None:
        if self.footer.disk_type == FIXED:
            self._open_fixed()
        else:
            self._open_dynamic()

    def _open_fixed(self) -> None:
        f = self.footer
        self._data_len = f.offset
        if f.current_size != self._data_len:
            self.problem("error" if f.current_size > self._data_len else "warning",
                         "VHD footer", f.offset,
                         f"current_size {f.current_size} differs from the {self._data_len} "
                         "bytes of data before the footer")
        for stale in sorted({f.current_size - FOOTER_SIZE, self._data_len - FOOTER_SIZE}):
            if 0 <= stale and stale + FOOTER_SIZE <= self._data_len:
                self._note_stale_footer(stale)

    def _note_stale_footer(self, offset: int) -> None:
        """A valid footer as the last data sector: a fixed VHD wrapped again as if it were raw."""
        inner = parse_footer(self._pread(offset, FOOTER_SIZE, "data"), self.path, offset,
                             verify=False)
        if inner.cookie_ok and inner.checksum_ok:
            self.problem("warning", "VHD footer", offset,
                         "the last data sector is itself a VHD footer (a fixed VHD wrapped "
                         f"again?); its current_size is {inner.current_size}")

    def _note_sizes(self) -> None:
        f = self.footer
        sizes = sizes_by_reader(f)
        if sizes["qemu"] != f.current_size:
            self.problem("warning", "VHD footer", f.offset,
                         f"readers disagree on the size: Hyper-V/Azure use current_size "
                         f"{f.current_size}, Virtual PC and qemu 7.2 the CHS geometry "
                         f"{'/'.join(map(str, f.disk_geometry))} = {f.chs_size} bytes")
        elif f.chs_size != f.current_size and f.disk_geometry != CHS_MAX:
            self.problem("info", "VHD footer", f.offset,
                         f"CHS geometry {'/'.join(map(str, f.disk_geometry))} gives "
                         f"{f.chs_size} bytes, current_size {f.current_size} (Virtual PC "
                         "would show the CHS size)")
        if f.current_size > QEMU_MAX_SECTORS * SECTOR:
            self.problem("info", "VHD footer", f.offset,
                         f"larger than {QEMU_MAX_SECTORS * SECTOR} bytes (2040 GiB): qemu "
                         "refuses to open it")

    @property
    def virtual_size(self) -> int:
        return self.footer.current_size

    @property
    def subformat(self) -> str:
        return self.footer.disk_type_name

    def _extents(self, start: int, end: int) -> Iterator[Extent]:
        if self.footer.disk_type == FIXED:
            yield from self._fixed_extents(start, end)
        else:
            yield from self._dynamic_extents(start, end)

    def _fixed_extents(self, start: int, end: int) -> Iterator[Extent]:
        stop = min(end, self._data_len)
        if start < stop:
            yield from data_runs(self, start, stop)
        if end > max(start, stop):
            # current_size claims more than the file holds: nothing stored there
            yield Extent(max(start, stop), end - max(start, stop), Kind.UNALLOCATED)

    # -- report ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        f = self.footer
        out: dict[str, Any] = {
            "disk_type": f.disk_type_name,
            "creator_app": f.creator_app.decode("latin-1"),
            "creator_version": f.creator_version_text,
            "creator_host_os": f.creator_host_os.decode("latin-1"),
            "geometry": {"cylinders": f.cylinders, "heads": f.heads, "sectors": f.sectors},
            "current_size": f.current_size,
            "original_size": f.original_size,
            "sizes_by_reader": sizes_by_reader(f),
            "unique_id": str(f.uuid),
            "timestamp": f.time.isoformat(),
            "features": f.features,
            "saved_state": bool(f.saved_state),
            "footer_offset": f.offset,
            "footer_checksum_ok": f.checksum_ok,
        }
        out.update(self._dynamic_info())
        return out

    # -- dynamic and differencing ---------------------------------------------------------------
    def _open_dynamic(self) -> None:
        f = self.footer
        hoff = f.data_offset
        if hoff + HEADER_SIZE > self.file_size:
            raise CorruptImage(self.path, "VHD footer", f.offset + 16,
                               f"data_offset {hoff:#x} points past the end of the "
                               f"{self.file_size}-byte file")
        raw = self._pread(hoff, HEADER_SIZE, "VHD dynamic header")
        self._header_raw = raw
        h = DYNAMIC_HEADER.parse(raw)
        if h.cookie != HEADER_COOKIE:
            raise CorruptImage(self.path, "VHD dynamic header", hoff,
                               f"cookie is {h.cookie!r}, expected {HEADER_COOKIE!r}")
        if h.checksum != header_checksum(raw):
            self.problem("error", "VHD dynamic header", hoff + HEADER_CHECKSUM_AT,
                         f"checksum {h.checksum:#010x} does not match the computed "
                         f"{header_checksum(raw):#010x}")
        if h.header_version != 0x00010000:
            self.problem("warning", "VHD dynamic header", hoff + 24,
                         f"header version {h.header_version:#010x}, expected 0x00010000")
        self._header = h
        self._header_offset = hoff
        self._set_block_size(h.block_size, hoff + 32)
        self._read_bat(h, hoff)
        self._check_blocks()
        if f.disk_type == DYNAMIC:
            self._check_bitmaps()
        self._runs_cache: dict[int, list[tuple[int, int, bool]]] = {}
        self._runs_cached = 0
        if f.disk_type == DIFFERENCING:
            self.backing = self._open_parent(h, hoff)

    def _set_block_size(self, bs: int, where: int) -> None:
        if bs < SECTOR or bs & (bs - 1) or bs > MAX_BLOCK_SIZE:
            raise CorruptImage(self.path, "VHD dynamic header", where,
                               f"block size {bs} is not a power of two between 512 bytes and "
                               f"{MAX_BLOCK_SIZE >> 20} MiB")
        self._block_size = bs
        self._spb = bs // SECTOR
        self._bitmap_bytes = (self._spb + 7) // 8
        self._bitmap_size = (self._bitmap_bytes + SECTOR - 1) // SECTOR * SECTOR

    def _read_bat(self, h: Any, hoff: int) -> None:
        bs = self._block_size
        needed = -(-self.footer.current_size // bs)
        if h.max_table_entries < needed:
            raise CorruptImage(self.path, "VHD dynamic header", hoff + 28,
                               f"max_table_entries {h.max_table_entries} covers "
                               f"{h.max_table_entries * bs} bytes, current_size is "
                               f"{self.footer.current_size} ({needed} blocks)")
        if h.max_table_entries > needed:
            self.problem("info", "VHD dynamic header", hoff + 28,
                         f"max_table_entries {h.max_table_entries} exceeds the {needed} blocks "
                         "current_size needs")
        nbytes = needed * 4
        if h.table_offset + nbytes > self.file_size:
            raise TruncatedImage(self.path, "VHD BAT", h.table_offset,
                                 f"{needed} entries ({nbytes} bytes) run past the end of the "
                                 f"{self.file_size}-byte file")
        if nbytes > MAX_BAT_BYTES:
            raise UnsupportedFeature(self.path, "VHD BAT", h.table_offset,
                                     f"{needed} entries exceed the {MAX_BAT_BYTES}-byte limit")
        bat = array("I")
        assert bat.itemsize == 4
        bat.frombytes(self._pread(h.table_offset, nbytes, "VHD BAT"))
        if sys.byteorder == "little":
            bat.byteswap()                                  # big-endian on disk
        self._bat = bat
        self._table_offset = h.table_offset
        #: indices of allocated blocks, ascending: runs of unallocated blocks are skipped at once
        self._alloc = array("I", (i for i, e in enumerate(bat) if e != UNALLOCATED))

    def _check_blocks(self) -> None:
        """Every allocated block inside the file; overlapping blocks reported."""
        span = self._bitmap_size + self._block_size
        if len(self._alloc) > 1 and (len(self._alloc) - 1) * span > self.file_size:
            raise CorruptImage(self.path, "VHD BAT", self._table_offset,
                               f"{len(self._alloc)} allocated blocks of {span} bytes cannot fit "
                               f"in the {self.file_size}-byte file")
        last = len(self._bat) - 1
        tail = self.footer.current_size - last * self._block_size
        for i in self._alloc:
            start = self._bat[i] * SECTOR
            need = self._bitmap_size + (tail if i == last else self._block_size)
            if start + need > self.file_size:
                raise TruncatedImage(self.path, "VHD BAT", self._table_offset + 4 * i,
                                     f"block {i} at {start:#x} ({need} bytes) runs past the "
                                     f"end of the {self.file_size}-byte file")
        starts = sorted(self._bat[i] for i in self._alloc)
        for a, b in zip(starts, starts[1:]):
            if (b - a) * SECTOR < span:
                i = self._bat.index(a)
                j = self._bat.index(b, i + 1 if a == b else 0)
                self.problem("error", "VHD BAT", self._table_offset + 4 * j,
                             f"blocks {i} and {j} overlap in the file (at {a * SECTOR:#x} and "
                             f"{b * SECTOR:#x})")
                break

    def _check_bitmaps(self) -> None:
        """Dynamic disks: where a bitmap bit is clear but the sector's stored data is not zero
        (the one case where bitmap-honouring readers and qemu-img read differently, see the
        module doc), a warning naming the block, its bitmap's offset and the guest sectors.

        One bitmap and at most :data:`SCAN_CHUNK` bytes of data are held at a time."""
        last = len(self._bat) - 1
        tail = -(-(self.footer.current_size - last * self._block_size) // SECTOR)
        full = b"\xff" * self._bitmap_bytes
        reported = more = 0
        for i in self._alloc:
            at = self._bat[i] * SECTOR
            bitmap = self._pread(at, self._bitmap_bytes, "VHD block bitmap")
            if bitmap == full:
                continue
            data = at + self._bitmap_size
            runs = [r for s0, s1, present in bitmap_runs(bitmap, tail if i == last else self._spb)
                    if not present for r in self._nonzero_sectors(data, s0, s1)]
            if not runs:
                continue
            if reported == MAX_BITMAP_PROBLEMS:
                more += 1
                continue
            reported += 1
            lba = i * self._spb
            named = ", ".join(f"{lba + a}" if b - a == 1 else f"{lba + a}-{lba + b - 1}"
                              for a, b in runs[:MAX_RUNS_NAMED])
            if len(runs) > MAX_RUNS_NAMED:
                named += f" and {len(runs) - MAX_RUNS_NAMED} more runs"
            count = sum(b - a for a, b in runs)
            self.problem("warning", "VHD block bitmap", at,
                         f"block {i}: {count} sector(s) whose bit is clear hold non-zero data "
                         f"(guest sectors {named}); qemu-img reads that data, and so does "
                         "vhdtool, but readers that honour the bitmap (VirtualBox, libvhdi, "
                         "DiscUtils) read zeros there")
        if more:
            self.problem("warning", "VHD block bitmap", None,
                         f"{more} more block(s) whose bitmap has clear bits over non-zero data")

    def _nonzero_sectors(self, data: int, first: int, end: int) -> Iterator[tuple[int, int]]:
        """Runs ``(first, end)`` of the sectors in ``[first, end)`` of a block whose data (at
        file offset ``data``) is not all zeros."""
        end = min(end, (self.file_size - data) // SECTOR)
        run: list[int] = []
        for s in range(first, end, SCAN_CHUNK // SECTOR):
            n = min(end - s, SCAN_CHUNK // SECTOR)
            chunk = self._pread(data + s * SECTOR, n * SECTOR, "VHD block data")
            if chunk.count(0) == len(chunk):
                continue
            for k in range(n):
                if chunk[k * SECTOR:(k + 1) * SECTOR].count(0) == SECTOR:
                    continue
                if run and run[1] == s + k:
                    run[1] += 1
                else:
                    if run:
                        yield run[0], run[1]
                    run = [s + k, s + k + 1]
        if run:
            yield run[0], run[1]

    def _dynamic_extents(self, start: int, end: int) -> Iterator[Extent]:
        bs = self._block_size
        pos = start
        while pos < end:
            i = pos // bs
            k = bisect_left(self._alloc, i)
            nxt = self._alloc[k] if k < len(self._alloc) else None
            if nxt != i:                         # unallocated blocks up to the next allocated one
                stop = end if nxt is None else min(end, nxt * bs)
                yield from self._absent(pos, stop)
                pos = stop
                continue
            stop = min(end, (i + 1) * bs)
            yield from self._block_extents(i, pos, stop)
            pos = stop

    def _block_extents(self, i: int, start: int, end: int) -> Iterator[Extent]:
        base = i * self._block_size
        data = self._bat[i] * SECTOR + self._bitmap_size
        if self.footer.disk_type != DIFFERENCING:
            # dynamic: the block's stored data, whatever its bitmap says (module doc, "Bitmaps")
            yield Extent(start, end - start, Kind.DATA, data + (start - base))
            return
        for s0, s1, present in self._bitmap_runs(i):
            a, b = max(start, base + s0 * SECTOR), min(end, base + s1 * SECTOR)
            if a >= b:
                continue
            if present:
                yield Extent(a, b - a, Kind.DATA, data + (a - base))
            else:
                yield from self._absent(a, b)

    def _bitmap_runs(self, i: int) -> list[tuple[int, int, bool]]:
        """(first sector, end sector, present) runs of block ``i``'s bitmap (MSB-first)."""
        runs = self._runs_cache.get(i)
        if runs is None:
            bm = self._pread(self._bat[i] * SECTOR, self._bitmap_bytes, "VHD block bitmap")
            runs = bitmap_runs(bm, self._spb)
            if self._runs_cached + len(runs) > RUNS_CACHE_LIMIT:
                self._runs_cache.clear()
                self._runs_cached = 0
            self._runs_cache[i] = runs
            self._runs_cached += len(runs)
        return runs

    def _absent(self, start: int, end: int) -> Iterator[Extent]:
        """Bytes this file does not hold: the parent's (differencing) or zeros (dynamic)."""
        parent = self.backing
        if parent is None:
            yield Extent(start, end - start, Kind.UNALLOCATED)
            return
        stop = min(end, parent.virtual_size)
        if start < stop:
            for e in parent.extents(start, stop):
                yield replace(e, source=parent) if e.kind is Kind.DATA and e.source is None else e
        if end > max(start, stop):
            yield Extent(max(start, stop), end - max(start, stop), Kind.UNALLOCATED)

    # -- differencing: the parent ---------------------------------------------------------------
    def _parent_candidates(self, h: Any, hoff: int) -> list[str]:
        """Paths to try for the parent, best first: W2ru, W2ku, then the header's parent name."""
        folder = os.path.dirname(os.path.abspath(self.path))
        found: dict[bytes, list[str]] = {b"W2ru": [], b"W2ku": []}
        for n, loc in enumerate(h.parent_locators):
            if loc.platform_code not in found or loc.platform_data_length == 0:
                continue
            where = hoff + 576 + 24 * n
            size, off = loc.platform_data_length, loc.platform_data_offset
            if size > MAX_LOCATOR_BYTES or off + size > self.file_size:
                raise CorruptImage(self.path, "VHD parent locator", where,
                                   f"{size} bytes at {off:#x} lie outside the "
                                   f"{self.file_size}-byte file (or exceed {MAX_LOCATOR_BYTES})")
            try:
                text = self._pread(off, size, "VHD parent locator").decode("utf-16-le")
            except UnicodeDecodeError as e:
                raise CorruptImage(self.path, "VHD parent locator", off,
                                   f"{loc.platform_code.decode()} is not UTF-16LE: {e}") from e
            found[loc.platform_code].append(text.split("\0")[0])
        name = h.parent_unicode_name.decode("utf-16-be", "replace").split("\0")[0]
        self.parent_locators = {"W2ru": found[b"W2ru"], "W2ku": found[b"W2ku"], "name": name}
        out: list[str] = []
        for rel in found[b"W2ru"]:
            out.append(os.path.join(folder, _posix(rel)))
        for absolute in found[b"W2ku"]:
            path = _posix(absolute)
            if path.startswith("/"):
                out.append(path)
            out.append(os.path.join(folder, path.rsplit("/", 1)[-1]))
        if name:
            out.append(os.path.join(folder, _posix(name).rsplit("/", 1)[-1]))
        return list(dict.fromkeys(p for p in out if p.rstrip("/") != folder))

    def _open_parent(self, h: Any, hoff: int) -> DiskImage:
        from .probe import open_image            # probe imports this module lazily

        want = uuid.UUID(bytes=h.parent_unique_id)
        candidates = self._parent_candidates(h, hoff)
        mismatch: FormatError | None = None
        tried: list[str] = []
        for cand in candidates:
            why = why_not_openable(cand)
            if why is not None:
                tried.append(f"{cand} ({why})")
                continue
            parent = open_image(cand, None, _chain=self._chain)
            got = getattr(parent, "footer", None)
            if not isinstance(parent, VhdImage) or got is None:
                parent.close()
                mismatch = MissingBackingFile(self.path, "VHD parent locator", hoff + 576,
                                              f"parent {cand} is a {parent.format_name}, not a VHD")
                continue
            if got.unique_id != h.parent_unique_id:
                parent.close()
                mismatch = MissingBackingFile(
                    self.path, "VHD dynamic header", hoff + 40,
                    f"parent {cand} has unique id {got.uuid}, but this differencing disk "
                    f"expects {want}: wrong or modified parent")
                continue
            if got.timestamp != h.parent_timestamp:
                self.problem("info", "VHD dynamic header", hoff + 56,
                             f"parent timestamp {vhd_time(h.parent_timestamp).isoformat()} "
                             f"differs from the parent footer's {got.time.isoformat()}")
            if parent.virtual_size != self.virtual_size:
                self.problem("warning", "VHD parent", None,
                             f"parent {cand} is {parent.virtual_size} bytes, this disk "
                             f"{self.virtual_size}")
            return parent
        if mismatch is not None:
            raise mismatch
        raise MissingBackingFile(self.path, "VHD parent locator", hoff + 576,
                                 f"parent {want} not found; tried: "
                                 + (", ".join(tried) or "no locator"))

    def _dynamic_info(self) -> dict[str, Any]:
        if self.footer.disk_type == FIXED:
            return {}
        h = self._header
        out: dict[str, Any] = {
            "header_offset": self._header_offset,
            "table_offset": self._table_offset,
            "block_size": self._block_size,
            "bat_entries": h.max_table_entries,
            "allocated_blocks": len(self._alloc),
            "header_checksum_ok": h.checksum == header_checksum(self._header_raw),
        }
        if self.backing is not None:
            out["parent"] = self.backing.path
            out["parent_unique_id"] = str(uuid.UUID(bytes=h.parent_unique_id))
            out["parent_locators"] = self.parent_locators
        return out


_REVERSE_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def bitmap_runs(bitmap: bytes, nbits: int) -> list[tuple[int, int, bool]]:
    """Runs ``(first, end, set)`` of the first ``nbits`` bits of an MSB-first bitmap.

    Bit 7 of byte 0 is sector 0.  Runs are found with whole-integer bit operations, so the cost is
    per run, not per sector.
    """
    full = nbits // 8
    if bitmap[:full] == b"\xff" * full and (full * 8 == nbits or bitmap[full] >> (8 - nbits % 8)
                                            == (1 << nbits % 8) - 1):
        return [(0, nbits, True)]
    x = int.from_bytes(bitmap.translate(_REVERSE_BITS), "little")   # bit s = sector s
    x &= (1 << nbits) - 1
    if x == 0:
        return [(0, nbits, False)]
    runs: list[tuple[int, int, bool]] = []
    pos = 0
    while pos < nbits:
        present = (x >> pos) & 1
        rest = (~x if present else x) >> pos                # bits where the run ends
        low = (rest & -rest).bit_length() - 1 if rest else nbits
        stop = min(nbits, pos + low)
        runs.append((pos, stop, bool(present)))
        pos = stop
    return runs


def _posix(windows_path: str) -> str:
    r"""A Windows locator path with ``/`` separators and no leading ``.\``."""
    p = windows_path.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p
