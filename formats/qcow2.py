"""qcow2 images (versions 2 and 3): header, extensions, L1/L2 mapping, compression, backing files.

The guest disk is cut into clusters of ``1 << cluster_bits`` bytes.  A two-level table maps each
guest cluster: the L1 table (in memory) points at L2 tables (one cluster each, cached with an LRU
bound) whose entries say where the cluster lives -- nowhere (read the backing file or zeros),
"reads as zero", a host cluster of this file (or of the external data file), or a compressed
stream.  With extended L2 entries each cluster also carries 32-subcluster allocation/zero bitmaps.

The allocation map is computed by walking L2 tables with plain integer loops over ``array('Q')``
(byteswapped once per table), skipping runs of all-zero entries with a C-level search and merging
contiguous host clusters without creating per-cluster objects.  Unallocated L1 entries skip a whole
L2 range at once, so a sparse 1 TiB image maps in milliseconds.

Runs of compressed clusters are single extents too: their ``host_offset`` is the guest offset of
the run (a format-private descriptor) and ``_read_data`` looks each cluster's stream up in the
cached L2 table, so a converter reads them in large blocks.

Policy (matching qemu 7.2 when it opens an image read-only): the dirty bit and the corrupt bit are
recorded as problems and the image is still read; unknown incompatible feature bits, encryption,
``cluster_bits`` > 21, a zero flag in a v2 image, misaligned cluster offsets and invalid subcluster
bitmaps are refused; a named backing or data file that cannot be opened is an error; a virtual size
that is not a multiple of 512 is floored to whole sectors.  Deliberate differences: an L2 table or
data cluster pointer past the end of the file is ``CorruptImage`` (qemu reads zeros); bad refcount
or snapshot tables (which qemu refuses at open) are recorded as problems, since reading needs
neither; a relative backing *and* data file name is resolved against the image's folder (qemu 7.2
resolves a relative data file name against its current directory).

References:
    qemu ``docs/interop/qcow2.txt`` (now ``qcow2.rst``): header, feature bits, header extensions,
    L1/L2 entry layout, compressed cluster descriptor, extended L2 subcluster bitmaps.
    qemu ``block/qcow2.c`` (``qcow2_do_open``, ``qcow2_read_extensions``,
    ``validate_compression_type``), ``block/qcow2.h`` (``qcow2_get_cluster_type``,
    ``qcow2_get_subcluster_type``, offset masks, ``QCOW_MAX_L1_SIZE``), ``block/qcow2-cluster.c``
    (``qcow2_parse_compressed_l2_entry``), ``block/qcow2-threads.c`` (raw deflate / zstd frames).
    Verified against qemu-img 7.2 (Debian 12) in tests/formats/test_qcow2.py.
"""

from __future__ import annotations

import io
import os
import re
import sys
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import construct as cs
import zstandard

from .errors import (CorruptImage, EncryptedImage, MissingBackingFile, TruncatedImage,
                     UnsupportedFeature)
from .image import DiskImage, Extent, Kind, why_not_openable
from .raw import RawImage

MAGIC = b"QFI\xfb"
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21           # qemu's implementation limit (2 MiB clusters)
MIN_CLUSTER_BITS_EXTL2 = 14     # qemu: extended L2 needs clusters of 16 KiB or more
MAX_L1_BYTES = 32 * 1024 * 1024  # qemu QCOW_MAX_L1_SIZE
MAX_BACKING_NAME = 1023
MAX_REFCOUNT_ORDER = 6
L2_CACHE_BYTES = 8 * 1024 * 1024     # per image; a chain has one cache per layer

OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00    # L1/L2 entry bits 9-55
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1

INCOMPAT_DIRTY = 0
INCOMPAT_CORRUPT = 1
INCOMPAT_DATA_FILE = 2
INCOMPAT_COMPRESSION = 3
INCOMPAT_EXTL2 = 4
KNOWN_INCOMPAT = {INCOMPAT_DIRTY: "dirty", INCOMPAT_CORRUPT: "corrupt",
                  INCOMPAT_DATA_FILE: "external data file",
                  INCOMPAT_COMPRESSION: "compression type", INCOMPAT_EXTL2: "extended L2 entries"}
KNOWN_COMPAT = {0: "lazy refcounts"}
KNOWN_AUTOCLEAR = {0: "bitmaps", 1: "raw external data"}
AUTOCLEAR_DATA_FILE_RAW = 1

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441
COMPRESSION_TYPES = {0: "zlib", 1: "zstd"}
CRYPT_METHODS = {1: "AES-CBC", 2: "LUKS"}

