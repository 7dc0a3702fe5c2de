"""The read-only guest view checks see, and the facts derived from it.

A :class:`GuestView` is a read-only file system of the guest (all its filesystems mounted at their
fstab places). Paths are absolute guest paths; symbolic links are resolved *inside* the guest root
(an absolute link target restarts at the guest's ``/``, ``..`` never climbs above it) with a bounded
number of hops, so a hostile image cannot escape nor loop. Reads are bounded in size.

:class:`GuestFacts` are derived from the view once per run (distribution, architecture, kernels
with their initramfs and ``modules.builtin``, bootloader configuration files, fstab entries) plus
what the engine knows about filesystems (UUID/LABEL/PARTUUID), which a view cannot see.

References:
  - os-release(5) (``/etc/os-release`` ``ID``/``VERSION_ID``), fstab(5) (fields, ``#`` comments,
    ``\\040`` octal escapes), path_resolution(7) (symlink resolution, ELOOP after 40 hops).
  - Kernel layout: ``/boot/vmlinuz-<v>``, ``/boot/initrd.img-<v>`` (Debian initramfs-tools),
    ``/boot/initramfs-<v>.img`` (dracut), ``/lib/modules/<v>/modules.builtin``.
  - ELF header (System V ABI): ``e_machine`` at offset 18 (0x3E x86-64, 0xB7 aarch64, 0x03 i386).
  - The guest checks' sources: :mod:`checks.sources`.
"""

from __future__ import annotations

import posixpath
import re
import stat as statmod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

#: default bound on one file read (config files, cpio archives read separately with their own bound)
MAX_READ = 16 * 1024 * 1024
MAX_LINK_HOPS = 40


@dataclass(frozen=True)
class Stat:
    mode: int
    size: int
    uid: int = 0
    gid: int = 0

    @property
    def is_dir(self) -> bool:
        return statmod.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return statmod.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return statmod.S_ISLNK(self.mode)


class GuestLoopError(OSError):
    """Too many symbolic links (ELOOP) while resolving a guest path."""


class GuestView(Protocol):
    """Primitive operations an engine implements; everything else is built on them."""

    def lstat(self, path: str) -> Stat | None: ...
    def readlink(self, path: str) -> str | None: ...
    def list_dir(self, path: str) -> list[str]: ...
    def read_raw(self, path: str, limit: int) -> bytes | None: ...


