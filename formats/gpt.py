"""The GUID Partition Table: primary header at LBA 1, backup header at the last LBA, entry arrays.

Header (little-endian, 92 bytes used of one logical sector): "EFI PART", revision, header size,
header CRC32 (over ``header_size`` bytes with the CRC field zeroed), reserved, my LBA, alternate
LBA, first/last usable LBA, disk GUID, entries LBA, number of entries, entry size, entries CRC32
(over ``num_entries * entry_size`` bytes).  Entries: type GUID, unique GUID, first LBA, last LBA
(inclusive), attributes, 72-byte UTF-16LE name.  GUIDs are stored mixed-endian: the first three
fields little-endian, the last eight bytes as-is (``uuid.UUID(bytes_le=...)``).  The entry size
must be 128 * 2^n.  The logical sector size (512 or 4096) sets every LBA.

References:
  * UEFI Specification 2.10, section 5.3 "GUID Partition Table (GPT) Disk Layout" (header and
    entry fields, CRC rules, backup at the last LBA, entry size 128 * 2^n).
  * GPT fdisk ``gpt.cc`` (``CheckHeaderValidity``, ``Verify``, ``MoveSecondHeaderToEnd``: what
    ``sgdisk -v`` reports and what ``sgdisk -e`` rewrites), ``parttypes.cc`` (type names).
  * The Discoverable Partitions Specification (uapi-group.org) for the Linux root/usr/home/srv/
    XBOOTLDR type GUIDs.
  * util-linux ``libfdisk/src/gpt.c`` (limits on the entry array size).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import construct as cs

from .errors import CorruptImage, TruncatedImage

SIGNATURE = b"EFI PART"
HEADER_SIZE = 92
ENTRY_SIZE = 128
#: Bounds against hostile headers: the array is read in one piece, so its size is capped.
MAX_ENTRIES = 65536
MAX_TABLE_BYTES = 8 << 20

ZERO_GUID = "00000000-0000-0000-0000-000000000000"

PARTITION_TYPES: dict[str, tuple[str, str]] = {
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": ("esp", "EFI System"),
    "21686148-6449-6E6F-744E-656564454649": ("bios-boot", "BIOS boot"),
    "024DEE41-33E7-11D3-9D69-0008C781F39F": ("mbr-scheme", "MBR partition scheme"),
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": ("linux", "Linux filesystem"),
    "44479540-F297-41B2-9AF7-D131D5F0458A": ("linux-root-x86", "Linux root (x86)"),
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": ("linux-root-x86-64", "Linux root (x86-64)"),
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE": ("linux-root-arm64", "Linux root (ARM64)"),
    "8484680C-9521-48C6-9C11-B0720656F69E": ("linux-usr-x86-64", "Linux /usr (x86-64)"),
    "B0E01050-EE5F-4390-949A-9101B17104E9": ("linux-usr-arm64", "Linux /usr (ARM64)"),
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": ("swap", "Linux swap"),
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": ("lvm", "Linux LVM"),
    "A19D880F-05FC-4D3B-A006-743F0F84911E": ("raid", "Linux RAID"),
    "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": ("home", "Linux /home"),
    "3B8F8425-20E0-4F3B-907F-1A25A76F98E8": ("srv", "Linux /srv"),
    "4D21B016-B534-45C2-A9FB-5C16E091FD2D": ("var", "Linux /var"),
    "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1": ("var-tmp", "Linux /var/tmp"),
    "BC13C2FF-59E6-4262-A352-B275FD6F7172": ("xbootldr", "Linux extended boot (/boot)"),
    "CA7D7CCB-63ED-4C53-861C-1742536059CC": ("luks", "Linux LUKS"),
    "8DA63339-0007-60C0-C436-083AC8230908": ("linux-reserved", "Linux reserved"),
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": ("msdata", "Microsoft basic data"),
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": ("msreserved", "Microsoft reserved"),
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": ("winre", "Windows recovery environment"),
    "516E7CBA-6ECF-11D6-8FF8-00022D09712B": ("freebsd", "FreeBSD data"),
    "48465300-0000-11AA-AA11-00306543ECAC": ("hfsplus", "Apple HFS/HFS+"),
    "6A82CB45-1DD2-11B2-99A6-080020736631": ("solaris-boot", "Solaris boot"),
}

ATTR_REQUIRED = 1 << 0
ATTR_NO_BLOCK_IO = 1 << 1
ATTR_LEGACY_BIOS_BOOTABLE = 1 << 2

Header = cs.Struct(
    "signature" / cs.Const(SIGNATURE),
    "revision" / cs.Int32ul,
    "header_size" / cs.Int32ul,
    "header_crc32" / cs.Int32ul,
    "reserved" / cs.Int32ul,
    "my_lba" / cs.Int64ul,
    "alternate_lba" / cs.Int64ul,
    "first_usable_lba" / cs.Int64ul,
    "last_usable_lba" / cs.Int64ul,
    "disk_guid" / cs.Bytes(16),
    "entries_lba" / cs.Int64ul,
    "num_entries" / cs.Int32ul,
    "entry_size" / cs.Int32ul,
    "entries_crc32" / cs.Int32ul,
)
#: Byte offsets of the fields a relocation rewrites (for struct.pack_into on the raw sector).
OFF_HEADER_CRC, OFF_MY_LBA, OFF_ALTERNATE, OFF_LAST_USABLE, OFF_ENTRIES_LBA = 16, 24, 32, 48, 72
#: One entry's fixed part; entries larger than 128 bytes carry reserved bytes after it.
_ENTRY = struct.Struct("<16s16sQQQ72s")


def guid_str(raw: bytes) -> str:
    """A mixed-endian on-disk GUID as the usual upper-case text form."""
    return str(uuid.UUID(bytes_le=bytes(raw))).upper()


def type_name(type_guid: str) -> str:
    return PARTITION_TYPES.get(type_guid.upper(), ("unknown", "unknown"))[1]


@dataclass(frozen=True, slots=True)
class GptHeader:
    offset: int                    # byte offset of the header on the disk
    revision: int
    header_size: int
    header_crc32: int
    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: str
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc32: int
    header_crc_ok: bool
    raw: bytes = b""               # the header sector as read (for relocation)

    @property
    def table_bytes(self) -> int:
        return self.num_entries * self.entry_size

    def table_sectors(self, sector_size: int) -> int:
        return -(-self.table_bytes // sector_size)


@dataclass(frozen=True, slots=True)
class GptEntry:
    index: int                     # 1-based slot number (as sgdisk/sfdisk number partitions)
    type_guid: str
    unique_guid: str
    first_lba: int
    last_lba: int                  # inclusive
    attributes: int
    name: str

    @property
    def type_short(self) -> str:
        return PARTITION_TYPES.get(self.type_guid, ("unknown", "unknown"))[0]

    @property
    def type_name(self) -> str:
        return type_name(self.type_guid)


def header_crc(raw: bytes, header_size: int) -> int:
    """CRC32 of the first ``header_size`` bytes with the CRC field taken as zero."""
    return zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:header_size])


def parse_header(raw: bytes, offset: int, sector_size: int, path: str = "",
                 structure: str = "GPT header") -> GptHeader:
    """Parse and sanity-check one header sector; CorruptImage names the structure and offset."""
    if len(raw) < HEADER_SIZE:
        raise TruncatedImage(path, structure, offset, "the disk ends inside the GPT header")
    try:
        c = Header.parse(raw)
    except cs.ConstError:
        raise CorruptImage(path, structure, offset, "no 'EFI PART' signature") from None
    if not HEADER_SIZE <= c.header_size <= sector_size:
        raise CorruptImage(path, structure, offset + 12,
                           f"header size {c.header_size} outside {HEADER_SIZE}..{sector_size}")
    return GptHeader(offset, c.revision, c.header_size, c.header_crc32, c.my_lba, c.alternate_lba,
                     c.first_usable_lba, c.last_usable_lba, guid_str(c.disk_guid), c.entries_lba,
                     c.num_entries, c.entry_size, c.entries_crc32,
                     header_crc(raw, c.header_size) == c.header_crc32, bytes(raw[:sector_size]))


def check_table_geometry(h: GptHeader, disk_size: int, sector_size: int, path: str = "",
                         structure: str = "GPT header") -> None:
    """Refuse entry arrays that are absurd before anything is allocated for them."""
    es = h.entry_size
    if es < ENTRY_SIZE or es & (es - 1) or es > MAX_TABLE_BYTES:
        raise CorruptImage(path, structure, h.offset + 84,
                           f"entry size {es} is not 128 * 2^n")
    if h.num_entries > MAX_ENTRIES or h.table_bytes > MAX_TABLE_BYTES:
        raise CorruptImage(path, structure, h.offset + 80,
                           f"{h.num_entries} entries of {es} bytes exceed the "
                           f"{MAX_TABLE_BYTES}-byte limit")
    start = h.entries_lba * sector_size
    if h.entries_lba < 1 or start + h.table_bytes > disk_size:
        raise CorruptImage(path, structure, h.offset + 72,
                           f"entry array at LBA {h.entries_lba} ({h.table_bytes} bytes) lies "
                           f"outside the {disk_size}-byte disk")


def read_entry_array(read: Callable[[int, int], bytes], h: GptHeader, disk_size: int,
                     sector_size: int, path: str = "", structure: str = "GPT entries",
                     header_structure: str = "GPT header") -> tuple[bytes, bool]:
    """The raw entry array and whether its CRC32 matches the header's.

    Impossible array geometry raises CorruptImage naming the header field (``header_structure``).
    """
    check_table_geometry(h, disk_size, sector_size, path, header_structure)
    data = read(h.entries_lba * sector_size, h.table_bytes)
    if len(data) != h.table_bytes:
        raise TruncatedImage(path, structure, h.entries_lba * sector_size,
                             "the disk ends inside the GPT entry array")
    return data, zlib.crc32(data) == h.entries_crc32


def parse_entries(data: bytes, entry_size: int) -> tuple[GptEntry, ...]:
    """Used entries (type GUID not zero) of a raw entry array."""
    mv = memoryview(data)
    out = []
    for i in range(len(data) // entry_size):
        rec = mv[i * entry_size:i * entry_size + ENTRY_SIZE]
        if not any(rec[:16]):
            continue
        tguid, uguid, first, last, attrs, name = _ENTRY.unpack(rec)
        text = name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        out.append(GptEntry(i + 1, guid_str(tguid), guid_str(uguid), first, last, attrs, text))
    return tuple(out)
