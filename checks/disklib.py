"""What the disk checks share: the subjects they read (footer, partitions) and the fixes they give.

The subject getters raise :class:`~checks.catalog.NotApplicable` with the reason when the subject
is absent (no VHD footer, a damaged cookie, a dynamic VHD, no partition table); the fix helpers
put "repair the damage first" in place of any other fix on a damaged image (disk.structure).
The checks themselves are in :mod:`checks.disk_checks` (the container, its sizes) and
:mod:`checks.disk_layout` (the partition layout and what it boots).
"""

from __future__ import annotations

from .catalog import V1, V2, Applies, Context, NotApplicable
from .disk import DISK_TYPE_FIXED, VHD_COOKIE, DiskFacts, FooterFacts, PartitionFacts

CONVERT = "vhdtool convert IMAGE OUT.vhd"
#: the fix for a damaged container (disk.structure), and for every finding on such an image
DAMAGED = ("the image's own structure is damaged: re-export or rebuild it from its source (the "
           "hypervisor that owns the disk, the build pipeline), or repair a copy where a repair "
           "tool exists (qemu-img check -r all -f qcow2|vhdx COPY), then check it again; "
           "converting a damaged image copies the damage")
#: the fix of every other finding on a damaged image
REPAIR_FIRST = ("first repair the damage disk.structure reports (converting a damaged image "
                "copies it)")
OS_AND_DATA = Applies(roles=frozenset({"os", "data"}))
G1 = Applies(generations=frozenset({V1}))
G2 = Applies(generations=frozenset({V2}))


def disk_of(ctx: Context) -> DiskFacts:
    facts: DiskFacts = ctx.disk
    return facts


def any_footer(ctx: Context) -> FooterFacts:
    """The footer, even with a damaged cookie; a raw, qcow2 or VHDX file has none, and
    disk.convert.needed says so, with the command that fixes it."""
    d = disk_of(ctx)
    if d.footer is None:
        raise NotApplicable(f"the image is {d.format}: no VHD footer (see disk.convert.needed)")
    return d.footer


def valid_footer(ctx: Context) -> FooterFacts:
    """The footer, when its cookie is intact."""
    f = any_footer(ctx)
    if f.cookie != VHD_COOKIE:
        raise NotApplicable("the VHD footer's cookie is damaged (see disk.vhd.cookie)")
    return f


def fixed_footer(ctx: Context) -> FooterFacts:
    """The footer of a fixed VHD."""
    f = valid_footer(ctx)
    if f.disk_type != DISK_TYPE_FIXED:
        raise NotApplicable(f"the VHD is {f.disk_type_name}, not fixed (see disk.vhd.fixed)")
    return f


def partitions_of(ctx: Context) -> tuple[PartitionFacts, ...]:
    d = disk_of(ctx)
    if d.scheme is None:
        raise NotApplicable(d.unreadable or "the partition table was not read")
    if d.scheme == "none":
        raise NotApplicable("the disk has no partition table")
    return d.partitions


def fix_for(ctx: Context, fix: str | None) -> str | None:
    """A finding's fix: ``fix`` (None: the check's remediation), unless the container is damaged
    (disk.structure fails): then repairing it comes first, and converting is no fix."""
    return REPAIR_FIRST if disk_of(ctx).structure_errors else fix


def convert_fix(ctx: Context) -> str | None:
    return fix_for(ctx, f"vhdtool convert {disk_of(ctx).path} OUT.vhd")


def reported_as_damage(ctx: Context, structure: str) -> bool:
    """disk.structure already reports an error in ``structure`` (don't report it twice)."""
    return any(e.structure == structure for e in disk_of(ctx).structure_errors)


def footer_at(f: FooterFacts, field_offset: int) -> str:
    """The evidence for a footer field: its offset in the file."""
    return f"footer @ {f.offset + field_offset:#x}"
