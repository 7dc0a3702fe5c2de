"""vhdtool.blkid: TYPE/UUID/LABEL as ``blkid -p`` reports them, and never an exception on noise."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhdtool.blkid import PROBE_BYTES, probe

from .nativeimages import Part, blkid, make_fs

MAGICS = [(0, b"XFSB"), (0, b"LUKS\xba\xbe"), (512, b"LABELONE"), (536, b"LVM2 001"),
          (3, b"NTFS    "), (510, b"\x55\xaa"), (54, b"FAT16   "), (82, b"FAT32   "),
          (1080, b"\x53\xef"), (0x10040, b"_BHRfS_M"), (4086, b"SWAPSPACE2")]


@pytest.mark.parametrize("part", [
    Part("ext2", {"a": "b"}, label="old"), Part("ext4", {}, label="root-4", uuid=None),
    Part("xfs", {}, label="xroot"), Part("btrfs", {}, label="broot"),
    Part("vfat", {"x": "y"}, label="ESP", uuid="DEADBEEF"), Part("vfat", {}, size_mib=300),
], ids=lambda p: f"{p.fstype}-{p.label}")
def test_probe_matches_blkid(part: Part, tmp_path: Path) -> None:
    img = make_fs(part, tmp_path, 1)
    want = blkid(img, 0)
    data = img.read_bytes() if img.stat().st_size < (64 << 20) else None
    with open(img, "rb") as f:
        def read(off: int, n: int) -> bytes:
            if data is not None:
                return data[off:off + n]
            f.seek(off)
            return f.read(n)
        got = probe(read, img.stat().st_size)
    assert got is not None
    assert (got.type, got.uuid, got.label) == (want["TYPE"], want.get("UUID"), want.get("LABEL"))


@settings(max_examples=300, deadline=None)
@given(noise=st.binary(min_size=0, max_size=4096),
       planted=st.lists(st.sampled_from(MAGICS), max_size=4),
       size=st.one_of(st.integers(min_value=0, max_value=4200),
                      st.integers(min_value=0, max_value=PROBE_BYTES * 2)))
def test_probe_never_raises_on_noise(noise: bytes, planted: list, size: int) -> None:
    buf = bytearray((noise * (PROBE_BYTES // max(1, len(noise)) + 1))[:PROBE_BYTES] if noise
                    else bytes(PROBE_BYTES))
    for off, magic in planted:
        buf[off:off + len(magic)] = magic
    data = bytes(buf[:size])

    def read(off: int, n: int) -> bytes:
        return data[off:off + n] if off >= 0 else b""
    result = probe(read, len(data))
    assert result is None or isinstance(result.type, str)


@pytest.mark.parametrize("size", [1082, 1100, 1135, 600, 0x10048])
def test_short_volume_with_a_magic(size: int) -> None:
    """A volume ending inside its superblock: a probe result, never struct.error."""
    buf = bytearray(size)
    for off, magic in MAGICS:
        if off + len(magic) <= size and off not in (0, 3):
            buf[off:off + len(magic)] = magic
    data = bytes(buf)
    assert probe(lambda off, n: data[off:off + n], size) is not None


@pytest.mark.parametrize("argv", [["mkswap", "-L", "sw"], ["mkfs.vfat", "-F", "16"],
                                  ["mkfs.vfat", "-F", "32"]], ids=lambda a: "-".join(a[:3]))
def test_more_mkfs_output_matches_blkid(argv: list[str], tmp_path: Path) -> None:
    """swap and both FAT sizes (the disk facts' ESP and swap checks read these TYPEs)."""
    from .nativeimages import run
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    run(*argv, str(img))
    want = blkid(img, 0)
    data = img.read_bytes()
    got = probe(lambda off, n: data[off:off + n], len(data))
    assert got is not None
    assert (got.type, got.uuid, got.label) == (want["TYPE"], want.get("UUID"), want.get("LABEL"))


def test_zeros_and_a_byte_ramp_are_nothing() -> None:
    ramp = bytes(range(256)) * (PROBE_BYTES // 256)
    for data in (bytes(PROBE_BYTES), ramp, b""):
        assert probe(lambda off, n, d=data: d[off:off + n], len(data)) is None
