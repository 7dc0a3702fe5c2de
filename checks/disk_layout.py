"""Disk-level checks on the partition layout and on what it boots (Gen1 BIOS, Gen2 UEFI).

Every check reads only :class:`checks.disk.DiskFacts` (through :mod:`checks.disklib`); the
container and its sizes are checked in :mod:`checks.disk_checks`.  A "U" in a citation marks a
design inference that no source confirmed, which is why those checks are warnings.

References:
  UEFI 2.x section 5.3 (GPT); the Azure generation 2 and Marketplace pages cited by key of
  :mod:`checks.sources`.
"""

from __future__ import annotations

from collections.abc import Iterator

from .catalog import V1, V2, Context, Example, Finding, NotApplicable, Severity, check
from .disk import (ESP_TYPES, GIB, GPT_BIOS_BOOT, LVM_TYPES, MIB, SECTOR, SWAP_TYPES,
                   PartitionFacts, supported_generations, with_partition, without_partition)
from .disklib import CONVERT, G1, G2, OS_AND_DATA, disk_of, fix_for, partitions_of

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
    d = disk_of(ctx)
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
    d = disk_of(ctx)
    parts = partitions_of(ctx)
    if d.virtual_size is None:
        raise NotApplicable("the virtual size is unknown")
    for p in parts:
        if p.start < 0 or p.end > d.virtual_size:
            yield Finding(f"{p.label()} ends past the disk's end {d.virtual_size:,}",
                          f"partition {p.index}", fix_for(ctx, None))


@check(id="disk.part.overlap", title="No two partitions overlap",
       severity=Severity.ERROR, needs="disk", applies=OS_AND_DATA,
       rationale="Overlapping partitions share blocks: writing one filesystem corrupts the other.",
       source=("UEFI: section 5.3, GUID Partition Table",),
       remediation="fix the table with gdisk/fdisk so no ranges overlap",
       passes=[Example("disjoint partitions")],
       fails=[Example("ESP overlaps root", disk={"partitions": with_partition(2, size=200 * MIB)})])
def part_overlap(ctx: Context) -> Iterator[Finding]:
    parts = sorted(partitions_of(ctx), key=lambda p: (p.start, p.end))
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
    for p in partitions_of(ctx):
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
    for p in partitions_of(ctx):
        if p.start % MIB:
            yield Finding(f"{p.label()} starts {p.start % MIB:,} bytes past a MiB boundary",
                          f"partition {p.index}")


@check(id="disk.gpt.backup", title="The backup GPT header sits at the last LBA",
       severity=Severity.WARNING, needs="disk", applies=OS_AND_DATA,
       rationale="After a disk is grown (or rounded up to a whole MiB) the backup GPT header is "
                 "no longer at the last LBA; firmware and tools then report a damaged GPT and "
                 "growpart may refuse to grow the root partition (U).",
       source=("UEFI: section 5.3, GUID Partition Table; U",),
       remediation="sgdisk -e DISK (move the backup header to the end)",
       passes=[Example("backup at the last LBA"),
               Example("an 8 GiB disk whose backup moved to its end (sgdisk -e)",
                       disk={"virtual_size": 8 * GIB, "gpt_alternate_lba": 8 * GIB // 512 - 1})],
       fails=[Example("disk grown by 1 MiB after partitioning",
                      disk={"gpt_alternate_lba": (4 * GIB - 512) // 512 - 2048}),
              Example("backup header missing", disk={"gpt_backup_found": False})])
def gpt_backup(ctx: Context) -> Iterator[Finding]:
    d = disk_of(ctx)
    partitions_of(ctx)
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
    for p in partitions_of(ctx):
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
    for p in partitions_of(ctx):
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
    parts = partitions_of(ctx)
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
    d = disk_of(ctx)
    partitions_of(ctx)
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
    d = disk_of(ctx)
    partitions_of(ctx)
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

