"""Disk-level checks: the VHD container, its sizes, the partition layout and what it can boot.

Every check reads only :class:`checks.disk.DiskFacts`.  Each check cites its sources by key of
:mod:`checks.sources`; a "U" in a citation marks a design inference that no source confirmed,
which is why those checks are warnings.

References:
  Virtual Hard Disk Image Format Specification v1.0 (footer: cookie @0, version @12, data offset
  @16, current size @48, geometry @56, disk type @60, checksum @64); UEFI 2.x §5.3 (GPT);
  Microsoft azure-vhd-utils ``vhdcore/validator/validator.go`` (what Azure's own uploader checks).
"""

from __future__ import annotations

from collections.abc import Iterator

from .catalog import (GENERALIZED, SPECIALIZED, V1, V2, Applies, Context, Example, Finding,
                      NotApplicable, Severity, check)
from .disk import (DISK_TYPE_FIXED, ESP_TYPES, FIXED_DATA_OFFSET, GIB, GPT_BIOS_BOOT, LVM_TYPES,
                   MIB, SECTOR, SWAP_TYPES, TIB, VHD_COOKIE, VHD_VERSION, DiskFacts, FooterFacts,
                   PartitionFacts, StructureError, bios_bootable, supported_generations,
                   with_partition, without_partition)

CONVERT = "vhdtool convert IMAGE OUT.vhd"
#: the fix for a damaged container (disk.structure), and for every finding on such an image
DAMAGED = ("the image's own structure is damaged: re-export or rebuild it from its source (the "
           "hypervisor that owns the disk, the build pipeline), or repair a copy where a repair "
           "tool exists (qemu-img check -r all -f qcow2|vhdx COPY), then check it again; "
           "converting a damaged image copies the damage")
#: the fix of every other finding on a damaged image
REPAIR_FIRST = ("first repair the damage disk.structure reports (converting a damaged image "
                "copies it)")
BOTH = frozenset({GENERALIZED, SPECIALIZED})
OS_AND_DATA = Applies(roles=frozenset({"os", "data"}))
G1 = Applies(generations=frozenset({V1}))
G2 = Applies(generations=frozenset({V2}))


def _disk(ctx: Context) -> DiskFacts:
    facts: DiskFacts = ctx.disk
    return facts


def _any_footer(ctx: Context) -> FooterFacts:
    """The footer, even with a damaged cookie; a raw, qcow2 or VHDX file has none, and
    disk.convert.needed says so, with the command that fixes it."""
    d = _disk(ctx)
    if d.footer is None:
        raise NotApplicable(f"the image is {d.format}: no VHD footer (see disk.convert.needed)")
    return d.footer


def _footer(ctx: Context) -> FooterFacts:
    f = _any_footer(ctx)
    if f.cookie != VHD_COOKIE:
        raise NotApplicable("the VHD footer's cookie is damaged (see disk.vhd.cookie)")
    return f


def _fixed_footer(ctx: Context) -> FooterFacts:
    f = _footer(ctx)
    if f.disk_type != DISK_TYPE_FIXED:
        raise NotApplicable(f"the VHD is {f.disk_type_name}, not fixed (see disk.vhd.fixed)")
    return f


def _partitions(ctx: Context) -> tuple[PartitionFacts, ...]:
    d = _disk(ctx)
    if d.scheme is None:
        raise NotApplicable(d.unreadable or "the partition table was not read")
    if d.scheme == "none":
        raise NotApplicable("the disk has no partition table")
    return d.partitions


def _fix(ctx: Context, fix: str | None) -> str | None:
    """A finding's fix: ``fix`` (None: the check's remediation), unless the container is damaged
    (disk.structure fails): then repairing it comes first, and converting is no fix."""
    return REPAIR_FIRST if _disk(ctx).structure_errors else fix


def _convert_fix(ctx: Context) -> str | None:
    return _fix(ctx, f"vhdtool convert {_disk(ctx).path} OUT.vhd")


def _reported_as_damage(ctx: Context, structure: str) -> bool:
    """disk.structure already reports an error in ``structure`` (don't report it twice)."""
    return any(e.structure == structure for e in _disk(ctx).structure_errors)


def _at(f: FooterFacts, field_offset: int) -> str:
    return f"footer @ {f.offset + field_offset:#x}"


# -- the container -----------------------------------------------------------------------------

_FOOTER_AT = 4 * GIB


