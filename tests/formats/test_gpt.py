from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from vhdtool.formats.errors import CorruptImage
from vhdtool.formats.gpt import PARTITION_TYPES, parse_entries, parse_header, read_entry_array
from tests.formats.disktools import (MiB, fdisk_commands, fdisk_list, needs_gdisk, patch, reader,
                                    sfdisk_json, sgdisk, sparse)

pytestmark = needs_gdisk


def _gpt_disk(tmp_path: Path) -> Path:
    p = sparse(tmp_path / "g.img", 64 * MiB)
    sgdisk(p, "-n1:2048:+1M", "-t1:ef02", "-n2:0:+8M", "-t2:ef00", "-c2:EFI system",
           "-n3:0:+4M", "-t3:8200", "-n4:0:0", "-t4:8304", "-c4:root ünicode",
           "-A4:set:2", "-U", "R")
    return p


def _primary(p: Path, sector: int = 512):
    read = reader(p)
    h = parse_header(read(sector, sector), sector, sector, str(p))
    data, ok = read_entry_array(read, h, os.path.getsize(p), sector, str(p))
    return h, parse_entries(data, h.entry_size), ok


def test_header_and_entries_match_sfdisk_and_sgdisk(tmp_path: Path) -> None:
    p = _gpt_disk(tmp_path)
    truth = sfdisk_json(p)
    h, entries, ok = _primary(p)
    assert ok and h.header_crc_ok
    assert h.disk_guid == truth["id"]
    assert (h.first_usable_lba, h.last_usable_lba) == (truth["firstlba"], truth["lastlba"])
    assert h.alternate_lba == os.path.getsize(p) // 512 - 1 and h.my_lba == 1
    got = [(e.first_lba, e.last_lba - e.first_lba + 1, e.type_guid, e.unique_guid, e.name)
           for e in entries]
    want = [(t["start"], t["size"], t["type"], t["uuid"], t.get("name", ""))
            for t in truth["partitions"]]
    assert got == want
    # sgdisk -p: number, start, end (inclusive) and name of every partition
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+[0-9A-F]{4}[ ]*(.*)$",
                      sgdisk(p, "-p"), re.M)
    assert [(e.index, e.first_lba, e.last_lba, e.name) for e in entries] == \
        [(int(n), int(a), int(b), name.strip()) for n, a, b, name in rows]
    # sgdisk -i shows the attribute bits and the name
    info = sgdisk(p, "-i4")
    flags = re.search(r"Attribute flags: ([0-9A-F]{16})", info)
    assert flags and entries[3].attributes == int(flags.group(1), 16) == 1 << 2
    assert entries[3].name == "root ünicode"
    assert [e.type_short for e in entries] == ["bios-boot", "esp", "swap", "linux-root-x86-64"]


def test_type_names_cover_sgdisk_codes(tmp_path: Path) -> None:
    """Every GUID in PARTITION_TYPES is one sgdisk knows (typed through its hex codes)."""
    p = sparse(tmp_path / "g.img", 8 * MiB)
    codes = {"ef00": "esp", "ef02": "bios-boot", "8300": "linux", "8304": "linux-root-x86-64",
             "8305": "linux-root-arm64", "8200": "swap", "8e00": "lvm", "fd00": "raid",
             "8302": "home", "ea00": "xbootldr", "0700": "msdata"}
    args = []
    for i, code in enumerate(codes, 1):
        args += [f"-n{i}:0:+256K", f"-t{i}:{code}"]
    sgdisk(p, *args)
    _, entries, _ = _primary(p)
    assert [PARTITION_TYPES[e.type_guid][0] for e in entries] == list(codes.values())


def test_bad_header_crc_and_entries_crc(tmp_path: Path) -> None:
    p = _gpt_disk(tmp_path)
    patch(p, 1024 + 2 * 128 + 56, "X".encode("utf-16-le"))     # a name byte in entry 3
    h, _, ok = _primary(p)
    assert h.header_crc_ok and not ok
    out = sgdisk(p, "-v")
    assert re.search(r"CRC.*(partition|table)", out, re.I | re.S)
    patch(p, 512 + 40, b"\x01")                                 # first usable LBA
    h, _, _ = _primary(p)
    assert not h.header_crc_ok


@pytest.mark.parametrize("field_off,value,word", [
    (0, b"EFI PARX", "signature"), (12, (8).to_bytes(4, "little"), "header size"),
    (84, (100).to_bytes(4, "little"), "entry size"), (80, (10**9).to_bytes(4, "little"), "entries"),
    (72, (10**12).to_bytes(8, "little"), "outside")])
def test_hostile_headers_raise_named_errors(tmp_path: Path, field_off: int, value: bytes,
                                           word: str) -> None:
    p = _gpt_disk(tmp_path)
    patch(p, 512 + field_off, value)
    with pytest.raises(CorruptImage) as exc:
        _primary(p)
    assert word in str(exc.value) and exc.value.offset is not None
    assert 512 <= exc.value.offset < 1024


def test_4096_byte_sector_gpt(tmp_path: Path) -> None:
    p = sparse(tmp_path / "g.img", 64 * MiB)
    fdisk_commands(p, "g\nn\n1\n256\n+4M\nt\n1\nn\n2\n\n+8M\nn\n3\n\n\nw\n")
    truth = fdisk_list(p, "Device,Start,Sectors,Type-UUID,UUID")
    h, entries, ok = _primary(p, 4096)
    assert ok and h.header_crc_ok and h.alternate_lba == 64 * MiB // 4096 - 1
    assert [(e.first_lba, e.last_lba - e.first_lba + 1, e.type_guid, e.unique_guid)
            for e in entries] == \
        [(int(t["Start"]), int(t["Sectors"]), t["Type-UUID"], t["UUID"]) for t in truth]
    with pytest.raises(CorruptImage):           # at 512-byte LBA 1 there is no header
        parse_header(reader(p)(512, 512), 512, 512, str(p))
