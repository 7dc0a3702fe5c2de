from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from formats import CorruptImage, FormatError, Kind, open_image, probe
from formats.vhd import (CHS_MAX, FOOTER, VhdImage, build_fixed_footer, chs_geometry,
                         parse_footer, sizes_by_reader, vhd_checksum)
from tests.oracle import (assert_reads_like_qemu, needs_qemu, qemu_img, qemu_info, qemu_io,
                          qemu_virtual_size, write_pattern)

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
@pytest.mark.parametrize("size", [MiB, 30 * GiB + MiB, 21474754560])
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
def test_qemu_refuses_vhds_over_2040_gib_whatever_the_footer(tmp_path: Path) -> None:
    """qemu 7.2 refuses any VHD above 0xff000000 sectors: our footer cannot change that."""
    size = 2 * 1024 * GiB
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
