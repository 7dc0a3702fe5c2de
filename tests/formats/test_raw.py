from __future__ import annotations

import os
from pathlib import Path

import pytest

from formats import Kind, open_image, probe
from formats.errors import FormatError
from tests.oracle import assert_reads_like_qemu, needs_qemu, write_pattern

MiB = 1 << 20


def test_raw_holes_and_data_map_exactly(tmp_path: Path) -> None:
    p = write_pattern(tmp_path / "d.raw", 64 * MiB, [(MiB, MiB), (10 * MiB, 3 * MiB)])
    with open_image(p) as img:
        assert probe(p) == "raw" and img.virtual_size == 64 * MiB
        ext = list(img.extents())
        data = [(e.offset, e.length) for e in ext if e.kind is Kind.DATA]
        assert data == [(MiB, MiB), (10 * MiB, 3 * MiB)]
        assert sum(e.length for e in ext) == 64 * MiB
        assert img.allocated_bytes() == 4 * MiB
        raw = p.read_bytes()
        assert img.read(MiB - 7, 100) == raw[MiB - 7:MiB + 93]
        assert img.read(64 * MiB - 10, 100) == raw[-10:]     # clamped at the end
        assert img.read(64 * MiB, 10) == b""


@needs_qemu
def test_raw_reads_like_qemu(tmp_path: Path) -> None:
    p = write_pattern(tmp_path / "d.raw", 20 * MiB + 4096, [(0, 4096), (5 * MiB + 17, 3 * MiB)])
    with open_image(p, "raw") as img:
        assert_reads_like_qemu(img, p, "raw", tmp_path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        open_image(tmp_path / "nope.raw", "raw")
    assert exc.value.filename.endswith("nope.raw")


def test_unknown_format_name(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"\0" * 512)
    with pytest.raises(FormatError, match="unknown format"):
        open_image(p, "vmdk")


def test_read_never_exceeds_the_bound(tmp_path: Path) -> None:
    p = tmp_path / "x"
    with open(p, "wb") as f:
        f.truncate(1 << 40)
    with open_image(p) as img:
        with pytest.raises(ValueError):
            img.read(0, 1 << 40)
        assert os.path.getsize(p) == 1 << 40