def _norm(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/")).replace("//", "/")


T = TypeVar("T")


def walk(path: str, start: T, step: Callable[[T, str], T | None],
         link: Callable[[T], str | None], follow_last: bool = True,
         hops: int = MAX_LINK_HOPS) -> tuple[list[T], list[str]]:
    """Resolve ``path`` component by component from ``start`` (the guest's ``/``), inside it.

    ``step(parent, name)`` is the child (None when it is missing or ``parent`` is no directory);
    ``link(node)`` is a symbolic link's target (None when ``node`` is no link).  An absolute
    target restarts at ``start``, ``..`` never climbs above it, the last component's link is
    followed only when ``follow_last``.  Returns the chain of nodes walked (``start`` first, the
    node of ``path`` last) and the components left when one was missing (else empty).  Raises
    :class:`GuestLoopError` after ``hops`` links (path_resolution(7): ELOOP).
    """
    stack = [start]
    todo = [p for p in path.split("/") if p]
    used = 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            if len(stack) > 1:
                stack.pop()
            continue
        child = step(stack[-1], name)
        if child is None:
            return stack, [name] + todo
        target = link(child) if todo or follow_last else None
        if target is None:
            stack.append(child)
            continue
        used += 1
        if used > hops:
            raise GuestLoopError(f"too many symbolic links resolving {path}")
        if target.startswith("/"):
            del stack[1:]
        todo = [p for p in target.split("/") if p] + todo
    return stack, []


def realpath(view: GuestView, path: str, hops: int = MAX_LINK_HOPS) -> str:
    """Resolve ``path`` inside the guest root. Raises :class:`GuestLoopError` after ``hops`` links.

    A missing component ends resolution (the rest is appended unresolved), like ``realpath -m``.
    """
    def step(parent: tuple[str, Stat | None], name: str) -> tuple[str, Stat | None] | None:
        cur = posixpath.join(parent[0], name)
        st = view.lstat(cur)
        return None if st is None else (cur, st)

    def link(node: tuple[str, Stat | None]) -> str | None:
        st = node[1]
        return (view.readlink(node[0]) or "") if st is not None and st.is_link else None

    stack, rest = walk(_norm(path), ("/", None), step, link, hops=hops)
    return _norm("/".join([stack[-1][0], *rest]))


class Guest:
    """Convenience layer over a :class:`GuestView` that checks use (follows links in the guest)."""

    def __init__(self, view: GuestView, facts: GuestFacts | None = None) -> None:
        self.view = view
        self._facts = facts

    # -- resolution -------------------------------------------------------------------------
    def realpath(self, path: str) -> str:
        return realpath(self.view, path)

    def lstat(self, path: str) -> Stat | None:
        return self.view.lstat(_norm(path))

    def stat(self, path: str) -> Stat | None:
        try:
            return self.view.lstat(self.realpath(path))
        except GuestLoopError:
            return None

    def readlink(self, path: str) -> str | None:
        return self.view.readlink(_norm(path))

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def is_dir(self, path: str) -> bool:
        st = self.stat(path)
        return bool(st and st.is_dir)

    def is_file(self, path: str) -> bool:
        st = self.stat(path)
        return bool(st and st.is_reg)

    def list_dir(self, path: str) -> list[str]:
        """Sorted names in a directory (links followed); empty when absent or not a directory."""
        try:
            real = self.realpath(path)
        except GuestLoopError:
            return []
        st = self.view.lstat(real)
        if st is None or not st.is_dir:
            return []
        return sorted(self.view.list_dir(real))

    def read_file(self, path: str, limit: int = MAX_READ) -> bytes | None:
        """The file's bytes (links followed, at most ``limit``); None when absent or not a file."""
        try:
            real = self.realpath(path)
        except GuestLoopError:
            return None
        st = self.view.lstat(real)
        if st is None or not st.is_reg:
            return None
        return self.view.read_raw(real, limit)

    def read_text(self, path: str, limit: int = MAX_READ) -> str | None:
        data = self.read_file(path, limit)
        return None if data is None else data.decode("utf-8", "replace")

    def glob(self, directory: str, pattern: str) -> list[str]:
        """Entries of ``directory`` whose name matches the regex ``pattern`` (full match)."""
        rx = re.compile(pattern)
        d = _norm(directory)
        return [posixpath.join(d, n) for n in self.list_dir(d) if rx.fullmatch(n)]

    def lines(self, path: str) -> list[tuple[int, str]]:
        """(line number, stripped line) of non-empty, non-comment lines of a text file."""
        text = self.read_text(path)
        if text is None:
            return []
        out = []
        for no, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if s and not s.startswith("#"):
                out.append((no, s))
        return out

    @property
    def facts(self) -> GuestFacts:
        if self._facts is None:
            self._facts = collect_facts(self)
        return self._facts


# -- facts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filesystem:
    device: str
    fstype: str
    uuid: str | None = None
    label: str | None = None
    partuuid: str | None = None
    partlabel: str | None = None
    mountpoint: str | None = None


@dataclass(frozen=True)
class FstabEntry:
    line: int
    spec: str
    mountpoint: str
    fstype: str
    options: str
    raw: str


@dataclass(frozen=True)
class Kernel:
    version: str
    image: str                     #: guest path of vmlinuz
    initramfs: str | None          #: guest path of the initramfs, when one exists
    modules_dir: str | None        #: /lib/modules/<version> when present
    builtin: frozenset[str] = frozenset()   #: module names from modules.builtin
    config: str | None = None      #: /boot/config-<version> when present


@dataclass(frozen=True)
class GuestFacts:
    distro: str | None = None
    version: str | None = None
    arch: str | None = None
    kernels: tuple[Kernel, ...] = ()
    bootloader_files: tuple[str, ...] = ()
    fstab: tuple[FstabEntry, ...] = ()
    filesystems: tuple[Filesystem, ...] = ()


ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x03: "i386", 0x28: "arm", 0xF3: "riscv64"}
INITRAMFS_NAMES = ("/boot/initrd.img-{v}", "/boot/initramfs-{v}.img", "/boot/initrd-{v}",
                   "/boot/initramfs-{v}")
