from __future__ import annotations

import filecmp
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhdtool.formats.errors import FormatError
from vhdtool.formats.partitions import PartitionTable, read_partition_table, relocate_gpt_backup
from tests.formats.disktools import (MiB, fdisk_commands, fdisk_list, fdisk_warnings, needs_gdisk,
                                    patch, reader,
                                    sfdisk, sfdisk_json, sgdisk, sgdisk_verify, sparse)

pytestmark = needs_gdisk


def _table(p: Path, sector: int = 512) -> PartitionTable:
    return read_partition_table(reader(p), os.path.getsize(p), sector, str(p))


def _serious(t: PartitionTable) -> list[str]:
    return [f"{x.structure}: {x.message}" for x in t.problems if x.severity != "info"]


def _gpt_disk(tmp_path: Path, size: int = 64 * MiB, name: str = "g.img") -> Path:
    p = sparse(tmp_path / name, size)
    sgdisk(p, "-n1:2048:+1M", "-t1:ef02", "-n2:0:+8M", "-t2:ef00", "-c2:EFI", "-n3:0:0",
           "-t3:8304", "-c3:root")
    return p


def _apply(p: Path, writes: list[tuple[int, bytes]]) -> None:
    with open(p, "r+b") as f:
        for off, data in writes:
            f.seek(off)
            f.write(data)


def _fix_gpt_crcs(p: Path, header_lba: int) -> None:
    """Recompute a header's entries CRC and header CRC after a test edited its entries."""
    with open(p, "r+b") as f:
        f.seek(header_lba * 512)
        hdr = bytearray(f.read(512))
        entries_lba, n, size = struct.unpack_from("<QII", hdr, 72)
        f.seek(entries_lba * 512)
        struct.pack_into("<I", hdr, 88, zlib.crc32(f.read(n * size)))
        struct.pack_into("<I", hdr, 16, 0)
        struct.pack_into("<I", hdr, 16, zlib.crc32(bytes(hdr[:92])))
        f.seek(header_lba * 512)
        f.write(hdr)


def test_gpt_table_matches_sfdisk(tmp_path: Path) -> None:
    p = _gpt_disk(tmp_path)
    truth = sfdisk_json(p)
    t = _table(p)
    assert t.scheme == truth["label"] == "gpt"
    assert "No problems found" in sgdisk_verify(p) and _serious(t) == []
    assert [(x.index, x.start, x.size, x.type_id, x.uuid, x.name) for x in t.partitions] == \
        [(int(q["node"].removeprefix(str(p))), q["start"] * 512, q["size"] * 512, q["type"],
          q["uuid"], q.get("name", "")) for q in truth["partitions"]]
    assert [x.type_name for x in t.partitions] == ["BIOS boot", "EFI System",
                                                    "Linux root (x86-64)"]
    assert t.gpt is not None and t.gpt.primary_valid and t.gpt.backup_valid


def test_mbr_table_matches_sfdisk(tmp_path: Path) -> None:
    p = sparse(tmp_path / "m.img", 64 * MiB)
    sfdisk(p, "label: dos\nstart=2048, size=8M, type=83, bootable\ntype=5\nsize=8M, type=82\n"
              "size=8M, type=8e\n")
    truth = sfdisk_json(p)
    t = _table(p)
    assert t.scheme == "mbr" and truth["label"] == "dos"
    assert [(f"{p}{x.index}", x.start // 512, x.size // 512, int(x.type_id, 16),
             x.bootable) for x in t.partitions] == \
        [(q["node"], q["start"], q["size"], int(q["type"], 16), bool(q.get("bootable")))
         for q in truth["partitions"]]
    assert [x.type_short for x in t.partitions] == ["linux", "extended", "swap", "lvm"]
    assert t.partitions[0].uuid == truth["id"].removeprefix("0x") + "-01"
    # logical partitions sit 1 MiB after their EBR: aligned, no overlap reported
    assert _serious(t) == []


