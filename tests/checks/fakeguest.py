"""An in-memory guest for unit tests and catalog examples, and the known-good guest baseline
(test-suite only: importing this module registers the ``guest`` baseline of checks.examples).

:class:`FakeView` implements :class:`checks.guest.GuestView` over a dict ``{path: content}``:
``str``/``bytes`` are regular files, :func:`symlink` values are symbolic links, :data:`DIR` is an
(empty) directory; parent directories are implied. Example deltas (``Example.files``) write files
or delete them (``None`` deletes the path and everything under it); a
:class:`checks.examples.Made` value is built here by its recipe (:func:`build`).

:func:`baseline` is a well-prepared, generalized Debian 12 (cloud kernel, cloud-init with the Azure
datasource plus walinuxagent for extensions, grub with the serial console, chrony on the Hyper-V
PTP clock, hyperv-daemons' KVP daemon, no leftover state); every
guest check passes on it. Its initramfs is a real gzip-compressed newc archive so the initramfs
reader runs on it.

References:
  - Debian 12 cloud image layout (merged /usr: ``/lib -> usr/lib``; ``walinuxagent.service``;
    ``/etc/cloud/cloud.cfg.d``), the Azure Linux agent's ``waagent.conf``.
  - newc cpio format: ``Documentation/driver-api/early-userspace/buffer-format.rst`` (kernel).
"""

from __future__ import annotations

import gzip
import posixpath
import stat as statmod
import struct
from collections.abc import Mapping

from vhdtool.checks.examples import (DIR, DISK_MODULES, INITRD_MODULES, KVER, LINK, MODS, Made,
                                      register_baseline, symlink)
from vhdtool.checks.guest import Filesystem, Guest, GuestFacts, Stat, collect_facts, realpath
from tests.checks.shimsig import attach, debian_shim, sign_pe, tampered_shim


class FakeView:
    def __init__(self, files: Mapping[str, str | bytes]) -> None:
        self.files: dict[str, str | bytes] = {}
        self.dirs: set[str] = {"/"}
        for path, content in files.items():
            self.add(path, content)

    def add(self, path: str, content: str | bytes) -> None:
        path = posixpath.normpath("/" + path.lstrip("/"))
        # store under the real directory (e.g. /lib/x -> /usr/lib/x when /lib is a link)
        parent = realpath(self, posixpath.dirname(path))
        path = posixpath.join(parent, posixpath.basename(path))
        while parent not in self.dirs:
            self.dirs.add(parent)
            parent = posixpath.dirname(parent)
        if content == DIR:
            self.dirs.add(path)
        else:
            self.files[path] = content

    def remove(self, path: str) -> None:
        path = posixpath.normpath("/" + path.lstrip("/"))
        path = posixpath.join(realpath(self, posixpath.dirname(path)), posixpath.basename(path))
        prefix = path.rstrip("/") + "/"
        for p in [p for p in self.files if p == path or p.startswith(prefix)]:
            del self.files[p]
        self.dirs -= {d for d in self.dirs if d == path or d.startswith(prefix)}

    def lstat(self, path: str) -> Stat | None:
        if path in self.dirs:
            return Stat(statmod.S_IFDIR | 0o755, 4096)
        c = self.files.get(path)
        if c is None:
            return None
        if isinstance(c, str) and c.startswith(LINK):
            return Stat(statmod.S_IFLNK | 0o777, len(c) - len(LINK))
        return Stat(statmod.S_IFREG | 0o644, len(_bytes(c)))

    def readlink(self, path: str) -> str | None:
        c = self.files.get(path)
        if isinstance(c, str) and c.startswith(LINK):
            return c[len(LINK):]
        return None

    def list_dir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):] for p in list(self.files) + list(self.dirs)
                 if p.startswith(prefix) and p != prefix and "/" not in p[len(prefix):]}
        return sorted(names)

    def read_raw(self, path: str, limit: int) -> bytes | None:
        c = self.files.get(path)
        return None if c is None else _bytes(c)[:limit]


def _bytes(c: str | bytes) -> bytes:
    return c.encode() if isinstance(c, str) else c