@check(id="disk.structure", title="The image's own structures are intact",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="The format reader (vhdtool info) reports damage to the container itself as "
                 "error-level problems: a footer whose checksum is wrong or that is missing, BAT "
                 "entries whose blocks overlap, a fixed VHD whose data is shorter than its "
                 "current size, a table cut short. Readers then disagree on the disk (qemu "
                 "refuses a VHD whose footer checksum is wrong; overlapping blocks share their "
                 "bytes, so a write to one changes the other) and a conversion would carry one "
                 "reader's guess into the uploaded disk.",
       source=("VHDSPEC", "QEMU-VPC: vpc_open; docs/formats.md says which problem each "
                                     "reader reports"),
       remediation=DAMAGED,
       passes=[Example("no structure damage")],
       fails=[Example("a footer checksum that does not match", disk={"structure_errors": (
                  StructureError("VHD footer", _FOOTER_AT, "checksum 0x12345678 does not match "
                                 "the computed 0x12345679 (qemu refuses such a file)"),)}),
              Example("two BAT entries whose blocks overlap", disk={
                  "subformat": "dynamic", "footer.disk_type": 3, "footer.data_offset": 512,
                  "structure_errors": (
                      StructureError("VHD BAT", 0x604, "blocks 0 and 1 overlap in the file (at "
                                     "0x40600 and 0x40600)"),)}),
              Example("a fixed VHD whose data is shorter than its current size", disk={
                  "file_size": _FOOTER_AT - MIB + SECTOR, "structure_errors": (
                      StructureError("VHD footer", _FOOTER_AT - MIB, "current_size 4294967296 "
                                     "differs from the 4293918720 bytes of data before the "
                                     "footer"),)})])
def structure(ctx: Context) -> Iterator[Finding]:
    for e in _disk(ctx).structure_errors:
        yield Finding(f"{e.structure}: {e.message}", e.where())


@check(id="disk.vhd.cookie", title="The file ends with a VHD footer ('conectix')",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="Azure reads the last 512 bytes of the page blob as the VHD footer and rejects "
                 "the "
                 "upload with InvalidVhd ('cookie value in VHD footer ... expected conectix') "
                 "when it is missing: raw, VHDX and qcow2 files are refused.",
       source=("MKT", "VHDU", "VHDSPEC"),
       remediation=CONVERT,
       passes=[Example("a fixed VHD")],
       fails=[Example("a damaged cookie", disk={"footer.cookie": b"conectiv"})])
def vhd_cookie(ctx: Context) -> Iterator[Finding]:
    f = _any_footer(ctx)
    if f.cookie != VHD_COOKIE:
        yield Finding(f"footer cookie is {f.cookie!r}, expected {VHD_COOKIE!r}", _at(f, 0),
                      _fix(ctx, None))


@check(id="disk.vhd.checksum", title="The VHD footer checksum is correct",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="The footer checksum is the one's complement of the byte sum of the footer "
                 "without its checksum field; azure-vhd-utils validates it and qemu refuses a VHD "
                 "whose checksum is wrong (U: whether Azure itself enforces it).",
       source=("VHDU", "VHDSPEC"), remediation=CONVERT,
       passes=[Example("a correct checksum")],
       fails=[Example("a footer edited without updating the checksum",
                      disk={"footer.checksum_ok": False})])
def vhd_checksum(ctx: Context) -> Iterator[Finding]:
    f = _footer(ctx)
    if not f.checksum_ok:
        if _reported_as_damage(ctx, "VHD footer"):
            raise NotApplicable("the footer is damaged: disk.structure reports it")
        yield Finding("footer checksum does not match its contents", _at(f, 64), _fix(ctx, None))


@check(id="disk.vhd.version", title="The VHD footer version is 1.0 (0x00010000)",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="The only file format version defined by the VHD specification is 0x00010000; "
                 "azure-vhd-utils rejects other values.",
       source=("VHDU", "VHDSPEC"), remediation=CONVERT,
       passes=[Example("version 1.0")],
       fails=[Example("version 2.0", disk={"footer.version": 0x00020000})])
def vhd_version(ctx: Context) -> Iterator[Finding]:
    f = _footer(ctx)
    if f.version != VHD_VERSION:
        yield Finding(f"footer version is {f.version:#010x}, expected {VHD_VERSION:#010x}",
                      _at(f, 12), _fix(ctx, None))


