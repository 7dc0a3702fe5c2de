from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vhdtool.formats.errors import CorruptImage
from vhdtool.formats.mbr import MAX_LOGICAL, read_mbr
from tests.formats.disktools import (MiB, fdisk_commands, fdisk_list, needs_gdisk, patch, reader,
                                    sfdisk, sfdisk_json, sparse)

pytestmark = needs_gdisk


def _mbr(path: Path, sector: int = 512):
    return read_mbr(reader(path), os.path.getsize(path), sector, str(path))


def test_primary_and_logical_partitions_match_sfdisk(tmp_path: Path) -> None:
    p = sparse(tmp_path / "d.img", 64 * MiB)
    sfdisk(p, "label: dos\nlabel-id: 0x1234abcd\n"
              "start=2048, size=8M, type=83, bootable\n"
              "size=4M, type=82\n"
              "type=5\n"
              "size=6M, type=83\n"
              "size=5M, type=8e\n"
              "type=83\n")
    truth = sfdisk_json(p)
    m = _mbr(p)
    assert m.disk_signature == int(truth["id"], 16)
    got = [(f"{p}{e.index}", e.lba_start, e.num_sectors, f"{e.type:x}", e.bootable)
           for e in m.entries]
    want = [(t["node"], t["start"], t["size"], t["type"], bool(t.get("bootable")))
            for t in truth["partitions"]]
    assert got == want
    assert len(m.logical) == 3 and not m.problems
    assert not m.protective and not m.hybrid and not m.boot_code_present


def test_boot_code_present_and_missing_signature(tmp_path: Path) -> None:
    p = sparse(tmp_path / "d.img", 4 * MiB)
    sfdisk(p, "label: dos\nstart=2048, type=83\n")
    assert not _mbr(p).boot_code_present
    patch(p, 0, b"\xeb\x63\x90" + b"GRUB")
    assert _mbr(p).boot_code_present
    patch(p, 510, b"\0\0")
    with pytest.raises(CorruptImage) as exc:
        _mbr(p)
    assert exc.value.offset == 510 and exc.value.structure == "MBR"


GRUB_BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")


@pytest.mark.skipif(not GRUB_BOOT_IMG.exists(), reason="grub-pc-bin not installed")
def test_grub_boot_code_is_seen_and_the_table_survives(tmp_path: Path) -> None:
    """GRUB's boot.img code area (what grub-bios-setup writes to bytes 0..439) is boot code."""
    p = sparse(tmp_path / "d.img", 16 * MiB)
    sfdisk(p, "label: dos\nstart=2048, type=83, bootable\n")
    before = sfdisk_json(p)
    assert not _mbr(p).boot_code_present
    patch(p, 0, GRUB_BOOT_IMG.read_bytes()[:440])
    m = _mbr(p)
    assert m.boot_code_present and m.disk_signature == int(before["id"], 16)
    assert sfdisk_json(p) == before
    assert [(e.lba_start, e.bootable) for e in m.entries] == [(2048, True)]


def test_ebr_loop_is_detected(tmp_path: Path) -> None:
    p = sparse(tmp_path / "d.img", 32 * MiB)
    sfdisk(p, "label: dos\nstart=2048, size=4M, type=83\ntype=5\nsize=4M, type=83\n"
              "size=4M, type=83\n")
    m = _mbr(p)
    ext = next(e for e in m.primary if e.extended)
    # point the first EBR's link entry back at itself (relative LBA 0)
    first_ebr = ext.lba_start * 512
    patch(p, first_ebr + 446 + 16 + 8, (0).to_bytes(4, "little"))
    m2 = _mbr(p)
    assert len(m2.logical) == 1
    assert any("loop" in pr.message and pr.structure == "EBR" for pr in m2.problems)


def test_4096_byte_sectors(tmp_path: Path) -> None:
    p = sparse(tmp_path / "d.img", 64 * MiB)
    fdisk_commands(p, "o\nn\np\n1\n256\n+4M\nn\ne\n2\n\n\nn\nl\n\n+4M\nn\nl\n\n+2M\nw\n")
    truth = fdisk_list(p, "Device,Start,Sectors,Id")
    m = _mbr(p, 4096)
    assert len(truth) == 4 and len(m.logical) == 2
    assert [(f"{p}{e.index}", e.lba_start, e.num_sectors, f"{e.type:x}") for e in m.entries] == \
        [(t["Device"], int(t["Start"]), int(t["Sectors"]), t["Id"]) for t in truth]


def test_endless_ebr_chain_is_cut(tmp_path: Path) -> None:
    """300 chained EBRs (each one sector with a one-sector logical partition after it)."""
    p = sparse(tmp_path / "d.img", 8 * MiB)
    sfdisk(p, "label: dos\nstart=2048, type=5\n")
    ext = _mbr(p).primary[0]
    with open(p, "r+b") as f:
        for i in range(300):
            ebr = bytearray(512)
            ebr[446:462] = struct.pack("<B3sB3sII", 0, b"", 0x83, b"", 1, 1)
            ebr[462:478] = struct.pack("<B3sB3sII", 0, b"", 0x05, b"", 2 * (i + 1), 2)
            ebr[510:] = b"\x55\xaa"
            f.seek((ext.lba_start + 2 * i) * 512)
            f.write(ebr)
    m = _mbr(p)
    assert len(m.logical) == MAX_LOGICAL          # Linux's limit; libfdisk stops at #60
    truth = sfdisk_json(p)["partitions"][1:]
    assert len(truth) == 56
    assert [(e.lba_start, e.num_sectors) for e in m.logical[:56]] == \
        [(t["start"], t["size"]) for t in truth]
    assert [e.index for e in m.logical[:2]] == [5, 6]
    assert any("chain cut" in pr.message for pr in m.problems)