#: Boot Loader Specification type-1 entries: ``$BOOT/loader/entries`` where $BOOT is the XBOOTLDR
#: partition or the ESP, mounted at /boot, /boot/efi or /efi (systemd-boot's bootctl and
#: kernel-install look in that order; Debian's systemd-boot writes them to the ESP)
BLS_ENTRY_DIRS = ("/boot/loader/entries", "/boot/efi/loader/entries", "/efi/loader/entries")
BOOTLOADER_FILES = ("/etc/default/grub", "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg",
                    "/boot/grub/grubenv", "/boot/grub2/grubenv", "/etc/kernel/cmdline")


def module_name(path: str) -> str:
    """``kernel/drivers/hv/hv_vmbus.ko.xz`` -> ``hv_vmbus`` (dashes normalised to underscores)."""
    base = posixpath.basename(path)
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip("\"'")
    return out


def _unescape_fstab(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def parse_fstab(text: str) -> tuple[FstabEntry, ...]:
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        f = s.split()
        if len(f) < 2:
            continue
        f += ["", "", ""]
        out.append(FstabEntry(no, _unescape_fstab(f[0]), _unescape_fstab(f[1]), f[2], f[3], s))
    return tuple(out)


def elf_arch(data: bytes | None) -> str | None:
    if not data or len(data) < 20 or data[:4] != b"\x7fELF":
        return None
    order = "little" if data[5] == 1 else "big"
    machine = int.from_bytes(data[18:20], order)
    return ELF_MACHINES.get(machine, f"elf-machine-{machine:#x}")


def _arch(g: Guest) -> str | None:
    for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/sbin/init", "/bin/sh"):
        a = elf_arch(g.read_file(p, 64))
        if a:
            return a
    return None


def _kernels(g: Guest) -> tuple[Kernel, ...]:
    out = []
    for img in g.glob("/boot", r"(vmlinuz|vmlinux|Image)-.+"):
        v = posixpath.basename(img).split("-", 1)[1]
        initrd = next((p.format(v=v) for p in INITRAMFS_NAMES if g.is_file(p.format(v=v))), None)
        mdir = f"/lib/modules/{v}" if g.is_dir(f"/lib/modules/{v}") else None
        builtin: frozenset[str] = frozenset()
        if mdir:
            text = g.read_text(f"{mdir}/modules.builtin") or ""
            builtin = frozenset(module_name(s) for s in text.split())
        cfg = f"/boot/config-{v}" if g.is_file(f"/boot/config-{v}") else None
        out.append(Kernel(v, img, initrd, mdir, builtin, cfg))
    return tuple(out)


def _bootloader_files(g: Guest) -> tuple[str, ...]:
    files = [p for p in BOOTLOADER_FILES if g.is_file(p)]
    for d in BLS_ENTRY_DIRS:
        files += g.glob(d, r".+\.conf")
    for esp in ("/boot/efi/EFI", "/efi/EFI"):
        for vendor in g.list_dir(esp):
            files += g.glob(f"{esp}/{vendor}", r"grub\.cfg")
    return tuple(files)


def collect_facts(g: Guest, filesystems: Sequence[Filesystem] = ()) -> GuestFacts:
    osr = parse_os_release(g.read_text("/etc/os-release") or g.read_text("/usr/lib/os-release")
                           or "")
    return GuestFacts(distro=osr.get("ID"), version=osr.get("VERSION_ID"), arch=_arch(g),
                      kernels=_kernels(g), bootloader_files=_bootloader_files(g),
                      fstab=parse_fstab(g.read_text("/etc/fstab") or ""),
                      filesystems=tuple(filesystems))


def fs_index(filesystems: Iterable[Filesystem]) -> Mapping[str, set[str]]:
    """{"UUID": {...}, "LABEL": {...}, "PARTUUID": {...}, "PARTLABEL": {...}} (UUIDs lower-case)."""
    idx: dict[str, set[str]] = {"UUID": set(), "LABEL": set(), "PARTUUID": set(), "PARTLABEL": set()}
    for fs in filesystems:
        for key, val in (("UUID", fs.uuid), ("LABEL", fs.label), ("PARTUUID", fs.partuuid),
                         ("PARTLABEL", fs.partlabel)):
            if val:
                idx[key].add(val.lower() if key.endswith("UUID") else val)
    return idx


__all__ = ["Guest", "GuestView", "GuestFacts", "GuestLoopError", "Stat", "Kernel", "FstabEntry",
           "Filesystem", "collect_facts", "parse_fstab", "parse_os_release", "module_name",
           "realpath", "walk", "elf_arch", "fs_index", "MAX_READ"]