@pytest.mark.parametrize("where,structure,sgdisk_says", [
    (512 + 40, "GPT primary header", "Main header: ERROR"),
    (2 * 512 + 200, "GPT primary entries", "Main partition table: ERROR"),
    (-512 + 40, "GPT backup header", "Backup header: ERROR"),
    (-33 * 512 + 300, "GPT backup entries", "Backup partition table: ERROR")])
def test_corrupt_crcs_are_reported_and_backup_still_serves(tmp_path: Path, where: int,
                                                           structure: str,
                                                           sgdisk_says: str) -> None:
    p = _gpt_disk(tmp_path)
    good = [x.as_dict() for x in _table(p).partitions]
    off = where if where > 0 else os.path.getsize(p) + where
    patch(p, off, b"\x5a")
    assert sgdisk_says in sgdisk_verify(p)
    t = _table(p)
    assert any(x.structure == structure and "CRC" in x.message and x.severity == "error"
               for x in t.problems), t.problems
    if "entries" in structure and "primary" in structure:
        assert [x.as_dict() for x in t.partitions] == good       # read from the backup copy


@pytest.mark.parametrize("hybrid", [False, True])
def test_grown_disk_relocation_matches_sgdisk_e(tmp_path: Path, hybrid: bool) -> None:
    p = _gpt_disk(tmp_path, 16 * MiB)
    if hybrid:          # 0xEE first-free-space layout: sgdisk -e leaves such an MBR alone too
        sgdisk(p, "-h", "2:EE")
    os.truncate(p, 21 * MiB)
    assert "secondary header's self-pointer" in sgdisk_verify(p)
    t = _table(p)
    assert any(x.severity == "warning" and "not at the last LBA" in x.message
               for x in t.problems)
    if not hybrid:
        assert "PMBR size mismatch" in fdisk_warnings(p)
        assert any(x.structure == "MBR entry 1" and "PMBR size mismatch" in x.message
                   for x in t.problems)
    ref = tmp_path / "ref.img"
    shutil.copyfile(p, ref)
    sgdisk(ref, "-e")
    _apply(p, relocate_gpt_backup(reader(p), 16 * MiB, 21 * MiB))
    assert filecmp.cmp(p, ref, shallow=False)          # byte-identical to sgdisk -e
    assert "No problems found" in sgdisk_verify(p)
    t2 = _table(p)
    assert _serious(t2) == [] and t2.gpt is not None
    assert t2.gpt.primary.last_usable_lba == 21 * MiB // 512 - 34   # sgdisk grows the usable area


def _structures(p: Path, size: int) -> bytes:
    """Sector 0..33 and the last 33 sectors: everything a relocation may touch on a huge disk."""
    with open(p, "rb") as f:
        head = f.read(34 * 512)
        f.seek(size - 33 * 512)
        return head + f.read()


def test_relocation_beyond_2tib_caps_the_protective_entry_like_sgdisk(tmp_path: Path) -> None:
    old, new = 2 * (1 << 40) - 7 * MiB, 3 * (1 << 40)
    p = sparse(tmp_path / "big.img", old)
    sgdisk(p, "-n1:0:+100M")
    os.truncate(p, new)
    ref = tmp_path / "ref.img"
    subprocess.run(["cp", "--sparse=always", str(p), str(ref)], check=True)
    sgdisk(ref, "-e")
    _apply(p, relocate_gpt_backup(reader(p), old, new))
    assert _structures(p, new) == _structures(ref, new)
    assert _table(p).problems == []