@check(id="disk.vhd.data-offset", title="A fixed VHD's data offset is 0xFFFFFFFFFFFFFFFF",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="In a fixed VHD the footer's data offset must be all ones (there is no dynamic "
                 "header); azure-vhd-utils checks it.",
       source=("VHDU", "VHDSPEC"), remediation=CONVERT,
       passes=[Example("all ones")],
       fails=[Example("offset 512 on a fixed disk", disk={"footer.data_offset": 512})])
def vhd_data_offset(ctx: Context) -> Iterator[Finding]:
    f = _fixed_footer(ctx)
    if f.data_offset != FIXED_DATA_OFFSET:
        yield Finding(f"data offset is {f.data_offset:#x}, expected 0xffffffffffffffff",
                      _at(f, 16), _fix(ctx, None))


@check(id="disk.vhd.fixed", title="The VHD is fixed (disk type 2)",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="Azure accepts only fixed VHDs; dynamic (3) and differencing (4) VHDs are "
                 "rejected.",
       source=("GEN", "MKT", "VHDU"), remediation=CONVERT,
       passes=[Example("a fixed VHD")],
       fails=[Example("a dynamic VHD", disk={"footer.disk_type": 3, "subformat": "dynamic",
                                            "footer.data_offset": 512})])
def vhd_fixed(ctx: Context) -> Iterator[Finding]:
    f = _footer(ctx)
    if f.disk_type != DISK_TYPE_FIXED:
        yield Finding(f"the VHD is {f.disk_type_name}", _at(f, 60), _convert_fix(ctx))


@check(id="disk.convert.needed", title="The image is already a fixed VHD (no conversion needed)",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="Azure takes a fixed VHD only. qcow2, VHDX, raw and dynamic or differencing "
                 "VHDs must be converted first, to a whole-MiB fixed VHD.",
       source=("GEN", "MKT"), remediation=CONVERT,
       passes=[Example("a fixed VHD")],
       fails=[Example("a qcow2 image", disk={"format": "qcow2", "subformat": "", "footer": None}),
              Example("a dynamic VHD", disk={"footer.disk_type": 3, "subformat": "dynamic"})])
def convert_needed(ctx: Context) -> Iterator[Finding]:
    d = _disk(ctx)
    if d.is_fixed_vhd():
        return
    what = f"{d.format} ({d.subformat})" if d.subformat else d.format
    yield Finding(f"the image is {what}; Azure needs a fixed VHD", d.path, _convert_fix(ctx))


# -- sizes -------------------------------------------------------------------------------------

@check(id="disk.size.current-vs-file", title="File size = current size + 512 (page blob size)",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="The page blob holds the disk data and the 512-byte footer and nothing else: "
                 "the file length must equal current size + 512 and be a multiple of 512; "
                 "--upload-size-bytes must equal the file length.",
       source=("MKT", "UPL"), remediation=CONVERT,
       passes=[Example("file = current + 512")],
       fails=[Example("a footer claiming more than the file holds",
                      disk={"footer.current_size": 8 * GIB}),
              Example("trailing bytes after the data", disk={"file_size": 4 * GIB + 1024})])
def size_current_vs_file(ctx: Context) -> Iterator[Finding]:
    f = _fixed_footer(ctx)
    d = _disk(ctx)
    if d.file_size < f.current_size + SECTOR and _reported_as_damage(ctx, "VHD footer"):
        raise NotApplicable("the data is shorter than the footer says: disk.structure reports it")
    if d.file_size != f.current_size + SECTOR:
        yield Finding(f"file is {d.file_size:,} bytes but current size + 512 is "
                      f"{f.current_size + SECTOR:,}", _at(f, 48), _fix(ctx, None))
    elif d.file_size % SECTOR:
        yield Finding(f"file size {d.file_size:,} is not a multiple of 512", d.path,
                      _fix(ctx, None))


@check(id="disk.size.mib", title="The virtual size is a whole number of MiB",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="Azure refuses 'unsupported virtual size ... The size must be a whole number "
                 "(in MBs)'. qemu-img convert -O vpc without force_size rounds the size to a CHS "
                 "geometry, which is rarely a whole MiB.",
       source=("GEN", "MKT"),
       remediation="vhdtool convert IMAGE OUT.vhd (rounds up to a whole MiB), or: qemu-img resize "
                   "-f raw disk.raw <MiB-multiple> && qemu-img convert -f raw -O vpc "
                   "-o subformat=fixed,force_size disk.raw OUT.vhd",
       passes=[Example("4 GiB")],
       fails=[Example("the CHS-rounded size qemu-img writes without force_size",
                      disk={"footer.current_size": 4 * GIB - 31 * SECTOR,
                            "file_size": 4 * GIB - 30 * SECTOR,
                            "virtual_size": 4 * GIB - 31 * SECTOR})])