def newc(entries: Mapping[str, bytes | None], trailer: bool = True) -> bytes:
    """A newc cpio archive of ``entries`` (``None`` = directory); test data for initramfs."""
    out = bytearray()

    def put(name: str, mode: int, data: bytes) -> None:
        nb = name.encode() + b"\0"
        fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + nb)
        out.extend(b"\0" * (-len(out) % 4) + data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, data) in enumerate(entries.items(), 1):
        put(name, (statmod.S_IFDIR | 0o755) if data is None else (statmod.S_IFREG | 0o644),
            data or b"")
    if trailer:
        put("TRAILER!!!", 0, b"")
    return bytes(out)


def elf_header(elf_class: int, machine: int) -> bytes:
    """The first 64 bytes of an executable ELF file (little-endian)."""
    return (b"\x7fELF" + bytes([elf_class, 1, 1]) + b"\0" * 9 + b"\x02\x00"
            + machine.to_bytes(2, "little") + b"\0" * 44)


def pe_image(pkcs7: bytes | None = None, code: bytes = b"\xc3" * 64) -> bytes:
    """A minimal PE32+ (x86-64) image with one ``.text`` section holding ``code``; with
    ``pkcs7``, an Authenticode security directory holding it (not a signature of this image)."""
    lfanew, opt_size, headers = 0x40, 240, 0x200
    head = bytearray(b"MZ" + b"\0" * (lfanew - 2))
    struct.pack_into("<I", head, 0x3C, lfanew)
    head += b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, opt_size, 0x22)
    opt = bytearray(opt_size)
    struct.pack_into("<H", opt, 0, 0x20B)
    struct.pack_into("<I", opt, 60, headers)      # SizeOfHeaders
    struct.pack_into("<I", opt, 108, 16)          # NumberOfRvaAndSizes
    text = code + b"\0" * (-len(code) % 0x200)
    section = struct.pack("<8sIIIIIIHHI", b".text", len(code), 0x1000, len(text), headers,
                          0, 0, 0, 0, 0x60000020)
    body = bytes(head) + bytes(opt) + section
    body += b"\0" * (headers - len(body)) + text
    return body if pkcs7 is None else attach(body, pkcs7, lfanew)


ROOT_UUID = "6f0e3d1c-2a4b-4c5d-8e9f-0a1b2c3d4e5f"
ESP_UUID = "7A1B-2C3D"
ELF_X86_64 = elf_header(2, 0x3E)
CMDLINE = ("console=tty0 console=ttyS0,115200n8 earlyprintk=ttyS0,115200 rootdelay=300 "
           "net.ifnames=0 nvme_core.io_timeout=240")


def initrd(modules: tuple[str, ...] = INITRD_MODULES, kver: str = KVER) -> bytes:
    """A gzip initramfs holding ``modules`` (paths under ``kernel/``), as initramfs-tools lays out."""
    entries: dict[str, bytes | None] = {".": None, "usr/lib/modules": None}
    for m in modules:
        entries[f"usr/lib/modules/{kver}/kernel/{m}"] = b"\0ko"
    entries["init"] = b"#!/bin/sh\n"
    return gzip.compress(newc(entries), mtime=0)


def _units() -> dict[str, str | bytes]:
    wants = "/etc/systemd/system/multi-user.target.wants"
    ci = "/etc/systemd/system/cloud-init.target.wants"
    out: dict[str, str | bytes] = {}
    for unit in ("walinuxagent.service", "ssh.service", "chrony.service",
                 "hv-kvp-daemon.service"):
        alias = "Alias=sshd.service\n" if unit == "ssh.service" else ""
        out[f"/lib/systemd/system/{unit}"] = ("[Unit]\n[Install]\nWantedBy=multi-user.target\n"
                                              + alias)
        out[f"{wants}/{unit}"] = symlink(f"/lib/systemd/system/{unit}")
    for unit in ("cloud-init-local.service", "cloud-init.service", "cloud-config.service",
                 "cloud-final.service"):
        out[f"/lib/systemd/system/{unit}"] = "[Unit]\n[Install]\nWantedBy=cloud-init.target\n"
        out[f"{ci}/{unit}"] = symlink(f"/lib/systemd/system/{unit}")
    out["/etc/systemd/system/sshd.service"] = symlink("/lib/systemd/system/ssh.service")
    return out


