from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vhdtool.formats import (CorruptImage, FormatError, Kind, MissingBackingFile, TruncatedImage,
                              open_image, probe)
from vhdtool.formats.vhd import (CHS_MAX, FOOTER, VhdImage, build_fixed_footer, chs_geometry,
                                 parse_footer, sizes_by_reader, vhd_checksum)
from tests.oracle import (assert_reads_like_qemu, needs_qemu, qemu_img, qemu_info, qemu_io,
                          qemu_to_raw, qemu_virtual_size, write_pattern)

MiB = 1 << 20
GiB = 1 << 30


# -- footer, checksum, geometry --------------------------------------------------------------------

@pytest.mark.parametrize("size, chs", [
    (20 * GiB, (41610, 16, 63)),          # spec vectors (formats.md 1.2, verified with qemu)
    (4 * GiB, (8322, 16, 63)),
    (127 * GiB, (65278, 16, 255)),
    (263_454_720, (510, 16, 63)),
    (4 * 1024 * GiB, CHS_MAX),
])
def test_chs_geometry_matches_the_spec_vectors(size: int, chs: tuple[int, int, int]) -> None:
    assert chs_geometry(size) == chs


@needs_qemu
@pytest.mark.parametrize("size", [MiB, 20 * MiB, 4 * GiB, 127 * GiB, 3 * GiB + 5 * 512])
def test_chs_geometry_matches_qemu_create(tmp_path: Path, size: int) -> None:
    """qemu-img create -f vpc writes the spec's CHS of its (rounded-up) size: read it back."""
    p = tmp_path / "q.vhd"
    qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=fixed", p, str(size))
    with open(p, "rb") as f:
        f.seek(-512, os.SEEK_END)
        footer = parse_footer(f.read(), p, os.path.getsize(p) - 512)
    assert footer.checksum == vhd_checksum(footer.raw)
    assert chs_geometry(footer.current_size) == footer.disk_geometry
    assert footer.chs_size == footer.current_size == qemu_virtual_size(p, "vpc")


@needs_qemu
@pytest.mark.parametrize("size", [MiB, 30 * GiB + MiB, 21474754560, 2040 * GiB])
def test_built_fixed_footer_is_read_by_qemu_as_exactly_size(tmp_path: Path, size: int) -> None:
    p = tmp_path / "f.vhd"
    with open(p, "wb") as f:
        f.truncate(size)
        f.seek(size)
        f.write(build_fixed_footer(size))
    assert qemu_virtual_size(p, "vpc") == size
    with VhdImage(p) as img:
        assert img.virtual_size == size and img.footer.checksum_ok
        assert img.footer.offset == size and img.problems == []


@needs_qemu
@pytest.mark.parametrize("size", [2040 * GiB + MiB, 2048 * GiB, 4096 * GiB])
def test_qemu_refuses_vhds_over_2040_gib_whatever_the_footer(tmp_path: Path, size: int) -> None:
    """qemu 7.2 refuses any VHD above 0xff000000 sectors: our footer cannot change that."""
    p = tmp_path / "big.vhd"
    with open(p, "wb") as f:
        f.truncate(size)
        f.seek(size)
        f.write(build_fixed_footer(size))
    with pytest.raises(AssertionError, match="too large"):
        qemu_info(p, "vpc")
    with VhdImage(p) as img:
        assert img.virtual_size == size
        assert sizes_by_reader(img.footer)["hyper-v"] == size
        assert any("2040 GiB" in pr.message for pr in img.problems)


def test_footer_struct_round_trips_and_checksum_is_ones_complement() -> None:
    raw = build_fixed_footer(64 * MiB, unique_id=bytes(range(16)), timestamp=12345)
    assert len(raw) == 512 == FOOTER.sizeof()
    f = parse_footer(raw, None, 0)
    assert (f.cookie, f.features, f.version, f.data_offset) == (b"conectix", 2, 0x10000, 2**64 - 1)
    assert (f.current_size, f.original_size, f.disk_type_name) == (64 * MiB, 64 * MiB, "fixed")
    assert f.unique_id == bytes(range(16)) and f.timestamp == 12345
    assert f.disk_geometry == CHS_MAX and f.checksum_ok
    assert f.checksum == (~(sum(raw) - sum(raw[64:68]))) & 0xFFFFFFFF
    assert FOOTER.build(FOOTER.parse(raw)) == raw
    bad = raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]
    with pytest.raises(CorruptImage, match="VHD footer.*checksum"):
        parse_footer(bad, "x.vhd", 7)
    assert not parse_footer(bad, "x.vhd", 7, verify=False).checksum_ok
    with pytest.raises(CorruptImage, match="cookie"):
        parse_footer(b"X" + raw[1:], "x.vhd", 7)


