"""The native guest engine on small disks made by each filesystem's own mkfs (fast, no appliance).

Truth: the trees the filesystems were made from (content, links, modes), ``blkid -p`` for the
filesystem facts, path_resolution(7) for links (inside the guest root, ELOOP after 40 hops).
"""

from __future__ import annotations

import json
import random
import subprocess
import stat
import time
from pathlib import Path

import pytest

pytest.importorskip("dissect.extfs")

from vhdtool.checks.guest import Guest  # noqa: E402
from vhdtool import native_engine as ne  # noqa: E402
from vhdtool import native_fs  # noqa: E402
from vhdtool.engines import AutoEngine  # noqa: E402

from .nativeimages import ESP, MIB, Dir, Link, Part, blkid, make_disk, run  # noqa: E402

ROOT_UUID = "0a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
ESP_ID = "1234ABCD"

BIG = bytes(range(256)) * 5000          # 1.28 MB: several extents / blocks


def root_tree(fstype: str, extra_fstab: str = "") -> dict:
    return {
        "etc/fstab": f"UUID={ROOT_UUID} / {fstype} defaults 0 1\n"
                     f"UUID=1234-ABCD /boot/efi vfat umask=0077 0 1\n{extra_fstab}",
        "etc/os-release": 'ID=debian\nVERSION_ID="12"\n',
        "etc/hostname": "guest\n",
        "etc/shadow": "root:*:19000:0:99999:7:::\n",
        "etc/big.bin": BIG,
        "etc/alternatives/editor": Link("/usr/bin/vim.basic"),
        "usr/bin/vim.basic": "#!/bin/sh\n",
        "etc/escape": Link("../../../../../etc/hostname"),
        "etc/abs-escape": Link("/../../etc/hostname"),
        "etc/loop-a": Link("loop-b"),
        "etc/loop-b": Link("loop-a"),
        "etc/to-esp": Link("/boot/efi/EFI/debian"),
        "lib": Link("usr/lib"),
        "usr/lib/modules/6.1.0-1-cloud-amd64/modules.builtin": "kernel/fs/ext4/ext4.ko\n",
        "boot/efi": Dir(),
        "var/empty": Dir(0o700),
        "srv": Dir(),
    }


ESP_TREE = {"EFI/debian/grub.cfg": "search --fs-uuid\n", "EFI/BOOT/BOOTX64.EFI": b"MZ" * 300,
            "EFI/debian/shimx64.efi": b"MZ" + bytes(5000)}


def disk(tmp_path: Path, fstype: str, extra_fstab: str = "", more: tuple = ()) -> Path:
    parts = [Part("vfat", ESP_TREE, label="EFI", uuid=ESP_ID, name="esp", guid=ESP),
             Part(fstype, root_tree(fstype, extra_fstab), label="rootfs", uuid=ROOT_UUID,
                  name="root"), *more]
    return make_disk(tmp_path / f"{fstype}.raw", parts)


@pytest.fixture(scope="module", params=["ext4", "ext2", "xfs", "btrfs"])
def image(request, tmp_path_factory) -> Path:
    return disk(tmp_path_factory.mktemp(request.param), request.param)


def test_files_links_and_mounts(image: Path) -> None:
    with ne.open_guest(str(image), "raw") as s:
        g = s.guest
        assert g.read_text("/etc/hostname") == "guest\n"
        assert g.read_file("/etc/big.bin") == BIG
        assert g.read_file("/etc/big.bin", 1000) == BIG[:1000]
        # links resolve inside the guest: absolute targets and ".." stop at the guest's /
        assert g.realpath("/etc/alternatives/editor") == "/usr/bin/vim.basic"
        assert g.read_text("/etc/escape") == "guest\n"
        assert g.read_text("/etc/abs-escape") == "guest\n"
        assert g.readlink("/etc/escape") == "../../../../../etc/hostname"
        assert g.lstat("/etc/escape").is_link and g.stat("/etc/escape").is_reg
        # a loop is ELOOP: absent, not a hang
        assert g.stat("/etc/loop-a") is None and g.read_file("/etc/loop-a") is None
        assert g.lstat("/etc/loop-a").is_link
        # /lib -> usr/lib in the middle of a path
        assert g.read_text("/lib/modules/6.1.0-1-cloud-amd64/modules.builtin").startswith("kernel/")
        assert g.list_dir("/lib/modules") == ["6.1.0-1-cloud-amd64"]
        # the ESP is mounted on /boot/efi by its fstab UUID; FAT names keep their case
        assert g.list_dir("/boot/efi/EFI") == ["BOOT", "debian"]
        assert g.list_dir("/etc/to-esp") == ["grub.cfg", "shimx64.efi"]
        assert g.read_file("/boot/efi/EFI/BOOT/BOOTX64.EFI") == b"MZ" * 300
        assert g.read_file("/boot/efi/efi/boot/bootx64.efi") == b"MZ" * 300   # vfat: any case
        assert g.stat("/boot/efi/EFI/debian/grub.cfg").mode == stat.S_IFREG | 0o755
        assert g.stat("/var/empty").mode == stat.S_IFDIR | 0o700
        assert g.stat("/etc/missing") is None and g.list_dir("/etc/hostname") == []
        assert g.read_file("/etc") is None
        assert "/boot/efi/EFI/debian/grub.cfg" in g.facts.bootloader_files
        assert g.facts.distro == "debian" and g.facts.version == "12"