HeaderV2 = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int32ub,
    "backing_file_offset" / cs.Int64ub,
    "backing_file_size" / cs.Int32ub,
    "cluster_bits" / cs.Int32ub,
    "size" / cs.Int64ub,
    "crypt_method" / cs.Int32ub,
    "l1_size" / cs.Int32ub,
    "l1_table_offset" / cs.Int64ub,
    "refcount_table_offset" / cs.Int64ub,
    "refcount_table_clusters" / cs.Int32ub,
    "nb_snapshots" / cs.Int32ub,
    "snapshots_offset" / cs.Int64ub,
)
HeaderV3Tail = cs.Struct(
    "incompatible_features" / cs.Int64ub,
    "compatible_features" / cs.Int64ub,
    "autoclear_features" / cs.Int64ub,
    "refcount_order" / cs.Int32ub,
    "header_length" / cs.Int32ub,
)
ExtensionHeader = cs.Struct("type" / cs.Int32ub, "length" / cs.Int32ub)
FeatureNameEntry = cs.Struct("type" / cs.Int8ub, "bit" / cs.Int8ub,
                             "name" / cs.Bytes(46))
assert HeaderV2.sizeof() == V2_HEADER_LENGTH
assert V2_HEADER_LENGTH + HeaderV3Tail.sizeof() == V3_HEADER_LENGTH

_NONZERO = re.compile(rb"[^\x00]")


@dataclass(frozen=True, slots=True)
class Qcow2Header:
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_LENGTH
    compression_type: int = 0

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    def incompat(self, bit: int) -> bool:
        return bool(self.incompatible_features >> bit & 1)


@dataclass(frozen=True, slots=True)
class HeaderExtensions:
    backing_format: str | None = None
    data_file: str | None = None
    feature_names: tuple[tuple[int, int, str], ...] = ()   # (type, bit, name)
    has_bitmaps: bool = False
    has_crypto_header: bool = False
    unknown: tuple[int, ...] = ()


def parse_header(path: str, head: bytes) -> Qcow2Header:
    """The fixed header at the start of ``head`` (at least 112 bytes or the whole file)."""
    if len(head) < V2_HEADER_LENGTH:
        raise TruncatedImage(path, "qcow2 header", 0, f"file is only {len(head)} bytes long")
    if head[:4] != MAGIC:
        raise CorruptImage(path, "qcow2 header", 0, f"bad magic {head[:4]!r}")
    v2 = HeaderV2.parse(head)
    fields = {k: v for k, v in v2.items() if not k.startswith("_") and k != "magic"}
    if v2.version not in (2, 3):
        raise UnsupportedFeature(path, "qcow2 header", 4, f"unsupported version {v2.version}")
    if v2.version == 3:
        if len(head) < V3_HEADER_LENGTH:
            raise TruncatedImage(path, "qcow2 v3 header", 0,
                                 f"file is only {len(head)} bytes long")
        tail = HeaderV3Tail.parse(head[V2_HEADER_LENGTH:])
        fields.update({k: v for k, v in tail.items() if not k.startswith("_")})
        if tail.header_length > V3_HEADER_LENGTH and len(head) > V3_HEADER_LENGTH:
            fields["compression_type"] = head[V3_HEADER_LENGTH]
    return Qcow2Header(**fields)


def validate_header(path: str, h: Qcow2Header, file_size: int) -> None:
    """Refuse what qemu refuses; every size is checked before anything is allocated."""
    if h.cluster_bits < MIN_CLUSTER_BITS:
        raise CorruptImage(path, "qcow2 header cluster_bits", 20,
                           f"cluster_bits {h.cluster_bits} < {MIN_CLUSTER_BITS}")
    if h.cluster_bits > MAX_CLUSTER_BITS:
        raise UnsupportedFeature(path, "qcow2 header cluster_bits", 20,
                                 f"cluster_bits {h.cluster_bits} > {MAX_CLUSTER_BITS} "
                                 "(clusters over 2 MiB)")
    cs_ = h.cluster_size
    if h.version == 3:
        if h.header_length < V3_HEADER_LENGTH or h.header_length % 8:
            raise CorruptImage(path, "qcow2 header header_length", 100,
                               f"header_length {h.header_length} must be >= 104 and a "
                               "multiple of 8")
        if h.header_length > cs_:
            raise CorruptImage(path, "qcow2 header header_length", 100,
                               f"header_length {h.header_length} exceeds the cluster size {cs_}")
        if h.refcount_order > MAX_REFCOUNT_ORDER:
            raise CorruptImage(path, "qcow2 header refcount_order", 96,
                               f"refcount_order {h.refcount_order} > {MAX_REFCOUNT_ORDER}")
    if h.size >= 1 << 63:
        raise CorruptImage(path, "qcow2 header size", 24, f"virtual size {h.size} too large")
    if h.l1_size * 8 > MAX_L1_BYTES:
        raise UnsupportedFeature(path, "qcow2 header l1_size", 36,
                                 f"L1 table of {h.l1_size} entries exceeds qemu's 32 MiB limit")
    if h.l1_table_offset % cs_:
        raise CorruptImage(path, "qcow2 L1 table", h.l1_table_offset,
                           "L1 table offset is not cluster-aligned")
    if h.l1_size and h.l1_table_offset + h.l1_size * 8 > file_size:
        raise TruncatedImage(path, "qcow2 L1 table", h.l1_table_offset,
                             f"{h.l1_size} entries run past the end of the "
                             f"{file_size}-byte file")
    if h.backing_file_offset:
        if h.backing_file_size > MAX_BACKING_NAME:
            raise CorruptImage(path, "qcow2 header backing_file_size", 16,
                               f"backing file name of {h.backing_file_size} bytes is too long")
        if h.backing_file_offset + h.backing_file_size > cs_:
            raise CorruptImage(path, "qcow2 backing file name", h.backing_file_offset,
                               "backing file name does not lie in the first cluster")