def test_sizes_by_reader_follow_the_creator_rules() -> None:
    chs = chs_geometry(20 * GiB)
    for app, qemu in [(b"vhdt", 21474754560), (b"win ", 20 * GiB), (b"qem2", 20 * GiB),
                      (b"wa\0\0", 21474754560), (b"d2v\0", 21474754560)]:
        f = parse_footer(build_fixed_footer(20 * GiB, creator_app=app, geometry=chs), None, 0)
        s = sizes_by_reader(f)
        assert s["qemu"] == qemu and s["hyper-v"] == s["current_size"] == 20 * GiB
        assert s["chs"] == 21474754560
    f = parse_footer(build_fixed_footer(20 * GiB, creator_app=b"vpc "), None, 0)
    assert sizes_by_reader(f)["qemu"] == 20 * GiB          # CHS maxed: qemu uses current_size


# -- fixed ---------------------------------------------------------------------------------------

def _fixed_with_data(tmp_path: Path, size: int, runs: list[tuple[int, int]],
                     qemu_opts: str) -> Path:
    raw = write_pattern(tmp_path / "src.raw", size, runs)
    out = tmp_path / "f.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", qemu_opts, raw, out)
    raw.unlink()
    return out


@needs_qemu
@pytest.mark.parametrize("opts", ["subformat=fixed", "subformat=fixed,force_size"])
def test_fixed_reads_like_qemu(tmp_path: Path, opts: str) -> None:
    p = _fixed_with_data(tmp_path, 21 * MiB + 4096,
                         [(0, 4096), (3 * MiB + 512, 2 * MiB), (20 * MiB, MiB + 4096)], opts)
    qemu_io(p, "vpc", "write -z 3M 64k")
    assert probe(p) == "vpc"
    with open_image(p) as img:
        assert isinstance(img, VhdImage) and img.subformat == "fixed"
        assert img.virtual_size == qemu_virtual_size(p, "vpc")
        assert_reads_like_qemu(img, p, "vpc", tmp_path)
        data = [e for e in img.extents() if e.kind is Kind.DATA]
        assert data and all(e.host_offset == e.offset for e in data)
        info = img.info()
        assert info["creator_app"] == ("qem2" if "force" in opts else "qemu")
        assert info["sizes_by_reader"]["qemu"] == img.virtual_size


def test_fixed_problems_current_size_and_rewrapped(tmp_path: Path) -> None:
    inner = build_fixed_footer(4 * MiB)
    p = tmp_path / "w.vhd"
    with open(p, "wb") as f:            # a fixed VHD whose data is itself a fixed VHD
        f.truncate(4 * MiB)
        f.seek(4 * MiB)
        f.write(inner)
        f.write(build_fixed_footer(4 * MiB + 512))
    with VhdImage(p) as img:
        assert img.virtual_size == 4 * MiB + 512
        assert any("wrapped" in pr.message for pr in img.problems)
    q = tmp_path / "short.vhd"
    with open(q, "wb") as f:            # current_size larger than the data
        f.truncate(MiB)
        f.seek(MiB)
        f.write(build_fixed_footer(2 * MiB))
    with VhdImage(q) as img:
        assert any(pr.severity == "error" and "current_size" in pr.message for pr in img.problems)
        assert img.read(2 * MiB - 10, 10) == bytes(10)


def test_legacy_511_byte_footer(tmp_path: Path) -> None:
    footer = build_fixed_footer(MiB)
    assert footer[-1] == 0
    p = tmp_path / "old.vhd"
    data = os.urandom(MiB)
    p.write_bytes(data + footer[:511])
    assert probe(p) == "vpc"
    with open_image(p) as img:
        assert img.virtual_size == MiB and img.footer.checksum_ok
        assert img.read(0, MiB) == data
        assert any("511" in pr.message for pr in img.problems)


