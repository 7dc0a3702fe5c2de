"""The fixes of the boot checks (:mod:`checks.guest_boot`): kernel command line, modprobe rules,
initramfs drivers, the EFI fallback loader, swap and fstab device names.

References:
  - Kernel command lines: :func:`checks.fixlib.cmdline_changes` (bootloader defaults *and* the
    generated grub.cfg / BLS entries, so no grub-mkconfig run is needed).
  - modprobe.d(5); initramfs-tools(7) and dracut(8) copy modprobe.d into the initramfs, so a rule
    taken out of the root filesystem is taken out of the rebuilt initramfs too.
  - UEFI 2.10 section 3.5.1 (``\\EFI\\BOOT\\BOOTX64.EFI``); shim loads ``grubx64.efi`` from its
    own directory, and Debian's signed grub reads ``grub.cfg`` beside itself (what
    ``grub-install --removable`` lays out).
  - fstab(5) (``UUID=``), swapon(8).
"""

from __future__ import annotations

from collections.abc import Sequence

from .catalog import Context, Result
from .fixes import Change, Delete, Fix, NotFixable, Safety, WriteFile
from .fixlib import (Arg, add_initramfs_modules, by_file, cmdline_changes, comment_out,
                     current_findings, edit_file, fix, line_no, rebuild_initramfs)
from .guestlib import MODPROBE_DIRS, guest, kernel_modules

NOTE = "disabled by vhdtool fix"


def cmdline_fix(args: Sequence[Arg]) -> Fix:
    words = " ".join(n if v is None else f"{n}={v}" for n, v in args)

    def plan(ctx: Context, _result: Result) -> list[Change]:
        return cmdline_changes(guest(ctx), add=tuple(args))
    return fix(f"adds {words} to GRUB_CMDLINE_LINUX (where grub-mkconfig's composition takes it "
               "from), to every linux line of grub.cfg and to BLS options / grubenv kernelopts / "
               "/etc/kernel/cmdline when present", Safety.UNSAFE, plan)


def _reenable(ctx: Context, result: Result) -> list[Change]:
    g = guest(ctx)
    found = current_findings(ctx, result)
    missing = [f.message for f in found if not line_no(f.evidence)
               or not f.evidence.startswith(MODPROBE_DIRS)]
    if missing:
        raise NotFixable(f"{'; '.join(missing)}: install the kernel's modules")
    out: list[Change] = []
    for path, nos in by_file(found).items():
        out += edit_file(g, path, comment_out(nos, NOTE))
    return out + rebuild_initramfs(g, "take the modprobe rules out of the initramfs too")


REENABLE = fix("comments out the modprobe.d blacklist/install-/bin/true lines that disable the "
               "modules, then rebuilds every initramfs (they hold a copy of modprobe.d) with the "
               "guest's update-initramfs or dracut", Safety.UNSAFE, _reenable)


def initramfs_fix(modules: tuple[str, ...], name: str) -> Fix:
    def plan(ctx: Context, _result: Result) -> list[Change]:
        g = guest(ctx)
        for km in kernel_modules(ctx):
            absent = [m for m in modules if m not in km.kernel.builtin | km.files]
            if absent:
                raise NotFixable(f"kernel {km.kernel.version} has no {', '.join(absent)} "
                                 "module: install a kernel that has them")
        needed = [m for m in modules if any(m not in km.kernel.builtin
                                            for km in kernel_modules(ctx))]
        return (add_initramfs_modules(g, needed, name)
                + rebuild_initramfs(g, f"put {', '.join(needed)} into every initramfs"))
    return fix(f"adds {', '.join(modules)} to /etc/initramfs-tools/modules (or a "
               "/etc/dracut.conf.d add_drivers+= file) and rebuilds every kernel's initramfs "
               "with the guest's update-initramfs or dracut, inside the appliance",
               Safety.UNSAFE, plan)


LOADERS = {"BOOTX64.EFI": ("shimx64.efi", "grubx64.efi"),
           "BOOTAA64.EFI": ("shimaa64.efi", "grubaa64.efi")}


def efi_fallback_fix(esp_dirs: Sequence[str], fallback_path) -> Fix:
    def plan(ctx: Context, _result: Result) -> list[Change]:
        g = guest(ctx)
        path, name = fallback_path(ctx)
        if path:
            return []
        esp = next((e for e in esp_dirs if g.is_dir(f"{e}/EFI")), None)
        if esp is None:
            raise NotFixable("no EFI system partition is mounted")
        shim, grub = LOADERS[name]
        for vendor in g.list_dir(f"{esp}/EFI"):
            src = f"{esp}/EFI/{vendor}"
            if vendor.upper() == "BOOT":
                continue
            first = next((f for f in (shim, grub) if g.is_file(f"{src}/{f}")), None)
            if first is None:
                continue
            out: list[Change] = [WriteFile(f"{esp}/EFI/BOOT/{name}",
                                           g.read_file(f"{src}/{first}") or b"", 0o755)]
            extra = (grub, "mm" + shim[4:], "grub.cfg") if first == shim else ("grub.cfg",)
            out += [WriteFile(f"{esp}/EFI/BOOT/{f}", g.read_file(f"{src}/{f}") or b"", 0o755)
                    for f in extra if g.is_file(f"{src}/{f}")]
            return out
        raise NotFixable(f"no {shim} or {grub} in a vendor directory of {esp}/EFI to copy")
    return fix("copies the distribution's loader (shim with grub beside it, else grub) from "
               "its vendor directory of the ESP to EFI/BOOT/BOOTX64.EFI (BOOTAA64.EFI), as "
               "grub-install --removable lays it out", Safety.UNSAFE, plan)


def _swap(ctx: Context, result: Result) -> list[Change]:
    found = current_findings(ctx, result)
    out: list[Change] = [Delete(f.evidence) for f in found
                         if f.evidence and not line_no(f.evidence)]
    for path, nos in by_file(found).items():
        out += edit_file(guest(ctx), path, comment_out(nos, "swap belongs on the resource disk"))
    return out


SWAP = fix("comments out the swap lines of /etc/fstab and deletes the swap files", Safety.SAFE,
           _swap)


def _stable_names(ctx: Context, result: Result) -> list[Change]:
    g = guest(ctx)
    entries = {e.line: e for e in g.facts.fstab}
    spec: dict[int, str] = {}
    for f in current_findings(ctx, result):
        loc = line_no(f.evidence)
        e = entries.get(loc[1]) if loc else None
        if e is None:
            continue
        fs = next((fs for fs in g.facts.filesystems if fs.mountpoint == e.mountpoint
                   and e.mountpoint.startswith("/")), None) or next(
            (fs for fs in g.facts.filesystems if fs.device == e.spec), None)
        if fs is None or not fs.uuid:
            raise NotFixable(f"no filesystem with a UUID is known for {e.spec} "
                             f"({e.mountpoint}, /etc/fstab:{e.line})")
        spec[e.line] = f"UUID={fs.uuid}"

    def edit(lines: list[str]) -> list[str]:
        out = []
        for i, ln in enumerate(lines, 1):
            if i in spec:
                head = ln[:len(ln) - len(ln.lstrip())]
                rest = ln.lstrip()
                ln = head + spec[i] + rest[len(rest.split(None, 1)[0]):]
            out.append(ln)
        return out
    return edit_file(g, "/etc/fstab", edit)


STABLE_NAMES = fix("replaces kernel device names in /etc/fstab by UUID= of the filesystem the "
                   "engine found there", Safety.UNSAFE, _stable_names)
