"""Disk-level checks on the container: the VHD footer, the conversion, the sizes.

Every check reads only :class:`checks.disk.DiskFacts` (through :mod:`checks.disklib`); the
partition layout and what it boots are checked in :mod:`checks.disk_layout`.  Each check cites its
sources by key of :mod:`checks.sources`; a "U" in a citation marks a design inference that no
source confirmed, which is why those checks are warnings.  The footer fields that must hold one
value are one table (:data:`FOOTER_FIELDS`).

References:
  Virtual Hard Disk Image Format Specification v1.0 (footer: cookie @0, version @12, data offset
  @16, current size @48, geometry @56, disk type @60, checksum @64); Microsoft azure-vhd-utils
  ``vhdcore/validator/validator.go`` (what Azure's own uploader checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .catalog import (V1, V2, Applies, CheckFunc, Context, Example, Finding, NotApplicable,
                      Severity, check)
from .disk import (DISK_TYPE_FIXED, FIXED_DATA_OFFSET, GIB, MIB, SECTOR, TIB, VHD_COOKIE,
                   VHD_VERSION, FooterFacts, StructureError)
from .disklib import (CONVERT, DAMAGED, OS_AND_DATA, any_footer, convert_fix, disk_of,
                      fix_for, fixed_footer, footer_at, reported_as_damage, valid_footer)
from .tables import Row, declare


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
    for e in disk_of(ctx).structure_errors:
        yield Finding(f"{e.structure}: {e.message}", e.where())


@dataclass(frozen=True, kw_only=True)
class FooterField(Row):
    """A footer field that must hold one value (the VHD specification's, azure-vhd-utils')."""

    #: the FooterFacts attribute, the value it must have, its offset in the footer
    attr: str
    expected: Any
    offset: int
    #: the finding, formatted with value=, expected= and footer=
    message: str
    #: the footer this check reads: any (even a damaged cookie), a valid one, a fixed VHD's
    footer: Callable[[Context], FooterFacts] = valid_footer
    #: the finding's fix is the conversion of this very file (None: the remediation)
    convert: bool = False
    #: skip, not fail, when disk.structure already reports damage to this structure
    damage_in: str | None = None
    severity: Severity = Severity.ERROR
    needs: str = "disk"
    applies: Applies = OS_AND_DATA
    remediation: str = CONVERT


FOOTER_FIELDS = (
    FooterField(
        id="disk.vhd.cookie", title="The file ends with a VHD footer ('conectix')",
        rationale="Azure reads the last 512 bytes of the page blob as the VHD footer and rejects "
                  "the upload with InvalidVhd ('cookie value in VHD footer ... expected conectix') "
                  "when it is missing: raw, VHDX and qcow2 files are refused.",
        source=("MKT", "VHDU", "VHDSPEC"),
        passes=(Example("a fixed VHD"),),
        fails=(Example("a damaged cookie", disk={"footer.cookie": b"conectiv"}),),
        attr="cookie", expected=VHD_COOKIE, offset=0, footer=any_footer,
        message="footer cookie is {value!r}, expected {expected!r}"),
    FooterField(
        id="disk.vhd.checksum", title="The VHD footer checksum is correct",
        rationale="The footer checksum is the one's complement of the byte sum of the footer "
                  "without its checksum field; azure-vhd-utils validates it and qemu refuses a "
                  "VHD whose checksum is wrong (U: whether Azure itself enforces it).",
        source=("VHDU", "VHDSPEC"),
        passes=(Example("a correct checksum"),),
        fails=(Example("a footer edited without updating the checksum",
                       disk={"footer.checksum_ok": False}),),
        attr="checksum_ok", expected=True, offset=64, damage_in="VHD footer",
        message="footer checksum does not match its contents"),
    FooterField(
        id="disk.vhd.version", title="The VHD footer version is 1.0 (0x00010000)",
        rationale="The only file format version defined by the VHD specification is 0x00010000; "
                  "azure-vhd-utils rejects other values.",
        source=("VHDU", "VHDSPEC"),
        passes=(Example("version 1.0"),),
        fails=(Example("version 2.0", disk={"footer.version": 0x00020000}),),
        attr="version", expected=VHD_VERSION, offset=12,
        message="footer version is {value:#010x}, expected {expected:#010x}"),
    FooterField(
        id="disk.vhd.data-offset", title="A fixed VHD's data offset is 0xFFFFFFFFFFFFFFFF",
        rationale="In a fixed VHD the footer's data offset must be all ones (there is no dynamic "
                  "header); azure-vhd-utils checks it.",
        source=("VHDU", "VHDSPEC"),
        passes=(Example("all ones"),),
        fails=(Example("offset 512 on a fixed disk", disk={"footer.data_offset": 512}),),
        attr="data_offset", expected=FIXED_DATA_OFFSET, offset=16, footer=fixed_footer,
        message="data offset is {value:#x}, expected {expected:#x}"),
    FooterField(
        id="disk.vhd.fixed", title="The VHD is fixed (disk type 2)",
        rationale="Azure accepts only fixed VHDs; dynamic (3) and differencing (4) VHDs are "
                  "rejected.",
        source=("GEN", "MKT", "VHDU"),
        passes=(Example("a fixed VHD"),),
        fails=(Example("a dynamic VHD", disk={"footer.disk_type": 3, "subformat": "dynamic",
                                             "footer.data_offset": 512}),),
        attr="disk_type", expected=DISK_TYPE_FIXED, offset=60, convert=True,
        message="the VHD is {footer.disk_type_name}"),
)


def _footer_field(row: FooterField) -> CheckFunc:
    def func(ctx: Context) -> Iterator[Finding]:
        f = row.footer(ctx)
        value = getattr(f, row.attr)
        if value == row.expected:
            return
        if row.damage_in and reported_as_damage(ctx, row.damage_in):
            raise NotApplicable("the footer is damaged: disk.structure reports it")
        yield Finding(row.message.format(value=value, expected=row.expected, footer=f),
                      footer_at(f, row.offset),
                      convert_fix(ctx) if row.convert else fix_for(ctx, None))
    return func


declare(FOOTER_FIELDS, _footer_field)


@check(id="disk.convert.needed", title="The image is already a fixed VHD (no conversion needed)",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="Azure takes a fixed VHD only. qcow2, VHDX, raw and dynamic or differencing "
                 "VHDs must be converted first, to a whole-MiB fixed VHD.",
       source=("GEN", "MKT"), remediation=CONVERT,
       passes=[Example("a fixed VHD")],
       fails=[Example("a qcow2 image", disk={"format": "qcow2", "subformat": "", "footer": None}),
              Example("a dynamic VHD", disk={"footer.disk_type": 3, "subformat": "dynamic"})])
def convert_needed(ctx: Context) -> Iterator[Finding]:
    d = disk_of(ctx)
    if d.is_fixed_vhd():
        return
    what = f"{d.format} ({d.subformat})" if d.subformat else d.format
    yield Finding(f"the image is {what}; Azure needs a fixed VHD", d.path, convert_fix(ctx))


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
    f = fixed_footer(ctx)
    d = disk_of(ctx)
    if d.file_size < f.current_size + SECTOR and reported_as_damage(ctx, "VHD footer"):
        raise NotApplicable("the data is shorter than the footer says: disk.structure reports it")
    if d.file_size != f.current_size + SECTOR:
        yield Finding(f"file is {d.file_size:,} bytes but current size + 512 is "
                      f"{f.current_size + SECTOR:,}", footer_at(f, 48), fix_for(ctx, None))
    elif d.file_size % SECTOR:
        yield Finding(f"file size {d.file_size:,} is not a multiple of 512", d.path,
                      fix_for(ctx, None))


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
    f = valid_footer(ctx)
    if f.current_size % MIB:
        up = -(-f.current_size // MIB) * MIB
        yield Finding(f"current size {f.current_size:,} is not a whole MiB "
                      f"({f.current_size % MIB:,} bytes over; next MiB is {up:,})",
                      footer_at(f, 48),
                      convert_fix(ctx))


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
    d = disk_of(ctx)
    size = d.footer.current_size if d.footer is not None else d.virtual_size
    if size is None:
        raise NotApplicable("the virtual size is unknown")
    p = ctx.profile
    grow = fix_for(ctx, "qemu-img resize -f raw disk.raw <size> && "
                        "vhdtool convert disk.raw OUT.vhd")
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
    d = disk_of(ctx)
    if d.stale_footer_at is not None:
        yield Finding("the last sector of the disk is itself a valid VHD footer",
                      f"disk offset {d.stale_footer_at:#x}", fix_for(ctx, None))


@check(id="disk.vhd.chs-size", title="Every reader sees the same size (CHS vs current size)",
       severity=Severity.WARNING, needs="disk", applies=OS_AND_DATA,
       rationale="Hyper-V and Azure use the footer's current size; Virtual PC and qemu (for "
                 "creators it does not know, unless the geometry is maxed out) use the CHS "
                 "geometry. When they differ, a disk checked or converted with those tools is "
                 "not the disk Azure boots.",
       source=("VHDSPEC", "QEMU-VPC: vpc_open uses the CHS geometry unless it knows the creator "
                          "or the geometry is maxed out"),
       remediation=CONVERT + " (writes a geometry every reader agrees with)",
       passes=[Example("maxed geometry: every reader uses current size")],
       fails=[Example("qemu 7.2 would read the CHS size",
                      disk={"footer.sizes_by_reader": {"current_size": 4 * GIB,
                                                       "qemu": 4 * GIB - 32 * SECTOR,
                                                       "hyper-v": 4 * GIB}})])
def chs_size(ctx: Context) -> Iterator[Finding]:
    f = valid_footer(ctx)
    differ = {k: v for k, v in f.sizes_by_reader.items()
              if k != "chs" and v != f.current_size}
    if differ:
        seen = ", ".join(f"{k} {v:,}" for k, v in sorted(differ.items()))
        yield Finding(f"current size is {f.current_size:,} but {seen} (geometry "
                      f"{'/'.join(map(str, f.geometry))})", footer_at(f, 56), fix_for(ctx, None))


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
    d = disk_of(ctx)
    if d.logical_sector_size != SECTOR:
        yield Finding(f"logical sector size is {d.logical_sector_size}", d.path, fix_for(ctx, None))
