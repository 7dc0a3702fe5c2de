"""Disk facts: what the container (VHD footer, sizes) and the partition layout say, as plain data.

:class:`DiskFacts` is built by ``vhdtool.facts`` from the format core and by the examples of
:mod:`checks.disk_checks` from :func:`baseline_disk` (a correct hybrid Gen1+Gen2 fixed VHD).  This
module never reads an image: the checks only look at these facts.

References:
  Virtual Hard Disk Image Format Specification v1.0 (footer fields, CHS algorithm);
  UEFI 2.x §5 (GPT header AlternateLBA, partition type GUIDs); the MBR partition type registry
  (0x82 swap, 0x8e LVM, 0xef EFI); docs/formats.md; the checks' sources in :mod:`checks.sources`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .catalog import V1, V2
from .examples import register_baseline

MIB = 1 << 20
CHS_MAX = (65535, 16, 255)
GIB = 1 << 30
TIB = 1 << 40
SECTOR = 512
VHD_COOKIE = b"conectix"
VHD_VERSION = 0x00010000
FIXED_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
DISK_TYPE_FIXED, DISK_TYPE_DYNAMIC, DISK_TYPE_DIFFERENCING = 2, 3, 4
DISK_TYPE_NAMES = {DISK_TYPE_FIXED: "fixed", DISK_TYPE_DYNAMIC: "dynamic",
                   DISK_TYPE_DIFFERENCING: "differencing"}

# partition types (GPT GUIDs upper-case, MBR as "0xNN")
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GPT_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
GPT_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MBR_ESP, MBR_SWAP, MBR_LVM, MBR_LINUX = "0xef", "0x82", "0x8e", "0x83"
ESP_TYPES = frozenset({GPT_ESP, MBR_ESP})
SWAP_TYPES = frozenset({GPT_SWAP, MBR_SWAP})
LVM_TYPES = frozenset({GPT_LVM, MBR_LVM})


def _mib(n: int) -> str:
    return f"{n // MIB}MiB" if n % MIB == 0 else f"{n}B"


def normalize_type_id(type_id: Any) -> str:
    """A partition type as compared here: ``0xNN`` for MBR, an upper-case GUID for GPT."""
    if isinstance(type_id, int):
        return f"0x{type_id:02x}"
    text = str(type_id).strip()
    if text.lower().startswith("0x"):
        return f"0x{int(text, 16):02x}"
    return text.upper()


@dataclass(frozen=True)
class FooterFacts:
    """The fields of a VHD footer that the checks judge."""

    cookie: bytes
    checksum_ok: bool
    version: int
    data_offset: int
    disk_type: int
    current_size: int
    original_size: int
    geometry: tuple[int, int, int]
    chs_size: int
    creator_app: str
    #: where the footer was read (byte offset in the file)
    offset: int
    #: the size each reader presents (``current_size``, ``chs``, ``qemu``, ``hyper-v``...)
    sizes_by_reader: Mapping[str, int] = field(default_factory=dict)

    @property
    def disk_type_name(self) -> str:
        return DISK_TYPE_NAMES.get(self.disk_type, f"unknown ({self.disk_type})")


@dataclass(frozen=True)
class PartitionFacts:
    index: int
    start: int            #: bytes from the start of the disk
    size: int             #: bytes
    type_id: str          #: normalized (see normalize_type_id)
    type_name: str = ""
    name: str = ""
    bootable: bool = False
    #: filesystem or signature found in the partition's first bytes (fat, ext, xfs, swap, lvm2...)
    fs: str | None = None

    @property
    def end(self) -> int:
        return self.start + self.size

    def short(self) -> str:
        """Compact form for docs: ``2:EFI system partition/fat@2MiB+126MiB``."""
        fs = f"/{self.fs}" if self.fs else ""
        what = self.type_name or self.type_id
        return f"{self.index}:{what}{fs}@{_mib(self.start)}+{_mib(self.size)}"

    def label(self) -> str:
        what = self.type_name or self.type_id
        return f"partition {self.index} ({what}) at {self.start:,}..{self.end:,}"


@dataclass(frozen=True)
class StructureError:
    """An error-level problem the format reader found in the image's own structures (a footer
    checksum, overlapping BAT blocks, data shorter than the footer's size...), where it is."""

    structure: str
    offset: int | None
    message: str

    def where(self) -> str:
        return self.structure + (f" @ {self.offset:#x}" if self.offset is not None else "")