def test_facts_match_blkid(image: Path) -> None:
    with ne.open_guest(str(image), "raw") as s:
        fss = {fs.device: fs for fs in s.filesystems}
    assert set(fss) == {"/dev/sda1", "/dev/sda2"}
    for dev, offset in (("/dev/sda1", 1 * MIB), ("/dev/sda2", 34 * MIB)):
        want = blkid(image, offset)
        got = fss[dev]
        assert (got.fstype, got.uuid, got.label) == (want["TYPE"], want.get("UUID"),
                                                     want.get("LABEL"))
    assert fss["/dev/sda1"].mountpoint == "/boot/efi" and fss["/dev/sda2"].mountpoint == "/"
    assert fss["/dev/sda1"].partlabel == "esp" and fss["/dev/sda2"].partlabel == "root"
    out = run("sgdisk", "-i", "2", str(image))
    guid = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.startswith("Partition unique GUID"))
    assert fss["/dev/sda2"].partuuid == guid.lower()


def test_unreadable_mount_makes_auto_fall_back(tmp_path: Path, monkeypatch) -> None:
    """A guest mounting a filesystem the native engine cannot read goes to libguestfs (auto)."""
    path = disk(tmp_path, "ext4", "PARTLABEL=data /srv auto defaults 0 2\n",
                (Part("raw", {}, name="data", size_mib=4),))
    with open(path, "r+b") as f:      # an NTFS boot sector on /dev/sda3
        f.seek((1 + 33 + 16) * MIB + 3)
        f.write(b"NTFS    ")
    chosen: list[str] = []
    monkeypatch.setattr(AutoEngine, "_guestfs", lambda self, image, facts, why: chosen.append(why))
    AutoEngine("auto")(str(path), None)
    assert len(chosen) == 1 and "/srv is ntfs (/dev/sda3)" in chosen[0], chosen
    # forced native: the rest of the guest is still read, the unreadable mount is reported
    with ne.open_guest(str(path), "raw") as s:
        assert s.timing.unreadable == ["/srv is ntfs (/dev/sda3)"]
        assert s.guest.read_text("/etc/hostname") == "guest\n"


def test_auto_prefers_native(image: Path) -> None:
    engine = AutoEngine("auto")
    guest = engine(str(image), None)
    try:
        assert isinstance(guest, Guest) and engine.choice.name == "native"
        assert "/boot/efi" in engine.choice.reason
    finally:
        engine.close()


def test_no_root_is_a_clear_error(tmp_path: Path) -> None:
    path = make_disk(tmp_path / "data.raw", [Part("ext4", {"hello": "x"}, name="data")])
    with pytest.raises(ne.NativeEngineError, match="no ext2/3/4, XFS or btrfs filesystem holding"):
        ne.open_guest(str(path), "raw")


def _walk_everything(g: Guest) -> None:
    todo = ["/"]
    seen = 0
    while todo and seen < 500:
        d = todo.pop()
        for name in g.list_dir(d):
            p = d.rstrip("/") + "/" + name
            seen += 1
            st = g.lstat(p)
            if st is None:
                continue
            if st.is_dir:
                todo.append(p)
            elif st.is_reg:
                g.read_file(p, 1 << 20)
            elif st.is_link:
                g.readlink(p)
                g.stat(p)


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs"])
def test_mutated_filesystems_fail_clearly_and_quickly(fstype: str, tmp_path: Path) -> None:
    """Random damage in the root's metadata: a result or NativeEngineError/GuestReadError, bounded."""
    work = disk(tmp_path, fstype)
    rng = random.Random(f"vhdtool-{fstype}")
    root_start = 34 * MIB
    outcomes = {"opened": 0, "open-error": 0, "read-error": 0}
    with open(work, "rb") as f:        # damage only sectors in use (metadata and small files)
        f.seek(root_start)
        head = f.read(8 * MIB)
    used = [root_start + i for i in range(0, len(head), 512) if head[i:i + 512].strip(b"\0")]
    for _ in range(25):
        undo = []
        with open(work, "r+b") as f:
            for _ in range(rng.randint(1, 40)):
                at = rng.choice(used) + rng.randrange(512)
                f.seek(at)
                n = rng.choice((1, 2, 4, 8))
                undo.append((at, f.read(n)))
                f.seek(at)
                f.write(bytes([rng.randrange(256)]) * n)
        t0 = time.monotonic()
        try:
            with ne.open_guest(str(work), "raw", timeout=20) as s:
                outcomes["opened"] += 1
                try:
                    _walk_everything(s.guest)
                except ne.GuestReadError as e:
                    assert str(work) in str(e)
                    outcomes["read-error"] += 1
        except ne.NativeEngineError as e:
            assert str(work) in str(e)
            outcomes["open-error"] += 1
        assert time.monotonic() - t0 < 25
        with open(work, "r+b") as f:
            for at, data in reversed(undo):
                f.seek(at)
                f.write(data)
    print(fstype, outcomes)
    assert outcomes["open-error"] + outcomes["read-error"] > 0, "no mutation was ever noticed"


