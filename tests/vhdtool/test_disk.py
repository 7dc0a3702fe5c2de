"""One opened disk per run: one image open, one partition-table parse, one probe per partition; the
footer the facts judge is the one the VHD reader chose; the guest engine gets the same disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vhdtool import formats
import formats.partitions
from vhdtool.checks.catalog import Profile, Verdict
from vhdtool.formats import open_image
from vhdtool import blkid, disk as diskmod
from vhdtool.disk import Disk
from vhdtool.facts import build_disk_facts
from vhdtool.pipeline import run

from .nativeimages import ESP, Dir, Part, make_disk

UUID = "5b0c8a34-7e0b-4a8e-9d5e-3f1c2b4a6d7e"


@pytest.fixture(scope="module")
def guest_disk(tmp_path_factory) -> Path:
    tree = {"etc/fstab": f"UUID={UUID} / ext4 defaults 0 1\nLABEL=ESP /boot/efi vfat ro 0 2\n",
            "etc/os-release": "ID=debian\nVERSION_ID=12\n", "boot/efi": Dir()}
    return make_disk(tmp_path_factory.mktemp("disk") / "disk.raw",
                     [Part("vfat", {"EFI/BOOT/BOOTX64.EFI": b"MZ"}, label="ESP", guid=ESP),
                      Part("ext4", tree, uuid=UUID)])


class _Counter:
    def __init__(self, monkeypatch, owner, name: str) -> None:
        self.calls = 0
        real = getattr(owner, name)

        def counted(*a, **k):
            self.calls += 1
            return real(*a, **k)
        monkeypatch.setattr(owner, name, counted)


def test_a_native_check_run_opens_the_image_once(guest_disk: Path, monkeypatch) -> None:
    pytest.importorskip("dissect.extfs")
    from vhdtool.native_engine import NativeEngine
    probe_module = sys.modules["vhdtool.formats.probe"]          # formats.probe is also a function
    opens = [_Counter(monkeypatch, m, "open_image") for m in (diskmod, formats, probe_module)]
    tables = [_Counter(monkeypatch, m, "read_partition_table")
              for m in (diskmod, formats.partitions)]
    probes = _Counter(monkeypatch, diskmod, "probe")
    before = diskmod.OPENS
    seen = {}

    class Spy(NativeEngine):
        def open(self, image, disk):
            seen["disk"] = disk
            return super().open(image, disk)

    r = run(str(guest_disk), Profile(), guest_engine=Spy(warn=lambda m: None))
    assert sum(c.calls for c in opens) == 1 and diskmod.OPENS - before == 1
    assert sum(c.calls for c in tables) == 1
    assert probes.calls == 2                       # the ESP and the root, each once
    assert isinstance(seen["disk"], Disk) and seen["disk"].facts is r.facts
    opened = next(x for x in r.results if x.check.id == "guest.opened")
    assert opened.verdict is Verdict.PASS
    assert [p.fs for p in r.facts.partitions] == ["fat", "ext"]


def test_partition_facts_use_the_blkid_types(guest_disk: Path) -> None:
    with Disk(str(guest_disk)) as d:
        got = [(v.device, v.probe.type, v.filesystem.partuuid is not None)
               for v in d.partitions()]
        assert got == [("/dev/sda1", "vfat", True), ("/dev/sda2", "ext4", True)]
        assert d.partitions() is d.partitions(512)          # one probe per partition
        assert d.partitions()[1].filesystem.uuid == UUID


def _dynamic_vhd(tmp_path: Path) -> Path:
    path = tmp_path / "dyn.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", str(path), "16M"], check=True)
    return path


def test_the_facts_footer_is_the_readers(tmp_path: Path) -> None:
    """A dynamic VHD whose footer at the end is damaged (checksum) and whose copy at offset 0 is
    good: the facts judge the copy the reader uses, and the damage is a structure error."""
    path = _dynamic_vhd(tmp_path)
    data = bytearray(path.read_bytes())
    data[-512 + 64] ^= 0xFF                     # the checksum field of the footer at the end
    path.write_bytes(bytes(data))
    facts, _ = build_disk_facts(str(path))
    with open_image(str(path)) as img:
        assert facts.footer.offset == img.footer.offset == 0
    assert facts.footer.checksum_ok
    assert any("checksum mismatch" in e.message for e in facts.structure_errors)


def test_a_damaged_cookie_on_a_raw_file_is_still_its_footer(tmp_path: Path) -> None:
    path = _dynamic_vhd(tmp_path)
    fixed = tmp_path / "f.vhd"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "vpc", "-o", "subformat=fixed",
                    str(path), str(fixed)], check=True)
    data = bytearray(fixed.read_bytes())
    data[-512:-504] = b"conectiv"
    fixed.write_bytes(bytes(data))
    facts, _ = build_disk_facts(str(fixed))
    assert facts.format == "raw" and facts.footer.cookie == b"conectiv"
    assert facts.footer.offset == len(data) - 512


def test_blkid_is_the_only_prober() -> None:
    import importlib.util
    assert importlib.util.find_spec("vhdtool.fssniff") is None
    assert diskmod.probe is blkid.probe