@dataclass(frozen=True)
class DiskFacts:
    """Everything the disk-level checks know about one image file."""

    path: str
    format: str                       #: qemu-img spelling: raw, vpc, vhdx, qcow2
    subformat: str                    #: fixed/dynamic/differencing for vpc, else ""
    file_size: int
    #: guest-visible size, None when the image could not be read by this build
    virtual_size: int | None
    logical_sector_size: int = SECTOR
    footer: FooterFacts | None = None
    #: offset of a valid VHD footer found as the disk's own last sector (a re-wrapped fixed VHD)
    stale_footer_at: int | None = None
    #: why the image's contents could not be read (partition facts then unknown)
    unreadable: str | None = None
    #: "gpt", "mbr", "none" (no table), or None when not read
    scheme: str | None = None
    partitions: tuple[PartitionFacts, ...] = ()
    mbr_boot_code: bool = False       #: sector 0 has boot code and the 0x55AA signature
    #: GPT: the primary header's AlternateLBA, and whether a valid header sits there
    gpt_alternate_lba: int | None = None
    gpt_backup_found: bool | None = None
    table_problems: tuple[str, ...] = ()
    #: the container's damage, as the format reader reported it (error-level problems)
    structure_errors: tuple[StructureError, ...] = ()

    @property
    def last_lba(self) -> int | None:
        if self.virtual_size is None:
            return None
        return self.virtual_size // self.logical_sector_size - 1

    def is_fixed_vhd(self) -> bool:
        return self.format == "vpc" and self.footer is not None \
            and self.footer.disk_type == DISK_TYPE_FIXED


def supported_generations(facts: DiskFacts) -> frozenset[str]:
    """The Hyper-V generations the partition layout can boot: V1 (BIOS), V2 (UEFI), or both."""
    gens: set[str] = set()
    if bios_bootable(facts):
        gens.add(V1)
    if any(p.type_id in ESP_TYPES and p.fs == "fat" for p in facts.partitions):
        gens.add(V2)
    return frozenset(gens)


def bios_bootable(facts: DiskFacts) -> bool:
    if not facts.mbr_boot_code:
        return False
    if facts.scheme == "gpt":
        return any(p.type_id == GPT_BIOS_BOOT for p in facts.partitions)
    return facts.scheme == "mbr"


# -- the baseline the examples start from ------------------------------------------------------

BASE_SIZE = 4 * GIB


def _baseline_partitions() -> tuple[PartitionFacts, ...]:
    return (
        PartitionFacts(1, 1 * MIB, 1 * MIB, GPT_BIOS_BOOT, "BIOS boot partition"),
        PartitionFacts(2, 2 * MIB, 126 * MIB, GPT_ESP, "EFI system partition", fs="fat"),
        PartitionFacts(3, 128 * MIB, BASE_SIZE - 128 * MIB - MIB, GPT_LINUX, "Linux filesystem",
                       fs="ext"),
    )


def baseline_disk(overrides: Mapping[str, Any] | None = None) -> DiskFacts:
    """A correct 4 GiB fixed VHD with a hybrid GPT layout (BIOS boot + ESP + ext4 root).

    ``overrides`` replaces DiskFacts fields; ``footer.<field>`` keys replace footer fields.
    """
    footer = FooterFacts(
        cookie=VHD_COOKIE, checksum_ok=True, version=VHD_VERSION, data_offset=FIXED_DATA_OFFSET,
        disk_type=DISK_TYPE_FIXED, current_size=BASE_SIZE, original_size=BASE_SIZE,
        geometry=CHS_MAX, chs_size=65535 * 16 * 255 * SECTOR, creator_app="vhdt",
        offset=BASE_SIZE,
        sizes_by_reader={"current_size": BASE_SIZE, "qemu": BASE_SIZE, "hyper-v": BASE_SIZE})
    facts = DiskFacts(
        path="baseline.vhd", format="vpc", subformat="fixed", file_size=BASE_SIZE + SECTOR,
        virtual_size=BASE_SIZE, footer=footer, scheme="gpt", partitions=_baseline_partitions(),
        mbr_boot_code=True, gpt_alternate_lba=BASE_SIZE // SECTOR - 1, gpt_backup_found=True)
    overrides = dict(overrides or {})
    foot = {k.split(".", 1)[1]: overrides.pop(k) for k in list(overrides)
            if k.startswith("footer.")}
    if foot:
        facts = replace(facts, footer=replace(footer, **foot))
    return replace(facts, **overrides)


def with_partition(index: int, **changes: Any) -> tuple[PartitionFacts, ...]:
    """The baseline partitions with partition ``index`` changed (for examples)."""
    return tuple(replace(p, **changes) if p.index == index else p
                 for p in _baseline_partitions())


def without_partition(index: int) -> tuple[PartitionFacts, ...]:
    return tuple(p for p in _baseline_partitions() if p.index != index)


register_baseline("disk", baseline_disk)