def test_relocation_of_4096_byte_sector_gpt(tmp_path: Path) -> None:
    p = sparse(tmp_path / "g.img", 32 * MiB)
    fdisk_commands(p, "g\nn\n1\n256\n+4M\nn\n2\n\n\nw\n")
    os.truncate(p, 40 * MiB)
    before = fdisk_warnings(p, 4096)
    assert "backup GPT table is not on the end" in before and "PMBR size mismatch" in before
    msgs = " | ".join(x.message for x in _table(p, 4096).problems)
    assert "not at the last LBA" in msgs and "PMBR size mismatch" in msgs
    _apply(p, relocate_gpt_backup(reader(p), 32 * MiB, 40 * MiB, 4096))
    assert fdisk_warnings(p, 4096) == ""
    t = _table(p, 4096)
    assert _serious(t) == []
    assert t.gpt is not None and t.gpt.backup.my_lba == 40 * MiB // 4096 - 1
    truth = fdisk_list(p, "Device,Start,Sectors")     # fdisk still reads the same partitions
    assert [(x.first_lba, x.size // 4096) for x in t.partitions] == \
        [(int(q["Start"]), int(q["Sectors"])) for q in truth]


def test_4096_byte_gpt_read_as_512_is_flagged(tmp_path: Path) -> None:
    p = sparse(tmp_path / "g.img", 32 * MiB)
    fdisk_commands(p, "g\nn\n1\n256\n+4M\nw\n")
    assert _table(p, 4096).scheme == "gpt"
    t = _table(p, 512)
    assert t.partitions == [] or t.scheme != "gpt"
    assert any("4096-byte sectors" in x.message for x in t.problems)


@pytest.mark.parametrize("sector0,scheme", [("dos", "mbr"), ("empty-table", "mbr"),
                                            ("zeros", "none")])
def test_gpt_behind_a_non_protective_sector_0_is_ignored_like_sfdisk(
        tmp_path: Path, sector0: str, scheme: str) -> None:
    p = _gpt_disk(tmp_path, 16 * MiB)
    if sector0 == "dos":
        q = sparse(tmp_path / "m.img", 16 * MiB)
        sfdisk(q, "label: dos\nstart=2048, size=4M, type=83\n")
        patch(p, 0, q.read_bytes()[:512])
    elif sector0 == "empty-table":
        patch(p, 446, bytes(16))
    else:
        patch(p, 0, bytes(512))
    r = subprocess.run(["sfdisk", "--json", str(p)], capture_output=True, text=True, check=False)
    label = json.loads(r.stdout)["partitiontable"]["label"] if r.stdout else None
    t = _table(p)
    assert (label, t.scheme) == ({"mbr": "dos", "none": None}[scheme], scheme)
    assert [x.start for x in t.partitions] == ([2048 * 512] if sector0 == "dos" else [])
    assert t.gpt is not None and t.gpt.primary_valid       # still described, flagged as ignored
    assert any(x.structure == "MBR" and "GPT" in x.message and x.severity != "info"
               for x in t.problems)


def test_hybrid_mbr(tmp_path: Path) -> None:
    p = _gpt_disk(tmp_path)
    sgdisk(p, "-h", "2:EE")
    t = _table(p)
    assert t.scheme == "hybrid" and t.mbr is not None and t.mbr.hybrid
    nested = sfdisk_json(p, "--label-nested", "dos")          # the MBR inside the hybrid
    assert [(e.lba_start, e.num_sectors, e.type) for e in t.mbr.entries] == \
        [(q["start"], q["size"], int(q["type"], 16)) for q in nested["partitions"]]
    assert [x.scheme for x in t.partitions] == ["gpt"] * 3
    assert _serious(t) == []
    # an MBR entry reaching into the primary GPT array
    patch(p, 446 + 8, struct.pack("<I", 2))
    assert any(x.structure.startswith("MBR entry") and "overlaps the GPT" in x.message
               for x in _table(p).problems)


def test_overlap_unaligned_and_first_mib(tmp_path: Path) -> None:
    p = sparse(tmp_path / "g.img", 16 * MiB)
    sgdisk(p, "-a", "1", "-n1:40:+1M", "-n2:4096:+2M")
    t = _table(p)
    msgs = {(x.severity, x.structure, x.message.split(" ")[0]) for x in t.problems}
    assert ("warning", "GPT partition 1", "starts") in msgs           # first MiB
    assert ("info", "GPT partition 1", "start") in msgs               # not 1 MiB aligned
    assert [x.aligned for x in t.partitions] == [False, True]
    # make partition 2 start inside partition 1, in both copies, CRCs fixed
    size = os.path.getsize(p)
    for entries, header in ((2, 1), (size // 512 - 33, size // 512 - 1)):
        patch(p, entries * 512 + 128 + 32, struct.pack("<Q", 1000))
        _fix_gpt_crcs(p, header)
    assert "overlap" in sgdisk_verify(p)
    assert any("overlaps partition 1" in x.message and x.structure == "GPT partition 2"
               for x in _table(p).problems)


def test_partition_outside_usable_area_and_disk(tmp_path: Path) -> None:
    p = _gpt_disk(tmp_path, 16 * MiB)
    size = os.path.getsize(p)
    for entries, header in ((2, 1), (size // 512 - 33, size // 512 - 1)):
        patch(p, entries * 512 + 2 * 128 + 40, struct.pack("<Q", size // 512 + 100))
        _fix_gpt_crcs(p, header)
    assert "No problems found" not in sgdisk_verify(p)
    probs = [x for x in _table(p).problems if x.structure == "GPT partition 3"]
    assert any("outside the usable" in x.message for x in probs)
    assert any("beyond the" in x.message for x in probs)


def test_absurd_entry_array_is_a_problem_naming_the_header_field(tmp_path: Path) -> None:
    p = _gpt_disk(tmp_path, 16 * MiB)
    for field, value, word in ((80, 10**9, "exceed"), (84, 100, "128 * 2^n")):
        q = tmp_path / f"h{field}.img"
        subprocess.run(["cp", "--sparse=always", str(p), str(q)], check=True)
        patch(q, 512 + field, struct.pack("<I", value))
        if field == 84:
            _fix_gpt_crcs(q, 1)     # a consistent header: only the entry size is absurd
        t = _table(q)
        hits = [x for x in t.problems if x.structure == "GPT primary header"
                and x.offset == 512 + field and word in x.message]
        assert hits, t.problems
        # the intact backup still serves the partitions (sgdisk does the same)
        assert len(t.partitions) == 3


def test_logical_partition_leaving_the_extended_one(tmp_path: Path) -> None:
    p = sparse(tmp_path / "m.img", 16 * MiB)
    sfdisk(p, "label: dos\nstart=2048, size=4M, type=83\ntype=5\nsize=2M, type=83\n")
    t = _table(p)
    assert _serious(t) == [] and t.mbr is not None and len(t.mbr.logical) == 1
    ebr = t.mbr.primary[1].lba_start * 512
    patch(p, ebr + 446 + 12, struct.pack("<I", 30000))        # past the extended end
    assert any("leave the extended partition" in x.message for x in _table(p).problems)


# -- hostile tables -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("small")
    g = sparse(d / "g.img", 2 * MiB)
    sgdisk(g, "-a", "8", "-n1:40:+256K", "-n2:0:+256K", "-h", "1")
    m = sparse(d / "m.img", 2 * MiB)
    sfdisk(m, "label: dos\nstart=64, size=256K, type=83\ntype=5\nsize=128K\nsize=128K\n"
              "size=128K\n")
    return {"gpt": g.read_bytes(), "mbr": m.read_bytes()}


def _mutate_and_read(disk: bytes, edits: list[tuple[int, int]]) -> None:
    buf = bytearray(disk)
    for off, val in edits:
        buf[off % len(buf)] = val
    data = bytes(buf)
    try:
        t = read_partition_table(lambda o, n: data[o:o + n], len(data), 512, "mutant")
    except FormatError:
        return
    assert t.scheme in ("gpt", "mbr", "hybrid", "none")
    for x in t.partitions:
        assert x.size >= 0 and isinstance(x.type_name, str)


_STRUCT_OFFSETS = st.one_of(st.integers(0, 34 * 512), st.integers(-34 * 512, -1),
                            st.integers(0, 2 * MiB))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["gpt", "mbr"]),
       edits=st.lists(st.tuples(_STRUCT_OFFSETS, st.integers(0, 255)), min_size=1, max_size=12))
def test_mutated_tables_give_problems_or_format_errors(small_disks: dict[str, bytes], kind: str,
                                                       edits: list[tuple[int, int]]) -> None:
    _mutate_and_read(small_disks[kind], edits)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from([(24, "<Q"), (32, "<Q"), (40, "<Q"), (48, "<Q"), (72, "<Q"),
                              (80, "<I"), (84, "<I"), (12, "<I")]),
       value=st.integers(0, 2**32 - 1) | st.integers(0, 2**64 - 1),
       fix_crc=st.booleans())
def test_hostile_header_fields_are_bounded(small_disks: dict[str, bytes], field: tuple[int, str],
                                          value: int, fix_crc: bool) -> None:
    off, fmt = field
    buf = bytearray(small_disks["gpt"])
    struct.pack_into(fmt, buf, 512 + off, value % (1 << (8 * struct.calcsize(fmt))))
    if fix_crc:
        size = min(max(struct.unpack_from("<I", buf, 512 + 12)[0], 92), 512)
        struct.pack_into("<I", buf, 512 + 16, 0)
        struct.pack_into("<I", buf, 512 + 16, zlib.crc32(bytes(buf[512:512 + size])))
    data = bytes(buf)
    t = read_partition_table(lambda o, n: data[o:o + n], len(data), 512, "hostile")
    assert t.scheme in ("gpt", "hybrid", "mbr", "none")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from([(40, "<Q"), (48, "<Q"), (72, "<Q"), (80, "<I"), (84, "<I"),
                              (12, "<I")]),
       value=st.integers(0, 2**64 - 1), grow=st.integers(-MiB, 4 * MiB))
def test_relocation_of_hostile_headers_is_refused_or_stays_on_the_disk(
        small_disks: dict[str, bytes], field: tuple[int, str], value: int, grow: int) -> None:
    off, fmt = field
    buf = bytearray(small_disks["gpt"])
    struct.pack_into(fmt, buf, 512 + off, value % (1 << (8 * struct.calcsize(fmt))))
    size = min(max(struct.unpack_from("<I", buf, 512 + 12)[0], 92), 512)
    struct.pack_into("<I", buf, 512 + 16, 0)
    struct.pack_into("<I", buf, 512 + 16, zlib.crc32(bytes(buf[512:512 + size])))
    data = bytes(buf)
    new_size = len(data) + grow // 512 * 512
    try:
        writes = relocate_gpt_backup(lambda o, n: data[o:o + n], len(data), new_size)
    except FormatError:
        return
    assert all(0 <= o and o + len(b) <= new_size for o, b in writes)


def test_overlapping_mbr_partitions_match_sfdisk_verify(tmp_path: Path) -> None:
    p = sparse(tmp_path / "m.img", 16 * MiB)
    sfdisk(p, "label: dos\nstart=2048, size=4M, type=83\nstart=10240, size=4M, type=83\n")
    assert _serious(_table(p)) == []
    patch(p, 446 + 16 + 8, struct.pack("<I", 6144))        # partition 2 now starts in 1
    r = subprocess.run(["sfdisk", "-V", str(p)], capture_output=True, text=True, check=False)
    assert "Partition 1: overlaps partition 2" in r.stderr      # sfdisk -V exits 0 anyway
    assert [x.message for x in _table(p).problems if x.severity == "error"] == \
        ["overlaps partition 1"]


@pytest.mark.parametrize("size", [0, 100, 511, 512, 1000, 4096 + 8])
@pytest.mark.parametrize("sector", [512, 4096])
def test_tiny_disks_have_no_table(size: int, sector: int) -> None:
    data = bytes(size)
    t = read_partition_table(lambda o, n: data[o:o + n], size, sector)
    assert (t.scheme, t.partitions, t.problems) == ("none", [], [])