def test_not_a_vhd(tmp_path: Path) -> None:
    p = tmp_path / "x.vhd"
    p.write_bytes(bytes(4096))
    with pytest.raises(CorruptImage, match="VHD footer"):
        VhdImage(p)
    p.write_bytes(b"conectix")
    with pytest.raises(FormatError, match="VHD footer"):
        VhdImage(p)


# -- dynamic -------------------------------------------------------------------------------------

def qemu_map(path: Path) -> list[tuple[int, int, int]]:
    """qemu-img map's DATA runs as (guest offset, length, host offset), adjacent runs merged."""
    out: list[tuple[int, int, int]] = []
    for r in json.loads(qemu_img("map", "--output=json", "-f", "vpc", path)):
        if not r["data"]:
            continue
        if out and out[-1][0] + out[-1][1] == r["start"] and out[-1][2] + out[-1][1] == r["offset"]:
            out[-1] = (out[-1][0], out[-1][1] + r["length"], out[-1][2])
        else:
            out.append((r["start"], r["length"], r["offset"]))
    return out


def our_map(img) -> list[tuple[int, int, int]]:
    return [(e.offset, e.length, e.host_offset) for e in img.extents() if e.kind is Kind.DATA]


def _dynamic(tmp_path: Path, size: int, runs: list[tuple[int, int]], opts: str = "",
             name: str = "d.vhd") -> Path:
    raw = write_pattern(tmp_path / (name + ".raw"), size, runs, seed=len(name))
    out = tmp_path / name
    qemu_img("convert", "-f", "raw", "-O", "vpc", *(["-o", opts] if opts else []), raw, out)
    raw.unlink()
    return out


