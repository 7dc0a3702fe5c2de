from __future__ import annotations

from tests.checks.fakeguest import ESP_UUID, KVER, ROOT_UUID, fake_guest, symlink
from vhdtool.checks.guest import fs_index, module_name, parse_fstab


def test_symlinks_resolve_inside_the_guest_root() -> None:
    g = fake_guest({"/etc/evil": symlink("../../../../etc/shadow"),
                    "/etc/abs": symlink("/etc/hostname"),
                    "/etc/rel": symlink("hostname")})
    assert g.realpath("/etc/evil") == "/etc/shadow"          # .. stops at the guest's /
    assert g.read_text("/etc/abs") == g.read_text("/etc/hostname") == "localhost.localdomain\n"
    assert g.read_text("/etc/rel") == "localhost.localdomain\n"
    # merged /usr: /lib -> usr/lib
    assert g.realpath(f"/lib/modules/{KVER}") == f"/usr/lib/modules/{KVER}"
    assert g.is_dir("/lib/modules") and g.lstat("/lib").is_link


def test_link_loops_are_bounded() -> None:
    g = fake_guest({"/a": symlink("/b"), "/b": symlink("/a"), "/c": symlink("c")})
    assert g.read_file("/a") is None and g.stat("/c") is None and g.list_dir("/a") == []
    assert not g.exists("/a")


def test_read_is_bounded_and_missing_is_none() -> None:
    g = fake_guest({"/big": b"x" * 1000})
    assert g.read_file("/big", limit=10) == b"x" * 10
    assert g.read_file("/nope") is None and g.read_file("/etc") is None
    assert g.list_dir("/nope") == []


def test_baseline_facts() -> None:
    f = fake_guest().facts
    assert (f.distro, f.version, f.arch) == ("debian", "12", "x86_64")
    (k,) = f.kernels
    assert k.version == KVER and k.initramfs == f"/boot/initrd.img-{KVER}"
    assert {"nvme", "nvme_core"} <= k.builtin
    assert "/boot/grub/grub.cfg" in f.bootloader_files and "/etc/default/grub" in f.bootloader_files
    assert [e.mountpoint for e in f.fstab] == ["/", "/boot/efi"]
    idx = fs_index(f.filesystems)
    assert ROOT_UUID in idx["UUID"] and ESP_UUID.lower() in idx["UUID"]


def test_deltas_delete_subtrees() -> None:
    g = fake_guest({"/etc/cloud": None})
    assert not g.exists("/etc/cloud/cloud.cfg") and not g.is_dir("/etc/cloud")


def test_fstab_parsing_and_module_names() -> None:
    (e,) = parse_fstab("# c\n\nLABEL=my\\040disk /mnt\\040x ext4 defaults 0 2\n")
    assert (e.line, e.spec, e.mountpoint, e.fstype) == (3, "LABEL=my disk", "/mnt x", "ext4")
    assert module_name("a/b/nvme-core.ko.zst") == "nvme_core"
    assert module_name("hv_vmbus.ko.xz") == "hv_vmbus"