def test_timeout_is_enforced(tmp_path: Path) -> None:
    path = disk(tmp_path, "ext4")
    with pytest.raises(ne.NativeEngineError, match="longer than"):
        ne.open_guest(str(path), "raw", timeout=0.0)


@pytest.mark.parametrize("fmt,qemu", [("qcow2", ["-O", "qcow2"]), ("vhdx", ["-O", "vhdx"]),
                                      ("vpc", ["-O", "vpc", "-o", "subformat=dynamic,force_size"])])
def test_reads_every_image_format_directly(image: Path, tmp_path: Path, fmt: str,
                                           qemu: list[str]) -> None:
    """The same guest through VHD/VHDX/qcow2 (made by qemu-img from the raw disk), unconverted."""
    other = tmp_path / f"disk.{fmt}"
    run("qemu-img", "convert", "-f", "raw", *qemu, str(image), str(other))
    with ne.open_guest(str(image), "raw") as a, ne.open_guest(str(other), fmt) as b:
        assert a.filesystems == b.filesystems
        assert a.guest.facts == b.guest.facts
        assert b.guest.read_file("/etc/big.bin") == BIG
        assert b.guest.list_dir("/boot/efi/EFI/debian") == ["grub.cfg", "shimx64.efi"]


def test_a_spinning_reader_is_stopped(tmp_path: Path, monkeypatch) -> None:
    """A reader looping without reading (so no read-side deadline check) is stopped by the timer."""
    path = disk(tmp_path, "ext4")
    with ne.open_guest(str(path), "raw", timeout=2.0) as s:
        def spin(self, node):
            while True:
                pass
            yield  # pragma: no cover
        monkeypatch.setattr(native_fs._ExtFs, "entries", spin)
        t0 = time.monotonic()
        with pytest.raises(ne.GuestReadError, match="longer than 2 s"):
            s.guest.view.list_dir("/var/empty")
        assert time.monotonic() - t0 < 5


def test_a_filesystem_the_reader_refuses_makes_auto_fall_back(tmp_path: Path, monkeypatch) -> None:
    """ext4 with bigalloc (clusters bigger than blocks: dissect.extfs refuses it) mounted on /srv:
    readable by type, not by the reader; auto goes to libguestfs and says why."""
    parts = (Part("ext4", {"data": "x"}, name="data", size_mib=32),)
    path = disk(tmp_path, "ext4", "PARTLABEL=data /srv ext4 defaults 0 2\n", parts)
    run("mkfs.ext4", "-q", "-F", "-O", "bigalloc", "-C", "16384", "-E",
        f"offset={(1 + 33 + 16) * MIB}", str(path), "32M")
    chosen: list[str] = []
    monkeypatch.setattr(AutoEngine, "_guestfs", lambda self, image, facts, why: chosen.append(why))
    AutoEngine("auto")(str(path), None)
    assert len(chosen) == 1 and "/srv (/dev/sda3, ext4)" in chosen[0], chosen


def test_mbr_logical_root_and_no_table(tmp_path: Path) -> None:
    """A root on a logical partition is /dev/sda5 with PARTUUID <disk id>-05 (sfdisk numbering);
    a disk without a partition table has no volume: a clear NativeEngineError."""
    from .nativeimages import make_fs
    tree = {"etc/fstab": "/dev/sda5 / ext4 defaults 0 1\n", "etc/hostname": "logical\n"}
    fs = make_fs(Part("ext4", tree), tmp_path, 1)
    path = tmp_path / "mbr.raw"
    with open(path, "wb") as f:
        f.truncate(40 * MIB)
    run("dd", f"if={fs}", f"of={path}", "bs=1M", "seek=2", "conv=notrunc,sparse", "status=none")
    script = "label: dos\nstart=2048, size=75776, type=5\nstart=4096, size=32768, type=83\n"
    res = subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True,
                         capture_output=True)
    assert res.returncode == 0, res.stderr
    node = json_parts(path)
    assert f"{path}5" in node
    disk_id = run("sfdisk", "--disk-id", str(path)).strip().lower().removeprefix("0x")
    with ne.open_guest(str(path), "raw") as s:
        root = next(f for f in s.filesystems if f.mountpoint == "/")
        assert root.device == "/dev/sda5" and root.partuuid == f"{disk_id}-05"
        assert s.guest.read_text("/etc/hostname") == "logical\n"
    bare = tmp_path / "bare.raw"
    run("cp", "--sparse=always", str(fs), str(bare))
    with pytest.raises(ne.NativeEngineError, match="among 0 volumes"):
        ne.open_guest(str(bare), "raw")


def json_parts(path: Path) -> list[str]:
    return [p["node"] for p in json.loads(run("sfdisk", "-J", str(path)))["partitiontable"]
            ["partitions"]]
