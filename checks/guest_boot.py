"""Guest checks: kernel command line, drivers, architecture, EFI fallback loader, fstab and swap.

The kernel arguments required on every command line are one table (:data:`CMDLINE_ARGS`), the
driver sets every kernel needs another (:data:`DRIVERS`).

References:
  - :mod:`checks.sources`: the Azure "Prepare a Linux VHD" guide (GEN), the Marketplace
    certification tests (MKT), Hyper-V driver notes (HVD), the NVMe guide (NVME), Accelerated
    Networking / MANA docs (AN, MANA), Ubuntu's guide (UBU).
  - UEFI specification 2.10 section 3.5.1 (removable-media path ``\\EFI\\BOOT\\BOOTX64.EFI``,
    ``BOOTAA64.EFI``).
  - fstab(5), swapon(8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .catalog import (GENERALIZED, V2, Applies, CheckFunc, Context, Example, Finding,
                      NotApplicable, Severity, check)
from .examples import INITRD, INITRD_MODULES, KVER, MODS, elf, initrd, modules_dep
from . import fixes_boot as fx
from .guest import fs_index
from .guestlib import (disabled_findings, guest, has_arg, kernel_modules, missing_at_boot,
                       missing_installed, require_cmdlines)
from .tables import Row, declare

GRUB_CFG = "/boot/grub/grub.cfg"
DEFAULT_GRUB = "/etc/default/grub"
MP = frozenset({"marketplace"})
NVME = frozenset({"nvme"})
AN = frozenset({"accelerated_networking"})


def _grub_with(cmdline: str) -> dict[str, str]:
    return {GRUB_CFG: f"menuentry 'Debian' {{\n\tlinux\t/boot/vmlinuz-{KVER} root=/dev/sda1 ro "
                      f"{cmdline}\n}}\n",
            DEFAULT_GRUB: f'GRUB_CMDLINE_LINUX="{cmdline}"\n'}


#: Debian's systemd-boot: no GRUB, a BLS type-1 entry on the ESP (kernel-install, entry token
#: "debian"); the command line is in its ``options`` lines (concatenated) only
BLS_ESP_ENTRY = f"/boot/efi/loader/entries/debian-{KVER}.conf"


def _systemd_boot(*options: str) -> dict[str, str | None]:
    return {GRUB_CFG: None, DEFAULT_GRUB: None, "/boot/efi/EFI/debian/grub.cfg": None,
            BLS_ESP_ENTRY: f"title Debian GNU/Linux 12 (bookworm)\nversion {KVER}\n"
                           + "".join(f"options {o}\n" for o in options)
                           + f"linux /debian/{KVER}/linux\ninitrd /debian/{KVER}/initrd.img-{KVER}\n"}


#: Ubuntu's cloud images: the console in a grub.d drop-in, the recovery entry without it
CLOUDIMG_CFG = "/etc/default/grub.d/50-cloudimg-settings.cfg"
UBUNTU_GRUB = {
    DEFAULT_GRUB: 'GRUB_DEFAULT=0\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo '
                  'Debian`\nGRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\nGRUB_CMDLINE_LINUX=""\n',
    CLOUDIMG_CFG: '# CLOUD_IMG: This file was created/modified by the Cloud Image build process\n'
                  'GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 console=ttyS0"\nGRUB_TIMEOUT=0\n',
    GRUB_CFG: f"menuentry 'Ubuntu' {{\n\tlinux\t/boot/vmlinuz-{KVER} root=/dev/sda1 ro "
              "console=tty1 console=ttyS0\n}\nsubmenu 'Advanced options for Ubuntu' {\n"
              f"\tmenuentry 'Ubuntu, with Linux {KVER} (recovery mode)' {{\n"
              f"\t\tlinux\t/boot/vmlinuz-{KVER} root=/dev/sda1 ro recovery nomodeset\n\t}}\n}}\n"}


@check(id="guest.opened", title="The guest was opened, so the guest checks ran",
       severity=Severity.ERROR, needs="disk",
       rationale="An OS disk whose guest cannot be read (no Linux root filesystem holding "
                 "/etc/fstab, a filesystem the engines cannot mount, an appliance that never "
                 "started) has had none of its guest checks run; a gate must not pass it as if "
                 "it had. An OS disk without a Linux root does not boot on Azure either.",
       source=("GEN: the guest checks need a readable root",),
       remediation="Check the disk holds the OS (the root filesystem with /etc/fstab); see the "
                   "reason; --no-guest runs the disk-level checks only, deliberately.",
       passes=[Example("the guest engine opened the Debian root")],
       fails=[Example("a disk with no Linux root", unopened="disk.raw: no Linux root filesystem "
                      "found on the disk"),
              Example("the appliance did not start in time",
                      unopened="libguestfs appliance did not start within 300 s")])
def guest_opened(ctx: Context) -> list[Finding]:
    if not ctx.guest_requested:
        raise NotApplicable(ctx.guest_skip_reason)
    if ctx.guest is not None:
        return []
    path = getattr(ctx.disk, "path", None)
    return [Finding(f"the guest checks could not run: {ctx.guest_skip_reason}", path,
                    fix="see the reason; vhdtool check --no-guest IMAGE for the disk-level "
                        "checks only")]


@dataclass(frozen=True, kw_only=True)
class KernelArgs(Row):
    """Arguments every kernel command line the bootloader passes must carry."""

    #: (name, value) pairs; a None value: the bare name
    args: tuple[tuple[str, str | None], ...]


CMDLINE_ARGS = (
    KernelArgs(
        id="guest.cmdline.console", title="The kernel logs to the serial console",
        severity=Severity.WARNING, error_when=MP,
        rationale="console=ttyS0 sends kernel and boot messages to the serial console, the only "
                  "view of a VM that does not boot (boot diagnostics, serial console). Judged on "
                  "the default grub.cfg entries and on GRUB_CMDLINE_LINUX[_DEFAULT] as "
                  "grub-mkconfig composes them from /etc/default/grub and grub.d/*.cfg, and on "
                  "the options of BLS entries (systemd-boot; on the ESP or /boot).",
        source=("MKT: test 40", "GEN", "BLS"),
        remediation="Add console=ttyS0 to GRUB_CMDLINE_LINUX in /etc/default/grub (or where a "
                    "/etc/default/grub.d/*.cfg drop-in sets it last) and regenerate grub.cfg "
                    "(update-grub / grub2-mkconfig).",
        passes=(Example("console=ttyS0,115200 on both",
                        files=_grub_with("console=ttyS0,115200")),
                Example("Ubuntu cloud image: in GRUB_CMDLINE_LINUX_DEFAULT of "
                        "grub.d/50-cloudimg-settings.cfg", files=UBUNTU_GRUB),
                Example("systemd-boot: in the second options line of the BLS entry on the ESP",
                        files=_systemd_boot("root=UUID=x ro", "console=tty1 console=ttyS0"))),
        fails=(Example("grub.cfg regenerated without it",
                       files={GRUB_CFG: f"menuentry 'x' {{\n\tlinux\t/boot/vmlinuz-{KVER} ro "
                                        "quiet\n}\n"}),
               Example("only tty0", files=_grub_with("console=tty0")),
               Example("a later grub.d file sets GRUB_CMDLINE_LINUX_DEFAULT without it",
                       files={**UBUNTU_GRUB, "/etc/default/grub.d/99-local.cfg":
                              'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'}),
               Example("systemd-boot: the BLS entry on the ESP without it",
                       files=_systemd_boot("root=UUID=x ro quiet"))),
        args=(("console", "ttyS0"),)),
    KernelArgs(
        id="guest.cmdline.rootdelay", title="earlyprintk=ttyS0 and rootdelay=300 are set",
        severity=Severity.WARNING, applies=Applies(features=MP),
        rationale="The Marketplace certification expects earlyprintk=ttyS0 and rootdelay=300 on "
                  "the kernel command line.",
        source=("MKT", "GEN"),
        remediation="Add 'earlyprintk=ttyS0 rootdelay=300' to GRUB_CMDLINE_LINUX and "
                    "regenerate.",
        passes=(Example("baseline", profile={"features": MP}),),
        fails=(Example("missing", files=_grub_with("console=ttyS0"), profile={"features": MP}),),
        args=(("earlyprintk", "ttyS0"), ("rootdelay", "300"))),
    KernelArgs(
        id="guest.cmdline.nvme-timeout", title="nvme_core.io_timeout=240 is set",
        severity=Severity.WARNING, applies=Applies(features=NVME),
        rationale="Azure NVMe disks can pause I/O for servicing; the default 30 s timeout makes "
                  "the kernel fail I/O and remount read-only.",
        source=("NVME", "RHEL", "UBU", "AVU"),
        remediation="Add nvme_core.io_timeout=240 to GRUB_CMDLINE_LINUX and regenerate.",
        passes=(Example("baseline", profile={"features": NVME}),),
        fails=(Example("missing", files=_grub_with("console=ttyS0"),
                       profile={"features": NVME}),),
        args=(("nvme_core.io_timeout", "240"),)),
)


def _kernel_args(row: KernelArgs) -> CheckFunc:
    def func(ctx: Context) -> list[Finding]:
        out = []
        for c in require_cmdlines(ctx):
            missing = [f"{n}={v}" if v else n for n, v in row.args if not has_arg(c.args, n, v)]
            if missing:
                out.append(Finding(f"{c.what} lacks {' '.join(missing)}", c.evidence,
                                   fix=f"add {' '.join(missing)} to {c.what} in {c.path}"))
        return out
    return func


declare([replace(row, fix=fx.cmdline_fix(row.args)) for row in CMDLINE_ARGS],
        _kernel_args)


@check(id="guest.drivers.blacklist", title="Hyper-V drivers are not disabled",
       severity=Severity.ERROR,
       rationale="A 'blacklist hv_*' or 'install hv_* /bin/true' line in modprobe.d stops the "
                 "Hyper-V drivers from loading.",
       source=("HVD",),
       remediation="Remove the lines from /etc/modprobe.d.",
       passes=[Example("unrelated blacklist",
                       files={"/etc/modprobe.d/bl.conf": "blacklist floppy\n"})],
       fails=[Example("hv_netvsc blacklisted",
                      files={"/etc/modprobe.d/bl.conf": "# x\nblacklist hv_netvsc\n"}),
              Example("hv_storvsc installed as /bin/true",
                      files={"/lib/modprobe.d/cis.conf": "install hv_storvsc /bin/true\n"})],
       fix=fx.REENABLE)
def drivers_blacklist(ctx: Context) -> list[Finding]:
    return disabled_findings(ctx, lambda m: m.startswith("hv_") or m == "pci_hyperv")


@dataclass(frozen=True, kw_only=True)
class Drivers(Row):
    """Kernel modules every kernel of the guest needs."""

    modules: tuple[str, ...]
    #: True: built in or in the initramfs (the root disk needs them); False: installed (built in
    #: or a module file) and not disabled by a modprobe rule
    at_boot: bool


DRIVERS = (
    Drivers(
        id="guest.drivers.hyperv-initramfs", title="Hyper-V drivers load at boot for every kernel",
        severity=Severity.ERROR,
        rationale="Without hv_vmbus and hv_storvsc built in or in the initramfs, the kernel "
                  "cannot see its root disk on Hyper-V and the VM does not boot; hv_netvsc gives "
                  "it a NIC.",
        source=("GEN", "HVD"),
        remediation="Add hv_vmbus, hv_storvsc, hv_netvsc to /etc/initramfs-tools/modules "
                    "(dracut: add_drivers+=) and rebuild the initramfs of every kernel.",
        passes=(Example("built in instead", files={
            INITRD: initrd(()),
            f"/lib/modules/{KVER}/modules.builtin":
                "".join(f"kernel/{m}\n" for m in INITRD_MODULES)}),),
        fails=(Example("initramfs built with MODULES=dep on another host",
                       files={INITRD: initrd(("drivers/ata/ahci.ko",))}),
               Example("no initramfs", files={INITRD: None})),
        modules=("hv_vmbus", "hv_storvsc", "hv_netvsc"), at_boot=True,
        fix=fx.initramfs_fix(("hv_vmbus", "hv_storvsc", "hv_netvsc"), "hyperv")),
    Drivers(
        id="guest.drivers.udf", title="udf and vfat are available", severity=Severity.ERROR,
        rationale="Azure hands the provisioning data (ovf-env.xml) over a UDF-formatted virtual "
                  "DVD, and the ESP is vfat: without udf provisioning fails (cloud-init >= 21.2 "
                  "tolerates it only for SSH-key logins without customData); without vfat boot "
                  "fails. CIS hardening often adds 'install udf /bin/true'.",
        source=("GEN",),
        remediation="Remove 'install udf /bin/true' / 'blacklist udf|vfat' lines; install the "
                    "kernel's filesystem modules.",
        passes=(Example("udf built in", files={
            f"{MODS}/fs/udf/udf.ko": None,
            f"/lib/modules/{KVER}/modules.builtin": "kernel/fs/udf/udf.ko\n"
                                                    "kernel/drivers/nvme/host/nvme.ko\n"
                                                    "kernel/drivers/nvme/host/nvme-core.ko\n"}),),
        fails=(Example("CIS hardening disables udf",
                       files={"/etc/modprobe.d/CIS.conf": "install udf /bin/true\n"}),
               Example("udf missing", files=modules_dep("udf"))),
        modules=("udf", "vfat"), at_boot=False, fix=fx.REENABLE),
    Drivers(
        id="guest.drivers.cdrom", title="The CD-ROM driver is available",
        severity=Severity.WARNING, applies=Applies(os_states=frozenset({GENERALIZED})),
        rationale="The provisioning ISO is attached as a virtual CD-ROM; sr_mod and cdrom read "
                  "it.",
        source=("DOCS-12407",),
        remediation="Install the kernel's SCSI CD-ROM modules (sr_mod, cdrom).",
        passes=(Example("baseline"),),
        fails=(Example("sr_mod disabled",
                       files={"/etc/modprobe.d/x.conf": "blacklist sr_mod\n"}),),
        modules=("sr_mod", "cdrom"), at_boot=False, fix=fx.REENABLE),
    Drivers(
        id="guest.drivers.nvme", title="NVMe drivers load at boot", severity=Severity.ERROR,
        applies=Applies(features=NVME),
        rationale="On NVMe-interface VM sizes the OS disk is an NVMe namespace: nvme and "
                  "nvme_core must be built in or in the initramfs of every kernel.",
        source=("NVME", "RHEL", "UBU"),
        remediation="Add nvme and nvme_core to the initramfs (initramfs-tools modules / dracut "
                    "add_drivers+=) and rebuild it.",
        passes=(Example("built in (baseline)", profile={"features": NVME}),
                Example("in the initramfs", profile={"features": NVME}, files={
                    f"/lib/modules/{KVER}/modules.builtin": "",
                    INITRD: initrd(INITRD_MODULES + ("drivers/nvme/host/nvme.ko",
                                                     "drivers/nvme/host/nvme-core.ko"))})),
        fails=(Example("neither", profile={"features": NVME},
                       files={f"/lib/modules/{KVER}/modules.builtin": ""}),
               Example("modules installed, not in the initramfs", profile={"features": NVME},
                       files={f"/lib/modules/{KVER}/modules.builtin": "",
                              **modules_dep("\0", ("drivers/nvme/host/nvme.ko",
                                                    "drivers/nvme/host/nvme-core.ko"))})),
        modules=("nvme", "nvme_core"), at_boot=True,
        fix=fx.initramfs_fix(("nvme", "nvme_core"), "nvme")),
    Drivers(
        id="guest.drivers.mana", title="Accelerated Networking drivers are installed",
        severity=Severity.WARNING, applies=Applies(features=AN),
        rationale="Accelerated Networking passes a Mellanox (mlx4/mlx5) or MANA virtual function "
                  "through pci-hyperv; without the drivers the VM silently falls back to the "
                  "synthetic NIC. Mellanox drivers are still needed on MANA hosts.",
        source=("AN", "MANA"),
        remediation="Install a kernel with mana, mlx4_en, mlx5_core and pci-hyperv.",
        passes=(Example("baseline", profile={"features": AN}),),
        fails=(Example("no MANA driver", profile={"features": AN}, files=modules_dep("mana")),),
        modules=("mana", "mlx4_en", "mlx4_core", "mlx5_core", "pci_hyperv"), at_boot=False),
)


def _drivers(row: Drivers) -> CheckFunc:
    def func(ctx: Context) -> list[Finding]:
        if row.at_boot:
            return [f for km in kernel_modules(ctx) if (f := missing_at_boot(km, row.modules))]
        out = [f for km in kernel_modules(ctx) if (f := missing_installed(km, row.modules))]
        return out + disabled_findings(ctx, lambda m: m in row.modules)
    return func


declare(DRIVERS, _drivers)


ARCHES = ("x86_64", "aarch64")


@check(id="guest.arch", title="The guest is 64-bit x86_64 or aarch64", severity=Severity.ERROR,
       rationale="Azure runs x86_64 and Arm64 guests only.",
       source=("MKT: test 49",),
       remediation="Build the image for x86_64 (amd64) or aarch64 (arm64).",
       passes=[Example("baseline")],
       fails=[Example("32-bit userland", files={
           "/usr/lib/systemd/systemd": elf(1, 0x03)})])
def guest_arch(ctx: Context) -> list[Finding]:
    arch = guest(ctx).facts.arch
    if arch is None:
        raise NotApplicable("no ELF init/systemd/sh found to tell the architecture")
    if arch not in ARCHES:
        return [Finding(f"guest architecture is {arch}",
                        "/usr/lib/systemd/systemd (ELF e_machine)")]
    return []


ESP_DIRS = ("/boot/efi", "/efi", "/boot")


def efi_fallback_path(ctx: Context) -> tuple[str, str]:
    """(expected path, loader name) of the removable-media loader on the mounted ESP."""
    g = guest(ctx)
    name = "BOOTAA64.EFI" if g.facts.arch == "aarch64" else "BOOTX64.EFI"
    for esp in ESP_DIRS:
        for d in g.list_dir(f"{esp}/EFI"):
            if d.upper() == "BOOT":
                for f in g.list_dir(f"{esp}/EFI/{d}"):
                    if f.upper() == name:
                        return f"{esp}/EFI/{d}/{f}", name
    return "", name


@check(id="guest.efi.fallback", title="The ESP has the removable-media boot loader",
       severity=Severity.ERROR, applies=Applies(generations=frozenset({V2})),
       rationale="Hyper-V Gen2 firmware has no boot entries for a new VM: it boots "
                 "\\EFI\\BOOT\\BOOTX64.EFI (BOOTAA64.EFI on Arm64) from the ESP.",
       source=("UBU", "UEFI: section 3.5.1, removable media boot path"),
       remediation="Install the loader to the removable path (grub-install --removable, or "
                   "copy shimx64.efi to EFI/BOOT/BOOTX64.EFI with grubx64.efi next to it).",
       passes=[Example("lower-case name on FAT", files={
           "/boot/efi/EFI/BOOT": None, "/boot/efi/EFI/boot/bootx64.efi": b"MZ"})],
       fails=[Example("vendor directory only", files={"/boot/efi/EFI/BOOT": None})],
       fix=fx.efi_fallback_fix(ESP_DIRS, efi_fallback_path))
def efi_fallback(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    if not any(g.is_dir(f"{esp}/EFI") for esp in ESP_DIRS):
        return [Finding("no EFI system partition mounted (no /boot/efi/EFI)", "/etc/fstab")]
    path, name = efi_fallback_path(ctx)
    if not path:
        return [Finding(f"no EFI/BOOT/{name} on the ESP", "/boot/efi/EFI")]
    return []


SWAPFILES = ("/swapfile", "/swap.img", "/swap/swapfile", "/var/swap")


@check(id="guest.swap", title="No swap on the OS disk", severity=Severity.WARNING,
       error_when=("marketplace",),
       rationale="Swap belongs on the temporary resource disk (cloud-init or waagent set it up); "
                 "swap on the OS disk wears premium storage and fails Marketplace certification.",
       source=("GEN", "UBU", "MKT: test 41"),
       remediation="Remove the swap line from /etc/fstab and the swap file; configure swap on "
                   "the resource disk with cloud-init (mounts/swap) or waagent.",
       passes=[Example("commented-out swap line",
                       files={"/etc/fstab": "UUID=6f0e3d1c-2a4b-4c5d-8e9f-0a1b2c3d4e5f / ext4 "
                              "defaults 0 1\n#/swapfile none swap sw 0 0\n"})],
       fails=[Example("swap file in fstab", files={
           "/etc/fstab": "UUID=6f0e3d1c-2a4b-4c5d-8e9f-0a1b2c3d4e5f / ext4 defaults 0 1\n"
                         "/swapfile none swap sw 0 0\n", "/swapfile": b"\0" * 64}),
           Example("leftover swap file", files={"/swap.img": b"\0" * 64})],
       fix=fx.SWAP)
def swap(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    out = [Finding(f"swap entry {e.spec} in fstab", f"/etc/fstab:{e.line}",
                   fix=f"remove line {e.line} of /etc/fstab")
           for e in g.facts.fstab if e.fstype == "swap"]
    out += [Finding(f"swap file {p} on the OS disk", p, fix=f"delete {p}")
            for p in SWAPFILES if g.is_file(p)]
    return out


UNSTABLE = re.compile(r"^/dev/(sd[a-z]+|hd[a-z]+|vd[a-z]+|xvd[a-z]+|nvme\d+n\d+)(p?\d+)?$")


@check(id="guest.fstab.stable-names", title="fstab names filesystems by UUID, LABEL or PARTUUID",
       severity=Severity.WARNING, error_when=("nvme",),
       rationale="Kernel device names (/dev/sda1, /dev/nvme0n1p1) change between VM sizes and "
                 "between SCSI and NVMe; the VM then drops to emergency mode.",
       source=("RHEL", "UBU", "NVME"),
       remediation="Use UUID=, LABEL=, PARTUUID= or /dev/disk/by-* in /etc/fstab.",
       passes=[Example("by-uuid link", files={"/etc/fstab": "/dev/disk/by-uuid/"
                       "6f0e3d1c-2a4b-4c5d-8e9f-0a1b2c3d4e5f / ext4 defaults 0 1\n"})],
       fails=[Example("/dev/sda1", files={"/etc/fstab": "/dev/sda1 / ext4 defaults 0 1\n"})],
       fix=fx.STABLE_NAMES)
def fstab_stable(ctx: Context) -> list[Finding]:
    return [Finding(f"{e.mountpoint} is mounted by kernel device name {e.spec}",
                    f"/etc/fstab:{e.line}", fix="use UUID= (blkid shows it)")
            for e in guest(ctx).facts.fstab if UNSTABLE.match(e.spec)]


@check(id="guest.fstab.uuids-exist", title="Every fstab UUID/LABEL/PARTUUID is on the image",
       severity=Severity.ERROR,
       rationale="An fstab entry naming a filesystem that is not on the disk (a UUID from the "
                 "build host, a reformatted partition) stops the boot in emergency mode unless "
                 "it is nofail.",
       source=("RHEL", "UBU", "NVME"),
       remediation="Correct the UUID (blkid) or add nofail for optional mounts.",
       passes=[Example("LABEL of the ESP", files={"/etc/fstab":
                       "UUID=6f0e3d1c-2a4b-4c5d-8e9f-0a1b2c3d4e5f / ext4 defaults 0 1\n"
                       "LABEL=UEFI /boot/efi vfat defaults 0 0\n"})],
       fails=[Example("root UUID from the build host",
                      files={"/etc/fstab": "UUID=00000000-1111-2222-3333-444444444444 / ext4 "
                             "defaults 0 1\n"})])
def fstab_uuids(ctx: Context) -> list[Finding]:
    facts = guest(ctx).facts
    if not facts.filesystems:
        raise NotApplicable("the engine reported no filesystems")
    idx = fs_index(facts.filesystems)
    out = []
    for e in facts.fstab:
        key, sep, val = e.spec.partition("=")
        if not sep or key not in idx or "nofail" in e.options.split(","):
            continue
        norm = val.strip('"').lower() if key.endswith("UUID") else val.strip('"')
        if norm not in idx[key]:
            out.append(Finding(f"{e.spec} ({e.mountpoint}) is on no filesystem of the image",
                               f"/etc/fstab:{e.line}"))
    return out

