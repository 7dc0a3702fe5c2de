"""VHDX reader against qemu-img/qemu-io (naming -f vhdx) and a Hyper-V-made sample."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from formats import Kind, open_image, probe
from formats.errors import FormatError
from formats import vhdx
from formats.vhdx import VhdxImage
from tests.oracle import (QEMU_IO, assert_reads_like_qemu, needs_qemu, qemu_img, qemu_info,
                          qemu_io)

MiB = 1 << 20
SAMPLE_SHA = "a4fb24fa51fb4852d5a6bdc2b390a91b0a4e19b47696edc5a00c816067257402"


def make(path: Path, size: str, *opts: str, writes: tuple[str, ...] = ()) -> Path:
    o = ",".join(opts)
    qemu_img("create", "-f", "vhdx", *(["-o", o] if o else []), path, size)
    if writes:
        qemu_io(path, "vhdx", *writes)
    return path


WRITES = ("write -P 0x11 0 64k", "write -P 0x22 1536k 1M", "write -P 0x33 5M 4k",
          "write -z 1600k 8k", "write -P 0x44 30M 512", "write -z 5M 512")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- real image made by Hyper-V -------------------------------------------------------------------
@needs_qemu
def test_hyperv_sample_reads_like_qemu(sample, tmp_path: Path) -> None:
    p = sample("iotest-dynamic-1G.vhdx", SAMPLE_SHA)
    assert probe(p) == "vhdx"
    with open_image(p) as img:
        assert isinstance(img, VhdxImage)
        info = img.info()
        assert info["bat_states"] == {"fully_present": 3, "zero": 29}
        assert (info["block_size"], img.logical_sector_size, info["physical_sector_size"]) == \
            (32 * MiB, 512, 4096)
        assert img.subformat == "dynamic" and info["log"]["state"] == "clean"
        q = qemu_info(p, "vhdx")
        assert img.virtual_size == q["virtual-size"] == 1 << 30
        assert q["cluster-size"] == img.block_size
        assert img.problems == []
        assert_reads_like_qemu(img, p, "vhdx", tmp_path)


# -- images made by qemu-img ----------------------------------------------------------------------
@needs_qemu
@pytest.mark.parametrize("opts", [
    ("subformat=dynamic", "block_size=1M"),
    ("subformat=dynamic", "block_size=8M", "block_state_zero=off"),
    ("subformat=fixed", "block_size=1M", "block_state_zero=off"),
    ("subformat=fixed", "block_size=32M"),
    ("subformat=dynamic", "block_size=32M", "log_size=2M"),
])
def test_qemu_images_read_like_qemu(tmp_path: Path, opts: tuple[str, ...]) -> None:
    p = make(tmp_path / "d.vhdx", "40M", *opts, writes=WRITES)
    with open_image(p, "vhdx") as img:
        info = img.info()
        assert img.block_size == qemu_info(p, "vhdx")["cluster-size"]
        assert f"block_size={img.block_size // MiB}M" in opts
        if "subformat=fixed" in opts and "block_state_zero=off" in opts:
            assert img.subformat == "fixed"
            assert info["bat_states"] == {"fully_present": img.payload_blocks}
        if "subformat=dynamic" in opts:
            assert img.subformat == "dynamic" and not img.leave_blocks_allocated
            assert info["bat_states"].get("fully_present", 0) < img.payload_blocks
        if "log_size=2M" in opts:
            assert info["log"]["length"] == 2 * MiB
        assert_reads_like_qemu(img, p, "vhdx", tmp_path)


@needs_qemu
def test_4k_logical_sectors(tmp_path: Path) -> None:
    """qemu-img can neither make nor read 4Kn VHDX (ENOTSUP): patch the logical sector size item
    of a qemu image; with fewer blocks than either chunk ratio the BAT layout is unchanged, so
    the guest bytes must equal qemu's reading of the unpatched copy."""
    p = make(tmp_path / "d.vhdx", "16M", "block_size=1M", writes=WRITES[:3])
    orig = tmp_path / "orig.vhdx"
    shutil.copy(p, orig)
    with open_image(p, "vhdx") as img:
        meta = img.regions[vhdx.METADATA_GUID].file_offset
        item = img.metadata_items[vhdx.LOGICAL_SECTOR_SIZE]
        assert img.logical_sector_size == 512
    with open(p, "r+b") as f:
        f.seek(meta + item.offset)
        f.write((4096).to_bytes(4, "little"))
    with open_image(p, "vhdx") as img:
        assert img.logical_sector_size == 4096 and img.chunk_ratio == 1 << 15
        ref = tmp_path / "ref.raw"
        qemu_img("convert", "-f", "vhdx", "-O", "raw", orig, ref)
        assert img.read(0, img.virtual_size) == ref.read_bytes()


@needs_qemu
def test_big_sparse_virtual_size(tmp_path: Path) -> None:
    p = make(tmp_path / "d.vhdx", "2T", writes=("write -P 0x5a 1099511627776 64k",))
    with open_image(p, "vhdx") as img:
        assert img.virtual_size == qemu_info(p, "vhdx")["virtual-size"] == 2 << 40
        data = [e for e in img.extents() if e.kind is Kind.DATA]
        assert len(data) == 1 and data[0].offset == 1 << 40
        assert img.read(1 << 40, 65536 + 10) == b"\x5a" * 65536 + bytes(10)
        got = subprocess.run([QEMU_IO or "qemu-io", "-f", "vhdx", "-c",
                              "read -P 0x5a 1099511627776 64k", str(p)],
                             capture_output=True, text=True).stdout
        assert "Pattern verification failed" not in got and "read 65536/65536" in got