def size_mib(ctx: Context) -> Iterator[Finding]:
    f = _footer(ctx)
    if f.current_size % MIB:
        up = -(-f.current_size // MIB) * MIB
        yield Finding(f"current size {f.current_size:,} is not a whole MiB "
                      f"({f.current_size % MIB:,} bytes over; next MiB is {up:,})", _at(f, 48),
                      _convert_fix(ctx))


@check(id="disk.size.limit", title="The size is within Azure's limits for its role and generation",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="A disk must be at least 20 MiB and at most 32 TiB. An OS disk larger than 2 TiB "
                 "boots only as Gen2, and OS disks above 4 TiB are unsupported. Marketplace Linux "
                 "OS disks are 1-1023 GB (taken here as GiB).",
       source=("MKT", "GEN2", "ACG", "ASE-3029"),
       remediation="vhdtool convert IMAGE OUT.vhd after shrinking the filesystem and partitions "
                   "(or register the disk as Gen2: --generation 2)",
       passes=[Example("4 GiB OS disk"),
               Example("a 3 TiB OS disk as Gen2",
                       disk={"footer.current_size": 3 * TIB, "virtual_size": 3 * TIB,
                             "file_size": 3 * TIB + 512},
                       profile={"generations": frozenset({V2})})],
       fails=[Example("a 10 MiB disk", disk={"footer.current_size": 10 * MIB,
                                            "virtual_size": 10 * MIB}),
              Example("a 3 TiB OS disk as Gen1",
                      disk={"footer.current_size": 3 * TIB, "virtual_size": 3 * TIB},
                      profile={"generations": frozenset({V1})}),
              Example("a 2000 GiB Marketplace OS disk",
                      disk={"footer.current_size": 2000 * GIB, "virtual_size": 2000 * GIB},
                      profile={"features": frozenset({"marketplace"}),
                               "generations": frozenset({V2})})])
def size_limit(ctx: Context) -> Iterator[Finding]:
    d = _disk(ctx)
    size = d.footer.current_size if d.footer is not None else d.virtual_size
    if size is None:
        raise NotApplicable("the virtual size is unknown")
    p = ctx.profile
    grow = _fix(ctx, "qemu-img resize -f raw disk.raw <size> && vhdtool convert disk.raw OUT.vhd")
    if size < 20 * MIB:
        yield Finding(f"{size:,} bytes is smaller than the 20 MiB minimum", d.path, grow)
    if size > 32 * TIB:
        yield Finding(f"{size:,} bytes is larger than the 32 TiB maximum", d.path)
    if p.role != "os":
        return
    if size > 4 * TIB:
        yield Finding(f"an OS disk of {size / TIB:.2f} TiB: OS disks above 4 TiB are unsupported",
                      d.path)
    elif size > 2 * TIB and V1 in ctx.generations:
        yield Finding(f"an OS disk of {size / TIB:.2f} TiB needs Gen2, but Gen1 is targeted",
                      d.path, "--generation 2, or shrink the disk below 2 TiB")
    if p.has("marketplace") and not GIB <= size <= 1023 * GIB:
        yield Finding(f"a Marketplace OS disk must be 1-1023 GB; this one is {size / GIB:.1f} GiB",
                      d.path, grow if size < GIB else None)


@check(id="disk.vhd.stale-footer",
       title="The disk's last sector is not another VHD footer (a VHD wrapped twice)",
       severity=Severity.WARNING, needs="disk", applies=OS_AND_DATA,
       rationale="A fixed VHD converted again as if it were raw keeps its old footer as the last "
                 "sector of the new disk: the guest sees 512 stray bytes and the size is one "
                 "sector more than intended.",
       source=("VHDSPEC: U",), remediation="vhdtool convert -f vpc OLD.vhd OUT.vhd",
       passes=[Example("no footer inside the data")],
       fails=[Example("the old footer is the last data sector",
                      disk={"stale_footer_at": 4 * GIB - 512})])
def stale_footer(ctx: Context) -> Iterator[Finding]:
    d = _disk(ctx)
    if d.stale_footer_at is not None:
        yield Finding("the last sector of the disk is itself a valid VHD footer",
                      f"disk offset {d.stale_footer_at:#x}", _fix(ctx, None))


@check(id="disk.vhd.chs-size", title="Every reader sees the same size (CHS vs current size)",
       severity=Severity.WARNING, needs="disk", applies=OS_AND_DATA,
       rationale="Hyper-V and Azure use the footer's current size; Virtual PC and qemu (for "
                 "creators it does not know, unless the geometry is maxed out) use the CHS "
                 "geometry. When they differ, a disk checked or converted with those tools is "
                 "not the disk Azure boots.",
       source=("VHDSPEC", "QEMU-VPC: vpc_open uses the CHS geometry unless it knows the creator or the geometry is maxed out"),
       remediation=CONVERT + " (writes a geometry every reader agrees with)",
       passes=[Example("maxed geometry: every reader uses current size")],
       fails=[Example("qemu 7.2 would read the CHS size",
                      disk={"footer.sizes_by_reader": {"current_size": 4 * GIB,
                                                       "qemu": 4 * GIB - 32 * SECTOR,
                                                       "hyper-v": 4 * GIB}})])
def chs_size(ctx: Context) -> Iterator[Finding]:
    f = _footer(ctx)
    differ = {k: v for k, v in f.sizes_by_reader.items()
              if k != "chs" and v != f.current_size}
    if differ:
        seen = ", ".join(f"{k} {v:,}" for k, v in sorted(differ.items()))
        yield Finding(f"current size is {f.current_size:,} but {seen} (geometry "
                      f"{'/'.join(map(str, f.geometry))})", _at(f, 56), _fix(ctx, None))


@check(id="disk.sector-size", title="The disk uses 512-byte logical sectors",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="A fixed VHD always presents 512-byte sectors. A layout made for 4096-byte "
                 "sectors (e.g. from a 4Kn VHDX) puts the GPT where a 512-byte reader does not "
                 "look, and the disk does not boot.",
       source=("VHDSPEC", "VHDX: section 2.6.2.4, LogicalSectorSize; U"),
       remediation="recreate the partition table for 512-byte sectors, then " + CONVERT,
       passes=[Example("512-byte sectors")],
       fails=[Example("a 4Kn VHDX", disk={"format": "vhdx", "logical_sector_size": 4096})])
def sector_size(ctx: Context) -> Iterator[Finding]:
    d = _disk(ctx)
    if d.logical_sector_size != SECTOR:
        yield Finding(f"logical sector size is {d.logical_sector_size}", d.path, _fix(ctx, None))


# -- the partition layout ----------------------------------------------------------------------

@check(id="disk.part.scheme", title="The OS disk has an MBR or GPT partition table",
       severity=Severity.ERROR, needs="disk",
       rationale="Azure boots the OS disk through BIOS (Gen1, MBR boot code) or UEFI (Gen2, an "
                 "EFI system partition in a GPT); a disk without a partition table boots as "
                 "neither.",
       source=("GEN2", "UEFIB"), remediation="sgdisk -o DISK (then recreate the partitions), "
                                                "or build the image with a partitioned layout",
       passes=[Example("GPT")],
       fails=[Example("no partition table", disk={"scheme": "none", "partitions": ()})])
def part_scheme(ctx: Context) -> Iterator[Finding]:
    d = _disk(ctx)
    if d.scheme is None:
        raise NotApplicable(d.unreadable or "the partition table was not read")
    if d.scheme not in ("mbr", "gpt"):
        yield Finding("no MBR or GPT partition table", "sector 0 and 1")
    for problem in d.table_problems:
        yield Finding(f"partition table: {problem}")


@check(id="disk.part.bounds", title="Every partition lies inside the disk",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="A partition that runs past the end of the disk (typically after the disk was "
                 "shrunk, or rounded down by a converter) loses its last blocks: the filesystem "
                 "is truncated.",
       source=("UEFI: section 5.3, GUID Partition Table; U",),
       remediation="shrink the filesystem and the partition (resize2fs, sgdisk -d/-n), or grow "
                   "the disk: qemu-img resize -f raw disk.raw <size> && " + CONVERT,
       passes=[Example("partitions inside the disk")],
       fails=[Example("root partition past the end",
                      disk={"partitions": with_partition(3, size=4 * GIB)})])
def part_bounds(ctx: Context) -> Iterator[Finding]:
    d = _disk(ctx)
    parts = _partitions(ctx)
    if d.virtual_size is None:
        raise NotApplicable("the virtual size is unknown")
    for p in parts:
        if p.start < 0 or p.end > d.virtual_size:
            yield Finding(f"{p.label()} ends past the disk's end {d.virtual_size:,}",
                          f"partition {p.index}", _fix(ctx, None))


@check(id="disk.part.overlap", title="No two partitions overlap",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="Overlapping partitions share blocks: writing one filesystem corrupts the other.",
       source=("UEFI: section 5.3, GUID Partition Table",), remediation="fix the table with gdisk/fdisk so no ranges overlap",
       passes=[Example("disjoint partitions")],
       fails=[Example("ESP overlaps root", disk={"partitions": with_partition(2, size=200 * MIB)})])
def part_overlap(ctx: Context) -> Iterator[Finding]:
    parts = sorted(_partitions(ctx), key=lambda p: (p.start, p.end))
    for a, b in zip(parts, parts[1:]):
        if b.start < a.end:
            yield Finding(f"{a.label()} overlaps {b.label()}",
                          f"partitions {a.index} and {b.index}")


@check(id="disk.part.first-mib", title="The first MiB holds no partition",
       severity=Severity.WARNING, needs="disk", applies=OS_AND_DATA,
       error_when=("marketplace",),
       rationale="Marketplace certification requires the first 1 MB of the disk to be empty of "
                 "partitions (no partition before LBA 2048); partition tables and boot code may "
                 "stay there (U).",
       source=("MKT",), remediation="recreate the partition starting at 1 MiB: "
                                      "sgdisk -a 2048 -n N:2048:... DISK (after moving data)",
       passes=[Example("first partition at 1 MiB")],
       fails=[Example("a partition at LBA 63",
                      disk={"partitions": with_partition(1, start=63 * 512)})])
def part_first_mib(ctx: Context) -> Iterator[Finding]:
    for p in _partitions(ctx):
        if p.start < MIB:
            yield Finding(f"{p.label()} starts at LBA {p.start // SECTOR}, before LBA 2048",
                          f"partition {p.index}")


@check(id="disk.part.alignment", title="Partitions start on a 1 MiB boundary",
       severity=Severity.INFO, needs="disk", applies=OS_AND_DATA,
       rationale="Azure storage works in 4 KiB pages and larger stripes; partitions aligned to "
                 "1 MiB (the default of every modern partitioner) avoid read-modify-write across "
                 "page boundaries (U).",
       source=("MKT: the 1 MB rule; U",),
       remediation="recreate the partition aligned: sgdisk -a 2048 ... / parted -a optimal ...",
       passes=[Example("aligned partitions")],
       fails=[Example("root at an odd sector",
                      disk={"partitions": with_partition(3, start=128 * MIB + 512 * 7)})])
def part_alignment(ctx: Context) -> Iterator[Finding]:
    for p in _partitions(ctx):
        if p.start % MIB:
            yield Finding(f"{p.label()} starts {p.start % MIB:,} bytes past a MiB boundary",
                          f"partition {p.index}")


@check(id="disk.gpt.backup", title="The backup GPT header sits at the last LBA",
       severity=Severity.WARNING, needs="disk", applies=OS_AND_DATA,
       rationale="After a disk is grown (or rounded up to a whole MiB) the backup GPT header is "
                 "no longer at the last LBA; firmware and tools then report a damaged GPT and "
                 "growpart may refuse to grow the root partition (U).",
       source=("UEFI: section 5.3, GUID Partition Table; U",), remediation="sgdisk -e DISK (move the backup header to the end)",
       passes=[Example("backup at the last LBA"),
               Example("an 8 GiB disk whose backup moved to its end (sgdisk -e)",
                       disk={"virtual_size": 8 * GIB, "gpt_alternate_lba": 8 * GIB // 512 - 1})],
       fails=[Example("disk grown by 1 MiB after partitioning",
                      disk={"gpt_alternate_lba": (4 * GIB - 512) // 512 - 2048}),
              Example("backup header missing", disk={"gpt_backup_found": False})])
def gpt_backup(ctx: Context) -> Iterator[Finding]:
    d = _disk(ctx)
    _partitions(ctx)
    if d.scheme != "gpt":
        raise NotApplicable("the disk is not GPT")
    if d.gpt_alternate_lba != d.last_lba:
        yield Finding(f"the primary header's AlternateLBA is {d.gpt_alternate_lba}, the last LBA "
                      f"is {d.last_lba}", "GPT header @ LBA 1 offset 32")
    elif d.gpt_backup_found is False:
        yield Finding(f"no valid backup GPT header at LBA {d.last_lba}", f"LBA {d.last_lba}")


def _extra(part: PartitionFacts) -> tuple[PartitionFacts, ...]:
    """The baseline partitions with the root shrunk by 1 GiB and ``part`` placed there."""
    root = with_partition(3)[2]
    shrunk = with_partition(3, size=root.size - GIB)
    return shrunk + (part,)


_SWAP_AT = 3 * GIB - MIB


@check(id="disk.part.swap", title="No swap partition on the OS disk",
       severity=Severity.WARNING, needs="disk", error_when=("marketplace",),
       rationale="Swap belongs on the temporary resource disk (waagent ResourceDisk.EnableSwap or "
                 "cloud-init mounts), never on the OS disk; Marketplace test 41 fails an image "
                 "with a swap partition.",
       source=("GEN", "MKT: test 41"),
       remediation="delete the swap partition (sgdisk -d N DISK) and its /etc/fstab line",
       passes=[Example("no swap")],
       fails=[Example("a swap partition",
                      disk={"partitions": _extra(PartitionFacts(
                          4, _SWAP_AT, GIB, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap",
                          fs="swap"))}),
              Example("a Linux partition holding a swap signature",
                      disk={"partitions": with_partition(3, fs="swap")})])
def part_swap(ctx: Context) -> Iterator[Finding]:
    for p in _partitions(ctx):
        if p.type_id in SWAP_TYPES or p.fs == "swap":
            why = "swap partition type" if p.type_id in SWAP_TYPES else "swap signature"
            yield Finding(f"{p.label()}: {why}", f"partition {p.index}",
                          f"sgdisk -d {p.index} DISK; remove its swap line from /etc/fstab")


@check(id="disk.part.lvm", title="No LVM on the OS disk",
       severity=Severity.WARNING, needs="disk",
       rationale="A single root partition is recommended. LVM on the OS disk makes every VM "
                 "created from the image carry the same volume group name, which clashes when "
                 "one VM's OS disk is attached to another (e.g. for repair).",
       source=("MKT: test 42", "GEN"),
       remediation="build the image with a plain root partition, or give the VG a unique name "
                   "at first boot (vgimportclone)",
       passes=[Example("plain partitions")],
       fails=[Example("an LVM PV partition",
                      disk={"partitions": with_partition(3, type_id="E6D6D379-F507-44C2-A23C-"
                                                         "238F2A3DF928", type_name="Linux LVM",
                                                         fs="lvm2")}),
              Example("an LVM2 signature in a Linux partition",
                      disk={"partitions": with_partition(3, fs="lvm2")})])
def part_lvm(ctx: Context) -> Iterator[Finding]:
    for p in _partitions(ctx):
        if p.type_id in LVM_TYPES or p.fs == "lvm2":
            yield Finding(f"{p.label()} is an LVM physical volume", f"partition {p.index}")


# -- what the layout boots ---------------------------------------------------------------------

@check(id="boot.g2.esp", title="An EFI system partition (FAT) is present for Gen2",
       severity=Severity.ERROR, needs="disk", applies=G2,
       rationale="Gen2 VMs boot through UEFI, which loads the boot loader from a FAT-formatted "
                 "EFI system partition; without one the VM shows 'The boot loader did not load "
                 "an operating system' and falls back to PXE.",
       source=("UEFIB", "GEN2", "UEFI: section 5.3, GUID Partition Table"),
       remediation="sgdisk -n 0:0:+100M -t 0:ef00 DISK && mkfs.vfat -F 32 PART && "
                   "grub-install --target=x86_64-efi --removable",
       passes=[Example("a FAT ESP")],
       fails=[Example("no ESP", disk={"partitions": without_partition(2)},
                      profile={"generations": frozenset({V2})}),
              Example("an unformatted ESP", disk={"partitions": with_partition(2, fs=None)},
                      profile={"generations": frozenset({V2})})])
def g2_esp(ctx: Context) -> Iterator[Finding]:
    parts = _partitions(ctx)
    esps = [p for p in parts if p.type_id in ESP_TYPES]
    if not esps:
        yield Finding("no EFI system partition (GPT C12A7328-..., MBR 0xef)", "partition table")
    elif not any(p.fs == "fat" for p in esps):
        yield Finding(f"the EFI system partition holds {esps[0].fs or 'no recognised filesystem'}"
                      ", not FAT", f"partition {esps[0].index}",
                      f"mkfs.vfat -F 32 <partition {esps[0].index}> and reinstall the boot loader")


@check(id="boot.g1.bios", title="The disk is BIOS-bootable for Gen1",
       severity=Severity.ERROR, needs="disk", applies=G1,
       rationale="Gen1 VMs boot through BIOS (PCAT): sector 0 needs boot code and the 0x55AA "
                 "signature, and a GPT disk additionally needs a BIOS boot partition (GUID "
                 "21686148-6449-6E6F-744E-656564454649) for grub's core image.",
       source=("GEN2: Gen1 boots through BIOS, PCAT; details U",),
       remediation="sgdisk -n 0:0:+1M -t 0:ef02 DISK && grub-install --target=i386-pc DISK",
       passes=[Example("boot code + BIOS boot partition"),
               Example("an MBR disk with boot code",
                       disk={"scheme": "mbr", "partitions": without_partition(1)})],
       fails=[Example("no boot code in sector 0", disk={"mbr_boot_code": False},
                      profile={"generations": frozenset({V1})}),
              Example("GPT without a BIOS boot partition",
                      disk={"partitions": without_partition(1)},
                      profile={"generations": frozenset({V1})})])
def g1_bios(ctx: Context) -> Iterator[Finding]:
    d = _disk(ctx)
    _partitions(ctx)
    if not d.mbr_boot_code:
        yield Finding("sector 0 has no boot code (or no 0x55AA signature)", "LBA 0")
    if d.scheme == "gpt" and not any(p.type_id == GPT_BIOS_BOOT for p in d.partitions):
        yield Finding("GPT disk without a BIOS boot partition", "partition table")


@check(id="boot.generation",
       title="The layout boots the Hyper-V generation(s) the image is registered for",
       severity=Severity.ERROR, needs="disk",
       rationale="hyperVGeneration is immutable on the gallery image and the upload disk; a "
                 "mismatch gives 'different Hypervisor generation' or a VM that never boots. "
                 "A hybrid disk (BIOS boot partition + ESP) supports both: register one "
                 "definition per generation.",
       source=("ACG", "GEN2"),
       remediation="pass the generation the disk supports (--generation auto), or add the "
                   "missing boot path (see boot.g1.bios / boot.g2.esp)",
       passes=[Example("hybrid disk, both generations"),
               Example("BIOS-only disk registered as Gen1",
                       disk={"partitions": without_partition(2)},
                       profile={"generations": frozenset({V1})})],
       fails=[Example("BIOS-only disk registered as Gen2",
                      disk={"partitions": without_partition(2)},
                      profile={"generations": frozenset({V2})}),
              Example("UEFI-only disk registered as Gen1",
                      disk={"mbr_boot_code": False}, profile={"generations": frozenset({V1})}),
              Example("Trusted Launch on a BIOS-only disk",
                      disk={"partitions": without_partition(2)},
                      profile={"features": frozenset({"trusted_launch"})})])
def boot_generation(ctx: Context) -> Iterator[Finding]:
    d = _disk(ctx)
    _partitions(ctx)
    supported = supported_generations(d)
    names = "/".join(sorted(supported)) or "none"
    if not supported:
        yield Finding("the layout boots neither Gen1 (BIOS) nor Gen2 (UEFI)", "partition table")
        return
    intended = ctx.profile.generations
    if intended is not None and not intended <= supported:
        missing = "/".join(sorted(intended - supported))
        yield Finding(f"registered for {missing}, but the layout boots {names}",
                      "partition table", f"--generation {_gen_option(supported)}")
    for feature in ("trusted_launch", "nvme"):
        if ctx.profile.has(feature) and V2 not in supported:
            yield Finding(f"{feature.replace('_', ' ')} needs Gen2, but the layout boots {names}",
                          "partition table")


def _gen_option(gens: frozenset[str]) -> str:
    """The --generation value for a non-empty set of generations."""
    if gens == {V1, V2}:
        return "both"
    return "1" if V1 in gens else "2"


__all__ = ["bios_bootable", "supported_generations"]
