"""The signature sniffer against real mkfs output, with blkid (util-linux) as the oracle."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.vhdtool.images import run
from vhdtool.fssniff import SNIFF_BYTES, sniff_fs

MiB = 1 << 20
#: blkid TYPE -> our name
BLKID = {"vfat": "fat", "ext4": "ext", "ext2": "ext", "xfs": "xfs", "swap": "swap",
         "btrfs": "btrfs"}
MAKERS = {
    "vfat16": (32, ["mkfs.vfat", "-F", "16"]),
    "vfat32": (64, ["mkfs.vfat", "-F", "32"]),
    "ext4": (16, ["mkfs.ext4", "-q", "-F"]),
    "ext2": (16, ["mkfs.ext2", "-q", "-F"]),
    "xfs": (320, ["mkfs.xfs", "-q", "-f"]),
    "swap": (16, ["mkswap"]),
}


def blkid_type(path: Path) -> str | None:
    out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(path)],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_sniff_matches_blkid(tmp_path: Path, name: str) -> None:
    mib, argv = MAKERS[name]
    img = tmp_path / name
    with open(img, "wb") as f:
        f.truncate(mib * MiB)
    run(*argv, img)
    expected = blkid_type(img)
    assert expected is not None
    with open(img, "rb") as f:
        assert sniff_fs(f.read(SNIFF_BYTES)) == BLKID[expected]


def test_nothing_recognised_in_zeros_or_noise(tmp_path: Path) -> None:
    assert sniff_fs(bytes(SNIFF_BYTES)) is None
    noise = tmp_path / "noise"
    noise.write_bytes(bytes(range(256)) * (SNIFF_BYTES // 256))
    assert blkid_type(noise) is None and sniff_fs(noise.read_bytes()) is None
    assert sniff_fs(b"") is None