BASE_FILES: dict[str, str | bytes] = {
    "/lib": symlink("usr/lib"), "/bin": symlink("usr/bin"), "/sbin": symlink("usr/sbin"),
    "/usr/lib/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                           'VERSION_ID="12"\nVERSION="12 (bookworm)"\nID=debian\n',
    "/etc/os-release": symlink("../usr/lib/os-release"),
    "/usr/lib/systemd/systemd": ELF_X86_64, "/usr/bin/dash": ELF_X86_64,
    "/usr/bin/sh": symlink("dash"), "/usr/sbin/sshd": ELF_X86_64,
    "/usr/sbin/update-initramfs": "#!/bin/sh\n",
    "/etc/initramfs-tools/modules": "# List of modules that you want to include in your "
                                    "initramfs.\n",
    f"/boot/vmlinuz-{KVER}": b"MZkernel", f"/boot/initrd.img-{KVER}": b"",  # filled in below
    f"/boot/config-{KVER}": "CONFIG_HYPERV=m\nCONFIG_HYPERV_STORAGE=m\n",
    f"/lib/modules/{KVER}/modules.builtin": "kernel/drivers/nvme/host/nvme-core.ko\n"
                                            "kernel/drivers/nvme/host/nvme.ko\n",
    **{f"{MODS}/{m}": b"\0ko" for m in DISK_MODULES},
    f"/lib/modules/{KVER}/modules.dep": "".join(f"kernel/{m}:\n" for m in DISK_MODULES),
    "/etc/default/grub": 'GRUB_DEFAULT=0\nGRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX_DEFAULT=""\n'
                         f'GRUB_CMDLINE_LINUX="{CMDLINE}"\nGRUB_TERMINAL="console serial"\n',
    "/boot/grub/grub.cfg": "set default=0\nmenuentry 'Debian GNU/Linux' {\n"
                           f"\tlinux\t/boot/vmlinuz-{KVER} root=UUID={ROOT_UUID} ro {CMDLINE}\n"
                           f"\tinitrd\t/boot/initrd.img-{KVER}\n}}\n",
    "/boot/efi/EFI/BOOT/BOOTX64.EFI": debian_shim(),
    "/boot/efi/EFI/debian/shimx64.efi": debian_shim(),
    "/boot/efi/EFI/debian/grub.cfg": f"search.fs_uuid {ROOT_UUID} root\nconfigfile "
                                     "($root)/boot/grub/grub.cfg\n",
    "/etc/fstab": f"# /etc/fstab\nUUID={ROOT_UUID} / ext4 rw,discard,errors=remount-ro 0 1\n"
                  f"UUID={ESP_UUID} /boot/efi vfat defaults 0 0\n",
    "/etc/waagent.conf": "Provisioning.Agent=cloud-init\nProvisioning.RegenerateSshHostKeyPair=n\n"
                         "ResourceDisk.Format=n\nResourceDisk.EnableSwap=n\n"
                         "Logs.Verbose=n\nAutoUpdate.Enabled=y\n",
    "/usr/lib/python3/dist-packages/azurelinuxagent/common/version.py":
        "AGENT_NAME = 'WALinuxAgent'\nAGENT_VERSION = '2.9.0.4'\n",
    "/etc/cloud/cloud.cfg": "users:\n  - default\ndisable_root: true\n"
                            "cloud_init_modules:\n  - mounts\n  - disk_setup\n",
    "/etc/cloud/cloud.cfg.d/90_dpkg.cfg": "datasource_list: [ Azure ]\n",
    "/usr/bin/cloud-init": "#!/usr/bin/python3\n",
    "/etc/ssh/sshd_config": "Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication no\n"
                            "ClientAliveInterval 180\n",
    "/etc/ssh/sshd_config.d": DIR,
    "/usr/bin/python3": symlink("python3.11"), "/usr/bin/python3.11": ELF_X86_64,
    "/etc/sudoers": "Defaults\tenv_reset\nDefaults\tmail_badpass\nDefaults\tuse_pty\n"
                    "root\tALL=(ALL:ALL) ALL\n%sudo\tALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n",
    "/etc/sudoers.d/README": "# files in this directory are read by sudo\n",
    # chrony with the Hyper-V PTP clock (Azure time-sync doc), hyperv-daemons' KVP daemon
    "/usr/sbin/chronyd": ELF_X86_64,
    "/etc/chrony/chrony.conf": "confdir /etc/chrony/conf.d\npool 2.debian.pool.ntp.org iburst\n"
                               "driftfile /var/lib/chrony/chrony.drift\nmakestep 1 3\n",
    "/etc/chrony/conf.d/azure.conf": "refclock PHC /dev/ptp_hyperv poll 3 dpoll -2 offset 0 "
                                     "stratum 2\n",
    "/usr/sbin/hv_kvp_daemon": ELF_X86_64,
    "/etc/machine-id": "",
    "/etc/hostname": "localhost.localdomain\n",
    "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                   "_chrony:x:100:101::/var/lib/chrony:/usr/sbin/nologin\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "/etc/shadow": "root:*:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\n"
                   "_chrony:!:19700::::::\nnobody:*:19700:0:99999:7:::\n",
    "/etc/login.defs": "UID_MIN 1000\nUID_MAX 60000\n",
    "/etc/modprobe.d/README": "modprobe.d\n",
    "/root": DIR, "/home": DIR, "/var/lib/waagent": DIR, "/var/lib/dhcp": DIR, "/var/log": DIR,
    "/etc/udev/rules.d": DIR,
}
BASE_FILES[f"/boot/initrd.img-{KVER}"] = initrd()
BASE_FILES.update(_units())

