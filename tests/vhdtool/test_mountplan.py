"""The mount core, backend-free: fstab specs, root choice, mount order and unreadable reasons, on a
recording backend (what each engine must do is what this drives)."""

from __future__ import annotations

from collections.abc import Sequence

from tests.checks.fakeguest import DIR, FakeView
from vhdtool.checks.guest import Filesystem
from vhdtool import mountplan as mp
from vhdtool.mountplan import MountError

UUID = "5b0c8a34-7e0b-4a8e-9d5e-3f1c2b4a6d7e"
FSS = [Filesystem("/dev/sda1", "vfat", "ABCD-1234", "ESP", "0a0b-part", "esp"),
       Filesystem("/dev/sda2", "ext4", "11111111-2222-3333-4444-555555555555", "data"),
       Filesystem("/dev/sda3", "LVM2_member", "pv-uuid"),
       Filesystem("/dev/my-vg/root-lv", "xfs", UUID.upper(), "root"),
       Filesystem("/dev/my-vg/srv", "ntfs", "0123456789ABCDEF")]
FSTAB = f"""# comment
UUID={UUID} / xfs defaults 0 1
/dev/mapper/my--vg-srv /srv ntfs defaults 0 0
LABEL=ESP /boot/efi vfat ro 0 2
PARTUUID=0A0B-PART /boot vfat ro 0 2
/dev/sda2 /data ext4 subvol=@data,noatime,subvolid=5 0 0
/dev/sdb1 /missing ext4 defaults 0 0
UUID=pv-uuid none swap sw 0 0
tmpfs /tmp tmpfs defaults 0 0
relative here ext4 defaults 0 0
"""


def test_specs_resolve_from_the_probed_filesystems() -> None:
    r = mp.resolve_spec
    assert r("UUID=abcd-1234", FSS) == "/dev/sda1"                    # UUIDs: any case
    assert r(f"UUID={UUID}", FSS) == "/dev/my-vg/root-lv"
    assert r("LABEL=esp", FSS) is None and r("LABEL=ESP", FSS) == "/dev/sda1"   # labels: exact
    assert r("PARTUUID=0A0B-PART", FSS) == "/dev/sda1" and r('PARTLABEL="esp"', FSS) == "/dev/sda1"
    assert r("/dev/disk/by-label/root", FSS) == "/dev/my-vg/root-lv"
    assert r("/dev/disk/by-id/wwn-0x5", FSS) is None
    assert r("/dev/mapper/my--vg-root--lv", FSS) == "/dev/my-vg/root-lv"   # dashes doubled
    assert r("/dev/mapper/my-vg-root-lv", FSS) is None
    assert r("/dev/sdb1", FSS) is None and r("tmpfs", FSS) is None


def test_the_plan_is_shallowest_first_with_subvolumes_kept() -> None:
    plan = mp.fstab_plan(FSTAB, FSS)
    assert [(s.mountpoint, s.device, s.fstype) for s in plan] == [
        ("/srv", "/dev/my-vg/srv", "ntfs"), ("/boot", "/dev/sda1", "vfat"),
        ("/data", "/dev/sda2", "ext4"), ("/boot/efi", "/dev/sda1", "vfat")]
    assert plan[2].options == ("subvol=@data", "subvolid=5")


class Recorder:
    """A MountBackend over a fake tree: records mounts; ntfs unreadable, /data's mount fails."""

    name = "test"

    def __init__(self, roots: dict[str, dict]) -> None:
        self.roots, self.log, self.tree = roots, [], None

    def readable(self, fstype: str) -> bool:
        return fstype != "ntfs"

    def mount(self, fs: Filesystem, mountpoint: str, options: Sequence[str]) -> None:
        if fs.device == "/dev/sda2":
            raise MountError("bad superblock")
        self.log.append((fs.device, mountpoint, tuple(options)))
        if mountpoint == "/":
            self.tree = FakeView(self.roots.get(fs.device, {}))

    def unmount_all(self) -> None:
        self.log.append("umount")
        self.tree = None

    def is_file(self, path: str) -> bool:
        st = self.tree.lstat(path)
        return bool(st and st.is_reg)

    def is_dir(self, path: str) -> bool:
        st = self.tree.lstat(path)
        return bool(st and st.is_dir)

    def read_file(self, path: str, limit: int) -> bytes:
        return self.tree.read_raw(path, limit) or b""

    def view(self):
        return self.tree

    def writable_view(self):
        raise MountError("read-only")

    def close(self) -> None:
        pass


def test_root_then_fstab_through_a_backend() -> None:
    root_tree = {"etc/fstab": FSTAB, "srv": DIR, "boot": DIR, "boot/efi": DIR, "data": DIR}
    backend = Recorder({"/dev/my-vg/root-lv": root_tree})
    said: list[str] = []
    root = mp.find_root(backend, FSS, said.append, "img")
    assert root is not None and root.device == "/dev/my-vg/root-lv"
    # sda2 (ext4) was tried first and failed to mount: said, not the root
    assert backend.log[0] == "umount" and "cannot read /dev/sda2 (ext4)" in said[0]
    done = mp.mount_fstab(backend, root, FSS, said.append)
    assert done.where == {"/": "/dev/my-vg/root-lv", "/boot": "/dev/sda1",
                          "/boot/efi": "/dev/sda1"}
    assert done.unreadable == ["/srv is ntfs (/dev/my-vg/srv)",
                               "/data (/dev/sda2, ext4): bad superblock"]
    assert "the test engine cannot read ntfs" in said[1]
    guest, fss = mp.open_view(backend.view(), FSS, done.where)
    assert {fs.device: fs.mountpoint for fs in fss}["/dev/sda1"] == "/boot/efi"
    assert guest.facts.fstab[0].mountpoint == "/"


def test_no_root_leaves_nothing_mounted() -> None:
    backend = Recorder({})
    assert mp.find_root(backend, FSS, lambda m: None, "img") is None
    assert backend.tree is None