class Qcow2Image(DiskImage):
    format_name = "qcow2"

    def __init__(self, path: str | os.PathLike[str], _chain: tuple[str, ...] = ()) -> None:
        self._l1: array | None = None
        self._l2_cache: OrderedDict[int, array] = OrderedDict()
        self._zcache: tuple[int, bytes] | None = None
        self._counts: dict[str, int] | None = None
        self.data_file: RawImage | None = None
        super().__init__(path, _chain)

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> None:
        head = self._pread(0, min(self.file_size, 4096), "qcow2 header")
        h = parse_header(self.path, head)
        validate_header(self.path, h, self.file_size)
        self.header = h
        self.cluster_size = h.cluster_size
        self.extended_l2 = h.incompat(INCOMPAT_EXTL2)
        self._entry_words = 2 if self.extended_l2 else 1
        self.l2_entries = self.cluster_size // (8 * self._entry_words)
        self.l2_span = self.cluster_size * self.l2_entries
        self.ext = self._read_extensions(h)
        self._check_features(h)
        self._check_encryption(h)
        self._check_l1_size(h)
        self._check_other_tables(h)
        self.backing_file = self._read_backing_name(h)
        self.backing_format = self.ext.backing_format
        if self.backing_file is not None:
            self.backing = self._open_backing(self.backing_file)
        if h.incompat(INCOMPAT_DATA_FILE):
            self.data_file = self._open_data_file()

    def _check_encryption(self, h: Qcow2Header) -> None:
        if h.crypt_method:
            method = CRYPT_METHODS.get(h.crypt_method, f"unknown method {h.crypt_method}")
            raise EncryptedImage(self.path, "qcow2 header crypt_method", 32,
                                 f"image is encrypted ({method})")
        if self.ext.has_crypto_header:
            raise EncryptedImage(self.path, "qcow2 crypto header extension", None,
                                 "image carries a full-disk-encryption header")

    def _check_l1_size(self, h: Qcow2Header) -> None:
        needed = -(-h.size // self.l2_span)
        if h.l1_size < needed:
            raise CorruptImage(self.path, "qcow2 header l1_size", 36,
                               f"L1 table has {h.l1_size} entries, the virtual size needs "
                               f"{needed}")
        if h.size % 512:
            self.problem("warning", "qcow2 header size", 24,
                         f"virtual size {h.size} is not a multiple of 512; like qemu, the last "
                         f"{h.size % 512} bytes are not part of the disk")

    def _read_extensions(self, h: Qcow2Header) -> HeaderExtensions:
        """Walk the header extensions between the header and the backing name or cluster end."""
        start = h.header_length
        end = h.backing_file_offset if h.backing_file_offset else self.cluster_size
        end = min(end, self.cluster_size, self.file_size)
        if start >= end:
            return HeaderExtensions()
        area = self._pread(start, end - start, "qcow2 header extensions")
        found: dict[str, Any] = {}
        names: list[tuple[int, int, str]] = []
        unknown: list[int] = []
        pos = 0
        while pos + 8 <= len(area):       # each step advances >= 8 bytes: bounded by the area
            ext = ExtensionHeader.parse(area[pos:pos + 8])
            data_at = pos + 8
            if data_at + ext.length > len(area):    # qemu checks this even for the end marker
                raise CorruptImage(self.path, f"qcow2 header extension {ext.type:#010x}",
                                   start + pos, f"length {ext.length} runs past the header area")
            if ext.type == EXT_END:
                break
            data = area[data_at:data_at + ext.length]
            self._one_extension(ext.type, data, start + pos, found, names, unknown)
            pos = data_at + (ext.length + 7) // 8 * 8
        return HeaderExtensions(found.get("backing_format"), found.get("data_file"),
                                tuple(names), bool(found.get("bitmaps")),
                                bool(found.get("crypto")), tuple(unknown))

    def _one_extension(self, typ: int, data: bytes, at: int, found: dict[str, Any],
                       names: list[tuple[int, int, str]], unknown: list[int]) -> None:
        if typ == EXT_BACKING_FORMAT:
            if len(data) > 15:      # qemu: must fit its 16-byte format name buffer
                raise CorruptImage(self.path, "qcow2 backing format extension", at,
                                   f"format name of {len(data)} bytes is too long")
            found["backing_format"] = data.decode("ascii", "replace")
        elif typ == EXT_DATA_FILE:
            name = data.rstrip(b"\0")
            if b"\0" in name:
                raise CorruptImage(self.path, "qcow2 external data file extension", at,
                                   f"data file name {name!r} contains a NUL byte")
            found["data_file"] = os.fsdecode(name)
        elif typ == EXT_FEATURE_TABLE:
            for i in range(len(data) // 48):
                e = FeatureNameEntry.parse(data[i * 48:(i + 1) * 48])
                names.append((e.type, e.bit,
                              e.name.split(b"\0", 1)[0].decode("utf-8", "replace")))
        elif typ == EXT_BITMAPS:
            found["bitmaps"] = True
        elif typ == EXT_CRYPTO:
            found["crypto"] = True
        else:
            unknown.append(typ)

    def _feature_name(self, kind: int, bit: int) -> str | None:
        return next((n for t, b, n in self.ext.feature_names if t == kind and b == bit), None)

    def _check_features(self, h: Qcow2Header) -> None:
        unknown = [b for b in range(64)
                   if h.incompatible_features >> b & 1 and b not in KNOWN_INCOMPAT]
        if unknown:
            desc = ", ".join(f"bit {b}" + (f" ({n})" if (n := self._feature_name(0, b)) else "")
                             for b in unknown)
            raise UnsupportedFeature(self.path, "qcow2 header incompatible_features", 72,
                                     f"unknown incompatible feature {desc}")
        if h.incompat(INCOMPAT_DIRTY):
            self.problem("warning", "qcow2 header incompatible_features", 72,
                         "dirty bit set: refcounts may be stale (qemu repairs them only when "
                         "opening read-write); guest data is readable")
        if h.incompat(INCOMPAT_CORRUPT):
            self.problem("error", "qcow2 header incompatible_features", 72,
                         "corrupt bit set: qemu found inconsistent metadata and only opens the "
                         "image read-only; guest data read as qemu would")
        ctype = h.compression_type
        if ctype not in COMPRESSION_TYPES:
            raise UnsupportedFeature(self.path, "qcow2 header compression_type", 104,
                                     f"unknown compression type {ctype}")
        if (ctype != 0) != h.incompat(INCOMPAT_COMPRESSION):
            raise CorruptImage(self.path, "qcow2 header compression_type", 104,
                               f"compression type {ctype} disagrees with incompatible bit 3")
        if (h.autoclear_features >> AUTOCLEAR_DATA_FILE_RAW & 1
                and not h.incompat(INCOMPAT_DATA_FILE)):
            raise CorruptImage(self.path, "qcow2 header autoclear_features", 88,
                               "raw external data bit set without an external data file "
                               "(qemu refuses this)")
        if self.extended_l2 and h.cluster_bits < MIN_CLUSTER_BITS_EXTL2:
            raise CorruptImage(self.path, "qcow2 header cluster_bits", 20,
                               "extended L2 entries need clusters of at least 16 KiB")

    def _check_other_tables(self, h: Qcow2Header) -> None:
        """Refcount and snapshot tables are not needed to read; qemu refuses bad ones: note it."""
        tables = [("refcount table", 48, h.refcount_table_offset,
                   h.refcount_table_clusters * self.cluster_size)]
        # qemu validates the snapshot table's offset even when it holds no snapshot
        # (block/qcow2.c qcow2_do_open -> qcow2_validate_table: offset_into_cluster)
        tables.append(("snapshot table", 64, h.snapshots_offset, h.nb_snapshots * 40))
        for name, field, off, length in tables:
            empty_ok = name == "snapshot table" and not h.nb_snapshots
            if (off % self.cluster_size or off + length > self.file_size
                    or not (length or empty_ok)):
                self.problem("error", f"qcow2 {name}", off,
                             f"{name} ({length} bytes at {off:#x}, header field at {field}) is "
                             "misaligned, empty or past the end of the file; qemu refuses to "
                             "open the image, guest data is still mapped by the L1 table")

    def _read_backing_name(self, h: Qcow2Header) -> str | None:
        if not h.backing_file_offset or not h.backing_file_size:
            return None
        raw = self._pread(h.backing_file_offset, h.backing_file_size, "qcow2 backing file name")
        if b"\0" in raw:
            raise CorruptImage(self.path, "qcow2 backing file name", h.backing_file_offset,
                               f"backing file name {raw!r} contains a NUL byte")
        return os.fsdecode(raw)

    def _sibling(self, name: str) -> str:
        """A file named in the header: relative names are relative to the image's folder."""
        return name if os.path.isabs(name) else os.path.join(os.path.dirname(self.path), name)

    def _open_backing(self, name: str) -> DiskImage:
        from .probe import open_image       # probe imports this module lazily: no cycle at load

        target = self._sibling(name)
        why = why_not_openable(target)
        if why is not None:
            raise MissingBackingFile(self.path, "qcow2 backing file name",
                                     self.header.backing_file_offset,
                                     f"backing file {name!r} {why} (looked at {target})")
        try:
            return open_image(target, self.backing_format or None, _chain=self._chain)
        except OSError as e:
            raise MissingBackingFile(self.path, "qcow2 backing file name",
                                     self.header.backing_file_offset,
                                     f"backing file {target!r} cannot be opened: {e}") from e

    def _open_data_file(self) -> RawImage:
        name = self.ext.data_file
        if not name:
            raise MissingBackingFile(self.path, "qcow2 external data file extension", None,
                                     "incompatible bit 2 (external data file) is set but no "
                                     "data file name is stored")
        target = self._sibling(name)
        try:
            return ExternalDataFile(target, self.virtual_size)
        except OSError as e:
            raise MissingBackingFile(self.path, "qcow2 external data file extension", None,
                                     f"external data file {name!r} cannot be opened "
                                     f"(looked at {target}): {e.strerror}") from e

    # -- the interface ---------------------------------------------------------------------------
    @property
    def virtual_size(self) -> int:
        return self.header.size & ~511      # qemu counts whole sectors (total_sectors)

    @property
    def subformat(self) -> str:
        return "v3" if self.header.version == 3 else "v2"

    def close(self) -> None:
        if self.data_file is not None:
            self.data_file.close()
            self.data_file = None
        super().close()

    def _extents(self, start: int, end: int) -> Iterator[Extent]:
        for ext in self._own_runs(start, end):
            if ext.kind is Kind.UNALLOCATED and self.backing is not None:
                yield from self._backing_runs(max(ext.offset, start), min(ext.end, end))
            else:
                yield ext

    def _backing_runs(self, start: int, end: int) -> Iterator[Extent]:
        """``[start, end)`` read through the backing image; zeros past its end."""
        assert self.backing is not None
        bend = min(end, self.backing.virtual_size)
        if start < bend:
            for ext in self.backing.extents(start, bend):
                if ext.kind is Kind.DATA and ext.source is None:
                    ext = replace(ext, source=self.backing)
                yield ext
        if max(start, bend) < end:
            yield Extent(max(start, bend), end - max(start, bend), Kind.UNALLOCATED)

    # -- L1 / L2 tables --------------------------------------------------------------------------
    def _l1_table(self) -> array:
        if self._l1 is None:
            h = self.header
            self._l1 = _be_table(self._pread(h.l1_table_offset, h.l1_size * 8, "qcow2 L1 table"))
        return self._l1

    def _l2_table(self, l1_index: int, l1_entry: int) -> array:
        off = l1_entry & OFFSET_MASK
        table = self._l2_cache.get(off)
        if table is not None:
            self._l2_cache.move_to_end(off)
            return table
        where = self.header.l1_table_offset + 8 * l1_index
        if off % self.cluster_size:
            raise CorruptImage(self.path, f"qcow2 L1 table entry {l1_index}", where,
                               f"L2 table offset {off:#x} is not cluster-aligned")
        if off + self.cluster_size > self.file_size:
            raise CorruptImage(self.path, f"qcow2 L1 table entry {l1_index}", where,
                               f"L2 table offset {off:#x} lies past the end of the "
                               f"{self.file_size}-byte file")
        table = _be_table(self._pread(off, self.cluster_size, "qcow2 L2 table"))
        self._l2_cache[off] = table
        while len(self._l2_cache) * self.cluster_size > L2_CACHE_BYTES and len(self._l2_cache) > 1:
            self._l2_cache.popitem(last=False)
        return table

    def _own_runs(self, start: int, end: int) -> Iterator[Extent]:
        """This layer's map of ``[start, end)`` in cluster granularity (backing not consulted)."""
        end = min(end, self.virtual_size)
        if start >= end:
            return
        l1 = self._l1_table()
        span = self.l2_span
        first, last = start // span, (end - 1) // span + 1
        i = first
        while i < last:
            entry = l1[i]
            if not entry & OFFSET_MASK:
                j = _next_nonzero(l1, i + 1, last, 1)
                yield Extent(i * span, (j - i) * span, Kind.UNALLOCATED)
                i = j
                continue
            table = self._l2_table(i, entry)
            lo = max(start, i * span) - i * span
            hi = min(end, (i + 1) * span) - i * span
            a = lo // self.cluster_size
            b = -(-hi // self.cluster_size)
            walk = self._walk_extended if self.extended_l2 else self._walk_standard
            yield from walk(table, a, b, i * span, entry & OFFSET_MASK)
            i += 1

    def _walk_standard(self, t: array, a: int, b: int, base: int,
                       l2_off: int) -> Iterator[Extent]:
        """Runs of entries ``[a, b)`` of a standard L2 table; its cluster 0 is guest ``base``."""
        csz = self.cluster_size
        i = a
        while i < b:
            e = t[i]
            if e == 0:
                j = _next_nonzero(t, i + 1, b, 1)
                yield Extent(base + i * csz, (j - i) * csz, Kind.UNALLOCATED)
                i = j
                continue
            if e & OFLAG_COMPRESSED:
                j = self._compressed_run(t, i, b, 1, l2_off)
                yield Extent(base + i * csz, (j - i) * csz, Kind.DATA, base + i * csz,
                             compressed=True)
                i = j
                continue
            host = e & OFFSET_MASK
            j = i + 1
            if e & OFLAG_ZERO:
                if self.header.version < 3:     # qemu: corruption, reads fail with EIO
                    raise CorruptImage(self.path, f"qcow2 L2 table entry {i}", l2_off + 8 * i,
                                       "zero cluster flag in a version 2 image")
                self._check_host(host, l2_off, i)
                while (j < b and t[j] & (OFLAG_ZERO | OFLAG_COMPRESSED) == OFLAG_ZERO
                       and not (t[j] & OFFSET_MASK) % csz):
                    j += 1
                yield Extent(base + i * csz, (j - i) * csz, Kind.ZERO)
            elif host or (self.data_file is not None and e & OFLAG_COPIED):
                nxt = e + csz
                while j < b and t[j] == nxt:
                    j += 1
                    nxt += csz
                yield self._data(base + i * csz, (j - i) * csz, host, l2_off, i)
            else:       # only flag bits / reserved bits: unallocated
                yield Extent(base + i * csz, csz, Kind.UNALLOCATED)
            i = j

    def _walk_extended(self, t: array, a: int, b: int, base: int,
                       l2_off: int) -> Iterator[Extent]:
        """Extended L2: 16-byte entries with 32 allocation and 32 zero bits per cluster."""
        csz = self.cluster_size
        sub = csz // 32
        i = a
        while i < b:
            e, bm = t[2 * i], t[2 * i + 1]
            gbase = base + i * csz
            if e == 0 and bm == 0:
                j = _next_nonzero(t, 2 * i + 2, 2 * b, 2) // 2
                yield Extent(gbase, (j - i) * csz, Kind.UNALLOCATED)
                i = j
                continue
            if e & OFLAG_COMPRESSED:
                j = self._compressed_run(t, i, b, 2, l2_off)
                yield Extent(gbase, (j - i) * csz, Kind.DATA, gbase, compressed=True)
                i = j
                continue
            host = e & OFFSET_MASK
            alloc, zero = bm & 0xFFFFFFFF, bm >> 32
            normal = bool(host) or (self.data_file is not None and bool(e & OFLAG_COPIED))
            if alloc & zero or (alloc and not normal):
                raise CorruptImage(self.path, f"qcow2 L2 table entry {i}", l2_off + 16 * i,
                                   f"invalid subcluster bitmap {bm:#018x} for entry {e:#018x}")
            self._check_host(host, l2_off, i)
            if alloc == 0xFFFFFFFF:
                j = i + 1
                nxt = e + csz
                while j < b and t[2 * j] == nxt and t[2 * j + 1] == 0xFFFFFFFF:
                    j += 1
                    nxt += csz
                yield self._data(gbase, (j - i) * csz, host, l2_off, i)
                i = j
                continue
            for k, n, kind in _bit_runs(alloc, zero):
                if kind is Kind.DATA:
                    yield self._data(gbase + k * sub, n * sub, host, l2_off, i, k * sub)
                else:
                    yield Extent(gbase + k * sub, n * sub, kind)
            i += 1

    def _check_host(self, host: int, l2_off: int, i: int) -> None:
        if host % self.cluster_size:
            raise CorruptImage(self.path, f"qcow2 L2 table entry {i}",
                               l2_off + 8 * self._entry_words * i,
                               f"cluster offset {host:#x} is not cluster-aligned")

    def _data(self, guest: int, length: int, host: int, l2_off: int, i: int,
              inner: int = 0) -> Extent:
        """A run of normal clusters at ``host`` (+ ``inner`` bytes), in the data file if any."""
        self._check_host(host, l2_off, i)
        if self.data_file is not None:
            return Extent(guest, length, Kind.DATA, host + inner, self.data_file)
        last_cluster = (host + inner + length - 1) // self.cluster_size * self.cluster_size
        if last_cluster >= self.file_size:      # a cut-short last cluster reads zeros, as qemu
            raise CorruptImage(self.path, f"qcow2 L2 table entry {i}",
                               l2_off + 8 * self._entry_words * i,
                               f"cluster offset {last_cluster:#x} (in the run of contiguous "
                               f"clusters from this entry) lies past the end of the "
                               f"{self.file_size}-byte file")
        return Extent(guest, length, Kind.DATA, host + inner)

    def _compressed_run(self, t: array, i: int, b: int, stride: int, l2_off: int) -> int:
        """End of the run of compressed entries starting at entry ``i``; each one is checked.

        A compressed run is one extent whose ``host_offset`` is the guest offset where the run
        starts (a format-private descriptor, see :class:`Extent`): ``_read_data`` finds each
        cluster's stream in the (cached) L2 table again, so runs merge like plain data does.
        """
        where = f"qcow2 L2 table entry {i}"
        if self.data_file is not None:
            raise CorruptImage(self.path, where, l2_off + 8 * stride * i,
                               "compressed cluster in an image with an external data file")
        j = i
        while j < b and t[stride * j] & OFLAG_COMPRESSED:
            off, _ = self._compressed_span(t[stride * j])
            if off >= self.file_size:
                raise CorruptImage(self.path, f"qcow2 L2 table entry {j}", l2_off + 8 * stride * j,
                                   f"compressed data offset {off:#x} lies past the end of the "
                                   "file")
            j += 1
        return j

    # -- reading ---------------------------------------------------------------------------------
    def _compressed_span(self, entry: int) -> tuple[int, int]:
        """(host offset, byte count) of a compressed cluster's stream (qemu's formula)."""
        desc = entry & ~(OFLAG_COPIED | OFLAG_COMPRESSED)
        x = 62 - (self.header.cluster_bits - 8)
        off = desc & ((1 << x) - 1)
        nsect = ((desc >> x) & ((1 << (self.header.cluster_bits - 8)) - 1)) + 1
        return off, nsect * 512 - (off & 511)

    #: non-compressed clusters inside the file are read as they are (see DiskImage.file_range)
    _plain_read_data = True

    def _read_data(self, ext: Extent, out: memoryview) -> None:
        assert ext.host_offset is not None
        if not ext.compressed:
            _pread_zero_fill(self, ext.host_offset, out)
            return
        csz = self.cluster_size
        start = ext.host_offset + ext.inner           # guest offset (see _compressed_run)
        pos, end = start, start + len(out)
        while pos < end:
            cluster_start = pos - pos % csz
            n = min(cluster_start + csz, end) - pos
            plain = self._decompressed(self._compressed_entry(cluster_start))
            out[pos - start:pos - start + n] = plain[pos - cluster_start:pos - cluster_start + n]
            pos += n

    def _compressed_entry(self, guest: int) -> int:
        """The L2 entry of the compressed cluster at guest offset ``guest``."""
        l1_index, l2_index = divmod(guest // self.cluster_size, self.l2_entries)
        table = self._l2_table(l1_index, self._l1_table()[l1_index])
        entry = table[self._entry_words * l2_index]
        if not entry & OFLAG_COMPRESSED:
            raise CorruptImage(self.path, "qcow2 L2 table", None,
                               f"guest offset {guest:#x} is no longer a compressed cluster")
        return entry

    def _decompressed(self, entry: int) -> bytes:
        if self._zcache is not None and self._zcache[0] == entry:
            return self._zcache[1]
        off, size = self._compressed_span(entry)
        size = min(size, self.file_size - off)
        data = self._pread(off, size, "qcow2 compressed cluster")
        plain = self._decompress(data, off)
        self._zcache = (entry, plain)
        return plain

    def _decompress(self, data: bytes, off: int) -> bytes:
        csz = self.cluster_size
        what = f"qcow2 compressed cluster ({COMPRESSION_TYPES[self.header.compression_type]})"
        try:
            if self.header.compression_type == 0:
                plain = zlib.decompressobj(-15).decompress(data, csz)
            else:
                plain = _zstd_decompress(data, csz)
        except (zlib.error, ValueError) as e:
            raise CorruptImage(self.path, what, off, f"cannot decompress: {e}") from e
        if len(plain) != csz:
            raise CorruptImage(self.path, what, off,
                               f"decompresses to {len(plain)} bytes, not {csz}")
        return plain

    # -- facts ----------------------------------------------------------------------------------
    def cluster_counts(self) -> dict[str, int]:
        """Guest clusters of this layer by L2 entry, computed once.

        ``allocated``: clusters with host storage (normal, compressed, preallocated zero), the
        figure ``qemu-img check`` reports as allocated-clusters; ``compressed``; ``zero``: clusters
        that read as zeros by their zero flag (extended L2: all 32 subclusters zero).
        """
        if self._counts is None:
            counts = {"allocated": 0, "compressed": 0, "zero": 0}
            l1 = self._l1_table()
            csz, words = self.cluster_size, self._entry_words
            for i in range(-(-self.virtual_size // self.l2_span)):
                if not l1[i] & OFFSET_MASK:
                    continue
                table = self._l2_table(i, l1[i])
                n = min(self.l2_entries, -(-(self.virtual_size - i * self.l2_span) // csz))
                self._count_table(table, n, counts)
            self._counts = counts
        return self._counts

    def _count_table(self, t: array, n: int, counts: dict[str, int]) -> None:
        words = self._entry_words
        entries = t[0:n * words:words]
        zero_maps = t[1:n * words:words] if words == 2 else None
        allocated = compressed = zero = 0
        for k, e in enumerate(entries):
            if not e:
                if zero_maps is not None and zero_maps[k] >> 32 == 0xFFFFFFFF:
                    zero += 1
                continue
            if e & OFLAG_COMPRESSED:
                compressed += 1
                allocated += 1
                continue
            if e & OFFSET_MASK:
                allocated += 1
            if zero_maps is None:
                zero += e & OFLAG_ZERO
            elif zero_maps[k] >> 32 == 0xFFFFFFFF:
                zero += 1
        counts["allocated"] += allocated
        counts["compressed"] += compressed
        counts["zero"] += zero

    def _bit_names(self, value: int, kind: int, known: dict[int, str]) -> list[str]:
        return [known.get(b) or self._feature_name(kind, b) or f"bit {b}"
                for b in range(64) if value >> b & 1]

    def info(self) -> dict[str, Any]:
        h = self.header
        out: dict[str, Any] = {
            "version": h.version,
            "compat": "1.1" if h.version == 3 else "0.10",
            "cluster_size": self.cluster_size,
            "incompatible_features": self._bit_names(h.incompatible_features, 0, KNOWN_INCOMPAT),
            "compatible_features": self._bit_names(h.compatible_features, 1, KNOWN_COMPAT),
            "autoclear_features": self._bit_names(h.autoclear_features, 2, KNOWN_AUTOCLEAR),
            "compression_type": COMPRESSION_TYPES[h.compression_type],
            "extended_l2": self.extended_l2,
            "refcount_order": h.refcount_order,
            "refcount_bits": 1 << h.refcount_order,
            "l1_entries": h.l1_size,
            "snapshots": h.nb_snapshots,
            "backing_file": self.backing_file,
            "backing_format": self.backing_format,
            "data_file": self.ext.data_file if self.data_file is not None else None,
            "data_file_raw": bool(h.autoclear_features >> AUTOCLEAR_DATA_FILE_RAW & 1),
            "dirty": h.incompat(INCOMPAT_DIRTY),
            "corrupt": h.incompat(INCOMPAT_CORRUPT),
        }
        out.update({f"{k}_clusters": v for k, v in self.cluster_counts().items()})
        return out


class ExternalDataFile(RawImage):
    """A qcow2 external data file: guest clusters at the host offsets the L2 tables give.

    Reads past its end return zeros (qemu allocates clusters there without writing zeros).
    """

    format_name = "qcow2-data-file"
    _plain_read_data = True

    def _read_data(self, ext: Extent, out: memoryview) -> None:
        assert ext.host_offset is not None
        _pread_zero_fill(self, ext.host_offset, out)


def _pread_zero_fill(img: DiskImage, offset: int, out: memoryview) -> None:
    """Fill ``out`` from ``img``'s file at ``offset``; bytes past the end of the file stay zero."""
    n = max(0, min(len(out), img.file_size - offset))
    if n:
        img._pread_into(offset, out[:n], "qcow2 data cluster")
    if n < len(out):
        out[n:] = bytes(len(out) - n)


def _be_table(data: bytes) -> array:
    t = array("Q", data)
    if sys.byteorder == "little":
        t.byteswap()
    return t


def _next_nonzero(t: array, i: int, end: int, words: int) -> int:
    """First index >= i (a multiple of ``words`` entries) whose group is not all zero, or end."""
    m = _NONZERO.search(memoryview(t).cast("B"), i * 8, end * 8)
    if m is None:
        return end
    return m.start() // (8 * words) * words


def _bit_runs(alloc: int, zero: int) -> Iterator[tuple[int, int, Kind]]:
    """(first subcluster, count, kind) runs of one extended L2 entry's bitmaps."""
    k = 0
    while k < 32:
        kind = _sub_kind(alloc, zero, k)
        n = 1
        while k + n < 32 and _sub_kind(alloc, zero, k + n) is kind:
            n += 1
        yield k, n, kind
        k += n


def _sub_kind(alloc: int, zero: int, k: int) -> Kind:
    if zero >> k & 1:
        return Kind.ZERO
    return Kind.DATA if alloc >> k & 1 else Kind.UNALLOCATED


def _zstd_decompress(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of the zstd frame at the start of ``data`` (ValueError if bad)."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            return reader.read(limit)
    except zstandard.ZstdError as e:
        raise ValueError(str(e)) from e


__all__ = ["ExternalDataFile", "HeaderExtensions", "Qcow2Header", "Qcow2Image", "parse_header",
           "validate_header"]