@needs_qemu
@pytest.mark.parametrize("opts", ["", "force_size", "subformat=dynamic,force_size"])
def test_dynamic_reads_and_maps_like_qemu(tmp_path: Path, opts: str) -> None:
    p = _dynamic(tmp_path, 30 * MiB + 4096,
                 [(0, 4096), (3 * MiB + 512, 2 * MiB), (20 * MiB, MiB + 4096), (30 * MiB, 4096)],
                 opts)
    qemu_io(p, "vpc", "write -P 0x5a 7M 1k", "write -z 3M 64k", "write -P 0x33 29M 4k")
    assert probe(p) == "vpc"
    with open_image(p) as img:
        assert img.subformat == "dynamic"
        assert_reads_like_qemu(img, p, "vpc", tmp_path)
        assert our_map(img) == qemu_map(p)
        info = img.info()
        assert info["block_size"] == 2 * MiB and info["allocated_blocks"] == 7
        assert info["bat_entries"] >= -(-img.virtual_size // (2 * MiB))
        assert info["footer_checksum_ok"] and info["header_checksum_ok"]


@needs_qemu
def test_hyperv_sample(sample, tmp_path: Path) -> None:
    p = sample("hyperv2012r2-dynamic.vhd")
    with open_image(p) as img:
        assert img.virtual_size == 136_365_211_648 == qemu_virtual_size(p, "vpc")
        assert img.subformat == "dynamic"
        info = img.info()
        assert info["creator_app"] == "win " and info["creator_version"] == "6.3"
        assert info["sizes_by_reader"]["chs"] == 65278 * 16 * 255 * 512
        assert info["sizes_by_reader"]["qemu"] == img.virtual_size
        assert our_map(img) == qemu_map(p) == []
        assert img.read(img.virtual_size - MiB, 2 * MiB) == bytes(MiB)
        assert not any(pr.severity == "error" for pr in img.problems)
        assert info["allocated_blocks"] == 0 and _bitmap_problems(img) == []


def test_bitmap_runs_msb_first() -> None:
    from vhdtool.formats.vhd import bitmap_runs
    assert bitmap_runs(b"\xff" * 512, 4096) == [(0, 4096, True)]
    assert bitmap_runs(bytes(512), 4096) == [(0, 4096, False)]
    assert bitmap_runs(b"\x80\x00", 16) == [(0, 1, True), (1, 16, False)]
    assert bitmap_runs(b"\x0f\xf0", 16) == [(0, 4, False), (4, 12, True), (12, 16, False)]
    assert bitmap_runs(b"\x01", 8) == [(0, 7, False), (7, 8, True)]
    assert bitmap_runs(b"\x80", 1) == [(0, 1, True)]
    assert bitmap_runs(b"\xfe\xff", 12) == [(0, 7, True), (7, 8, False), (8, 12, True)]


# -- differencing --------------------------------------------------------------------------------
# qemu-img cannot create a differencing VHD, so one is made here from a qemu dynamic VHD by editing
# bytes at the spec's offsets (independently of formats.vhd's structs): disk type 4 in both footer
# copies, parent unique id/timestamp/name and W2ru/W2ku locators in the dynamic header, locator
# data where the footer was, checksums recomputed.  qemu 7.2 opens such a file as a plain dynamic
# disk (verified: it ignores the parent and the bitmaps), so the expected guest content is computed
# from qemu's readings: the parent's bytes, overlaid with the child's blocks that qemu-img map
# reports, except the sectors whose bitmap bits the test cleared (those come from the parent).

SIZE = 20 * MiB


def _sum_checksum(buf: bytearray, start: int, length: int, field: int) -> None:
    buf[field:field + 4] = bytes(4)
    struct.pack_into(">I", buf, field, ~sum(buf[start:start + length]) & 0xFFFFFFFF)


def make_differencing(child: Path, parent: Path, locators: list[tuple[bytes, str]],
                      parent_uuid: bytes | None = None, name: str = "parent.vhd") -> None:
    with open(parent, "rb") as f:
        f.seek(-512, os.SEEK_END)
        pfooter = f.read()
    b = bytearray(child.read_bytes())
    footer = bytearray(b[-512:])
    del b[-512:]
    h = struct.unpack_from(">Q", footer, 16)[0]
    b[h + 40:h + 56] = parent_uuid or pfooter[68:84]
    b[h + 56:h + 60] = pfooter[24:28]
    b[h + 64:h + 576] = name.encode("utf-16-be").ljust(512, b"\0")
    for n, (code, text) in enumerate(locators):
        data = text.encode("utf-16-le")
        off = len(b)
        b += data.ljust(512, b"\0")
        struct.pack_into(">4sIIIQ", b, h + 576 + 24 * n, code, 512, len(data), 0, off)
    _sum_checksum(b, h, 1024, h + 36)
    footer[60:64] = struct.pack(">I", 4)
    _sum_checksum(footer, 0, 512, 64)
    b[0:512] = footer
    child.write_bytes(bytes(b + footer))


def _bitmap_offset(path: Path, block: int) -> int:
    b = path.read_bytes()
    h = struct.unpack_from(">Q", b, len(b) - 512 + 16)[0]
    bat = struct.unpack_from(">Q", b, h + 16)[0]
    return struct.unpack_from(">I", b, bat + 4 * block)[0] * 512


def clear_bitmap_bits(path: Path, block: int, sectors: range | list[int]) -> None:
    """Mark ``sectors`` of ``block`` as not present (MSB-first bits), in place."""
    bitmap = _bitmap_offset(path, block)
    b = bytearray(path.read_bytes())
    for s in sectors:
        b[bitmap + s // 8] &= ~(0x80 >> (s % 8)) & 0xFF
    path.write_bytes(bytes(b))


@pytest.fixture
def diff_pair(tmp_path: Path) -> tuple[Path, Path]:
    parent = _dynamic(tmp_path, SIZE, [(0, SIZE)], name="parent.vhd")
    child = tmp_path / "child.vhd"
    qemu_img("create", "-q", "-f", "vpc", child, str(SIZE))
    qemu_io(child, "vpc", "write -P 0x11 0 4k", "write -P 0x22 3M 1M", "write -P 0x33 9M 512",
            "write -P 0x44 15M 2M")
    return parent, child


def expected_layers(parent: Path, child: Path, cleared: dict[int, range], tmp: Path) -> bytes:
    ptext = qemu_to_raw(parent, "vpc", tmp / "p.raw").read_bytes()
    mine = qemu_to_raw(child, "vpc", tmp / "c.raw").read_bytes()      # qemu: child alone
    want = bytearray(ptext)
    for start, length, _host in qemu_map(child):
        want[start:start + length] = mine[start:start + length]
    for block, sectors in cleared.items():
        for s in sectors:
            a = block * 2 * MiB + s * 512
            want[a:a + 512] = ptext[a:a + 512]
    return bytes(want)


@needs_qemu
def test_differencing_reads_parent_under_child(diff_pair, tmp_path: Path) -> None:
    parent, child = diff_pair
    cleared = {1: range(100, 300), 7: range(0, 4096, 3)}      # 3M..4M is data, 15M..17M too
    clear_bitmap_bits(child, 1, cleared[1])
    clear_bitmap_bits(child, 7, cleared[7])
    make_differencing(child, parent, [(b"MacX", "file://nowhere/parent.vhd"),
                                      (b"W2ru", ".\\parent.vhd")])
    assert qemu_virtual_size(child, "vpc") == qemu_virtual_size(parent, "vpc")
    want = expected_layers(parent, child, cleared, tmp_path)
    with open_image(child) as img:
        assert img.subformat == "differencing"
        assert img.backing is not None and Path(img.backing.path).name == "parent.vhd"
        assert img.read(0, len(want)) == want
        kinds = {(e.source.path if e.source else img.path) for e in img.extents()
                 if e.kind is Kind.DATA}
        assert kinds == {str(child), str(parent)}
        info = img.info()
        assert info["parent_unique_id"] == str(uuid.UUID(bytes=img.backing.footer.unique_id))
        assert info["parent_locators"] == {"W2ru": [".\\parent.vhd"], "W2ku": [],
                                           "name": "parent.vhd"}


@needs_qemu
def test_differencing_absolute_locator_falls_back_to_the_childs_folder(diff_pair) -> None:
    parent, child = diff_pair
    make_differencing(child, parent, [(b"W2ku", "C:\\Hyper-V\\Disks\\parent.vhd")], name="")
    with open_image(child) as img:
        assert Path(img.backing.path) == parent
        assert img.read(3 * MiB, 4) == b"\x22" * 4


@needs_qemu
def test_differencing_wrong_or_missing_parent(diff_pair, tmp_path: Path) -> None:
    parent, child = diff_pair
    orig = child.read_bytes()
    make_differencing(child, parent, [(b"W2ru", ".\\parent.vhd")], parent_uuid=bytes(16))
    with pytest.raises(MissingBackingFile, match="unique id"):
        open_image(child)
    child.write_bytes(orig)
    make_differencing(child, parent, [(b"W2ru", ".\\gone.vhd")], name="gone.vhd")
    with pytest.raises(MissingBackingFile, match="not found.*gone.vhd"):
        open_image(child)
    child.write_bytes(orig)
    make_differencing(child, child, [(b"W2ru", ".\\child.vhd")], name="child.vhd")
    with pytest.raises(FormatError, match="loop"):
        open_image(child)


# -- hostile input -------------------------------------------------------------------------------

def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _header_offset(path: Path) -> int:
    with open(path, "rb") as f:
        f.seek(-512 + 16, os.SEEK_END)
        return struct.unpack(">Q", f.read(8))[0]


@needs_qemu
@pytest.mark.parametrize("field, value, error, structure", [
    (16, struct.pack(">Q", 1 << 40), "TruncatedImage", "VHD BAT"),            # table_offset
    (28, struct.pack(">I", 0xFFFFFFFF), None, None),                           # extra entries: ok
    (28, struct.pack(">I", 1), "CorruptImage", "VHD dynamic header"),          # too few entries
    (32, struct.pack(">I", 3 * 1024 * 1024), "CorruptImage", "VHD dynamic header"),
    (32, struct.pack(">I", 1 << 31), "CorruptImage", "VHD dynamic header"),
    (32, struct.pack(">I", 256), "CorruptImage", "VHD dynamic header"),
    (0, b"cxspars3", "CorruptImage", "VHD dynamic header"),
])
def test_hostile_dynamic_header(tmp_path: Path, field: int, value: bytes, error: str | None,
                                structure: str | None) -> None:
    p = _dynamic(tmp_path, 8 * MiB, [(MiB, MiB)])
    _patch(p, _header_offset(p) + field, value)
    if error is None:
        with open_image(p) as img:
            assert any(pr.structure == "VHD dynamic header" for pr in img.problems)
        return
    with pytest.raises(FormatError) as exc:
        open_image(p)
    assert type(exc.value).__name__ == error and exc.value.structure == structure
    assert exc.value.path == str(p) and exc.value.offset is not None


@needs_qemu
def test_hostile_bat_and_data_offset(tmp_path: Path) -> None:
    p = _dynamic(tmp_path, 8 * MiB, [(MiB, MiB)])
    h = _header_offset(p)
    with open(p, "rb") as f:
        f.seek(h + 16)
        bat = struct.unpack(">Q", f.read(8))[0]
    orig = p.read_bytes()
    _patch(p, bat + 4, struct.pack(">I", 0x7FFFFFF0))                   # block past EOF
    with pytest.raises(TruncatedImage, match="VHD BAT.*block 1"):
        open_image(p)
    p.write_bytes(orig)
    size = len(orig)
    _patch(p, size - 512 + 16, struct.pack(">Q", 1 << 50))              # data_offset past EOF
    _patch(p, 0, b"XXXXXXXX")                                           # and no usable copy
    with pytest.raises(CorruptImage, match="VHD footer.*data_offset"):
        open_image(p)
    p.write_bytes(orig[:size - 3 * MiB])                                # truncated mid-block
    with pytest.raises(FormatError):
        open_image(p)


@needs_qemu
def test_dynamic_problems_are_reported_not_fatal(tmp_path: Path) -> None:
    p = _dynamic(tmp_path, 8 * MiB, [(MiB, MiB)])
    want = qemu_to_raw(p, "vpc", tmp_path / "want.raw").read_bytes()
    size = p.stat().st_size
    _patch(p, size - 512 + 30, b"\x07")         # end footer: creator_app byte, checksum now bad
    _patch(p, _header_offset(p) + 100, b"\x01")                        # header: checksum bad
    with open_image(p) as img:
        found = {(pr.structure, pr.severity) for pr in img.problems}
        assert ("VHD footer", "error") in found and ("VHD dynamic header", "error") in found
        assert img.footer.offset == 0           # the spec's fallback: the valid copy at 0
        assert img.read(0, len(want)) == want
    _patch(p, 0, b"X")                           # both copies unusable: end one, checksum bad
    with open_image(p) as img:
        assert img.footer.offset == size - 512 and not img.footer.checksum_ok
        assert img.read(0, len(want)) == want


# -- mutation fuzzing ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory) -> dict[str, bytes]:
    """Small valid images: qemu dynamic (2 MiB blocks, partial bitmap), fixed, differencing."""
    d = tmp_path_factory.mktemp("vhdfuzz")
    dyn = _dynamic(d, 6 * MiB, [(512, 4096), (2 * MiB + 7 * 512, MiB), (5 * MiB, 4096)])
    clear_bitmap_bits(dyn, 1, range(10, 40))
    fixed = _fixed_with_data(d, 2 * MiB, [(4096, 8192)], "subformat=fixed")
    parent = _dynamic(d, 6 * MiB, [(0, 6 * MiB)], name="parent.vhd")
    child = _dynamic(d, 6 * MiB, [(3 * MiB, 4096)], name="child.vhd")
    make_differencing(child, parent, [(b"W2ru", ".\\parent.vhd")])
    return {"dyn": dyn.read_bytes(), "fixed": fixed.read_bytes(), "child": child.read_bytes(),
            "parent_path": str(parent).encode()}


def _check_consistent(img) -> None:
    """Reads stay within bounds, extents tile the range, overlapping reads agree."""
    n = min(img.virtual_size, 8 * MiB)
    ext = list(img.extents(0, n))
    assert sum(e.length for e in ext) == n and (not ext or ext[0].offset == 0)
    whole = img.read(0, n)
    assert len(whole) == n
    if n > 3 * MiB:
        assert img.read(MiB + 512 * 3, 2 * MiB) == whole[MiB + 1536:3 * MiB + 1536]
    for e in ext:
        if e.kind is not Kind.DATA:
            assert whole[e.offset:e.end] == bytes(e.length)
    img.info()


@needs_qemu
@settings(max_examples=int(os.environ.get("VHD_FUZZ_EXAMPLES", "150")), deadline=2000,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(["dyn", "fixed", "child"]),
       flips=st.lists(st.tuples(st.sampled_from(["footer", "copy", "header", "bat", "bitmap",
                                                 "locator", "any"]),
                                st.integers(0, 1023), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 7 * MiB)))
def test_mutated_images_fail_cleanly_or_read_consistently(fuzz_bases, tmp_path: Path, base: str,
                                                          flips, cut) -> None:
    b = bytearray(fuzz_bases[base])
    size = len(b)
    h = struct.unpack_from(">Q", b, size - 512 + 16)[0] if base != "fixed" else 0
    starts = {"footer": size - 512, "copy": 0, "header": h, "bat": h + 1024,
              "bitmap": 3 * 512 + 512, "locator": size - 1024, "any": 0}
    for region, off, x in flips:
        at = (starts[region] + off) % size if region != "any" else (off * 7919) % size
        b[at] ^= x
    if cut is not None:
        del b[cut:]
    p = tmp_path / f"{base}.vhd"
    p.write_bytes(bytes(b))
    if base == "child":
        shutil.copyfile(fuzz_bases["parent_path"].decode(), tmp_path / "parent.vhd")
    try:
        img = VhdImage(p)
    except FormatError as e:
        event(f"open: {type(e).__name__} {e.structure}")
        assert e.path == str(p) or e.path.endswith("parent.vhd")
        return
    with img:
        try:
            _check_consistent(img)
            event(f"read {img.subformat}, {len(img.problems)} problems")
        except FormatError as e:
            event(f"read: {type(e).__name__} {e.structure}")


@needs_qemu
def test_fixed_vhd_holding_a_dynamic_vhd_is_read_as_fixed(tmp_path: Path) -> None:
    inner = _dynamic(tmp_path, 4 * MiB, [(0, MiB)], name="inner.vhd")
    data = inner.read_bytes()
    size = -(-len(data) // MiB) * MiB
    p = tmp_path / "outer.vhd"
    p.write_bytes(data.ljust(size, b"\0") + build_fixed_footer(size))
    with VhdImage(p) as img:
        assert img.subformat == "fixed" and img.virtual_size == size
        assert img.problems == [] and img.read(0, len(data)) == data


@needs_qemu
def test_overlapping_blocks_are_reported(tmp_path: Path) -> None:
    p = _dynamic(tmp_path, 8 * MiB, [(0, MiB), (2 * MiB, MiB)])
    with open(p, "rb") as f:
        f.seek(_header_offset(p) + 16)
        bat = struct.unpack(">Q", f.read(8))[0]
        f.seek(bat)
        first = f.read(4)
    _patch(p, bat + 4, first)                   # block 1 now shares block 0's place
    with open_image(p) as img:
        assert any("blocks 0 and 1 overlap" in pr.message and pr.structure == "VHD BAT"
                   for pr in img.problems)
        assert img.read(2 * MiB, MiB) == img.read(0, MiB)


@needs_qemu
def test_differencing_chain_of_three(diff_pair, tmp_path: Path) -> None:
    parent, mid = diff_pair
    make_differencing(mid, parent, [(b"W2ru", ".\\parent.vhd")])
    top = tmp_path / "top.vhd"
    qemu_img("create", "-q", "-f", "vpc", top, str(SIZE))
    qemu_io(top, "vpc", "write -P 0x77 15M 4k")
    clear_bitmap_bits(top, 7, range(0, 2048))             # qemu allocated all of 14M..16M:
    clear_bitmap_bits(top, 7, range(2056, 4096))          # keep only the 4 KiB written at 15M
    make_differencing(top, mid, [(b"W2ru", ".\\child.vhd")], name="child.vhd")
    ptext = qemu_to_raw(parent, "vpc", tmp_path / "p.raw").read_bytes()
    with open_image(top) as img:
        got = img.read(0, SIZE)
        assert got[15 * MiB:15 * MiB + 4096] == b"\x77" * 4096                 # top
        assert got[15 * MiB + 4096:16 * MiB] == b"\x44" * (MiB - 4096)         # mid
        assert got[14 * MiB:15 * MiB] == bytes(MiB)                            # mid's zeros
        assert got[3 * MiB:4 * MiB] == b"\x22" * MiB                           # mid
        assert got[5 * MiB:8 * MiB] == ptext[5 * MiB:8 * MiB]                  # parent
        sources = {Path(e.source.path).name if e.source else "top.vhd"
                   for e in img.extents() if e.kind is Kind.DATA}
        assert sources == {"top.vhd", "child.vhd", "parent.vhd"}
        assert img.backing.backing is not None


@needs_qemu
@pytest.mark.parametrize("app", [b"win ", b"qem2", b"d2v ", b"d2v\0", b"CTXS", b"tap\0", b"vpc ",
                                 b"qemu", b"wa\0\0", b"vbox", b"vhdt"])
@pytest.mark.parametrize("geometry", [(40, 16, 63), CHS_MAX])
def test_sizes_by_reader_predicts_qemu(tmp_path: Path, app: bytes,
                                       geometry: tuple[int, int, int]) -> None:
    size = 24 * MiB                             # CHS 40/16/63 = 20,643,840 bytes: not the size
    p = tmp_path / "s.vhd"
    with open(p, "wb") as f:
        f.truncate(size)
        f.seek(size)
        f.write(build_fixed_footer(size, creator_app=app, geometry=geometry))
    with VhdImage(p) as img:
        assert sizes_by_reader(img.footer)["qemu"] == qemu_virtual_size(p, "vpc")
        assert img.virtual_size == size


def _bitmap_problems(img) -> list:
    return [pr for pr in img.problems if pr.structure == "VHD block bitmap"]


@needs_qemu
def test_dynamic_clear_bits_over_data_read_like_qemu_and_are_reported(tmp_path: Path) -> None:
    """A dynamic disk's block reads as its stored data, as qemu-img reads it (formats/vhd.py doc,
    "Bitmaps"); clear bits over non-zero data are reported, naming the block, the bitmap's offset
    and the guest sectors."""
    p = _dynamic(tmp_path, 6 * MiB, [(0, 6 * MiB)])
    cleared = [*range(5, 9), 700, *range(4000, 4096)]
    clear_bitmap_bits(p, 1, cleared)
    with open_image(p) as img:
        assert_reads_like_qemu(img, p, "vpc", tmp_path)
        assert our_map(img) == qemu_map(p)
        [pr] = _bitmap_problems(img)
        assert pr.severity == "warning" and pr.offset == _bitmap_offset(p, 1)
        assert pr.message.startswith(f"block 1: {len(cleared)} sector(s) whose bit is clear")
        assert "(guest sectors 4101-4104, 4796, 8096-8191);" in pr.message
        assert "qemu-img reads that data" in pr.message and "read zeros" in pr.message


@needs_qemu
def test_dynamic_clear_bits_over_zeros_are_not_reported(tmp_path: Path) -> None:
    """Partial bitmaps over zeroed sectors (what DiscUtils writes) agree with every reader."""
    p = _dynamic(tmp_path, 6 * MiB, [(2 * MiB, 4096), (4 * MiB, 6 * 512)])
    clear_bitmap_bits(p, 1, range(8, 4096))               # data only in sectors 0-7 of block 1
    clear_bitmap_bits(p, 2, range(4, 4096))               # sectors 4-5 hold data: reported
    with open_image(p) as img:
        assert_reads_like_qemu(img, p, "vpc", tmp_path)
        [pr] = _bitmap_problems(img)
        assert pr.offset == _bitmap_offset(p, 2)
        assert "block 2: 2 sector(s)" in pr.message and "(guest sectors 8196-8197);" in pr.message


@needs_qemu
def test_dynamic_bitmap_problems_are_bounded(tmp_path: Path) -> None:
    p = _dynamic(tmp_path, 24 * MiB, [(0, 24 * MiB)])
    for block in range(12):
        clear_bitmap_bits(p, block, [block])
    with open_image(p) as img:
        found = _bitmap_problems(img)
        assert [pr.offset for pr in found[:8]] == [_bitmap_offset(p, i) for i in range(8)]
        assert found[8].offset is None and found[8].message.startswith("4 more block(s)")
        assert len(found) == 9
        assert_reads_like_qemu(img, p, "vpc", tmp_path)


@needs_qemu
def test_dynamic_with_legacy_511_byte_footer(tmp_path: Path) -> None:
    p = _dynamic(tmp_path, 6 * MiB, [(MiB, 3 * MiB)])
    with open(p, "r+b") as f:                   # drop the footer's last (reserved, zero) byte
        f.truncate(p.stat().st_size - 1)
    with open_image(p) as img:
        assert len(img.footer.raw) == 511 and img.footer.checksum_ok
        assert [pr.message for pr in img.problems if pr.severity != "info"] == []
        assert_reads_like_qemu(img, p, "vpc", tmp_path)       # qemu uses the copy at offset 0