BASE_FILESYSTEMS = (
    Filesystem("/dev/sda1", "ext4", uuid=ROOT_UUID, partuuid="0b1c2d3e-0000-4000-8000-000000000001",
               mountpoint="/"),
    Filesystem("/dev/sda15", "vfat", uuid=ESP_UUID, label="UEFI",
               partuuid="0b1c2d3e-0000-4000-8000-00000000000f", mountpoint="/boot/efi"),
)


def fake_guest(files: Mapping[str, str | bytes | None] | None = None,
               base: Mapping[str, str | bytes] = BASE_FILES,
               filesystems: tuple[Filesystem, ...] = BASE_FILESYSTEMS) -> Guest:
    """A :class:`Guest` of ``base`` with ``files`` applied (None deletes)."""
    view = FakeView(base)
    for path, content in (files or {}).items():
        view.remove(path)
        if content is not None:
            view.add(path, build(content) if isinstance(content, Made) else content)
    g = Guest(view)
    g._facts = collect_facts(g, filesystems)
    return g


#: the PE loaders of the ``pe`` recipe, by the signature named in checks.examples.pe
PE_LOADERS = {
    None: lambda: pe_image(None),
    "debian-shim": debian_shim,
    "tampered": tampered_shim,
    "forged": lambda: sign_pe(pe_image(None), issuer="Microsoft Corporation UEFI CA 2011"),
}


def build(made: Made) -> bytes:
    """The content a :class:`checks.examples.Made` describes."""
    if made.recipe == "pe":
        return PE_LOADERS[made.args[0]]()
    if made.recipe == "initrd":
        return initrd(*made.args)
    if made.recipe == "elf":
        return elf_header(*made.args)
    raise ValueError(f"no recipe {made.recipe!r}")


def baseline(files: Mapping[str, str | bytes | None] | None = None) -> Guest:
    return fake_guest(files)


register_baseline("guest", baseline)

__all__ = ["DIR", "DISK_MODULES", "ESP_UUID", "FakeView", "GuestFacts", "INITRD_MODULES", "KVER",
           "MODS", "ROOT_UUID", "baseline", "build", "elf_header", "fake_guest",
           "initrd", "newc", "pe_image", "symlink"]
