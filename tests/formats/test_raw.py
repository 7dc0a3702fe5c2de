from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vhdtool.formats import Kind, open_image, probe
from vhdtool.formats.errors import FormatError, TruncatedImage
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


@needs_qemu
@pytest.mark.parametrize("size", [700, 512 * 3 + 1, MiB - 1])
def test_partial_last_sector_reads_like_qemu(tmp_path: Path, size: int) -> None:
    """qemu's block layer counts whole sectors: a raw file of 700 bytes is a 1024-byte disk whose
    tail reads as zeros; vhdtool says the same, and says why."""
    p = tmp_path / "odd.raw"
    p.write_bytes(os.urandom(size))
    with open_image(p) as img:
        assert img.virtual_size == -(-size // 512) * 512
        assert_reads_like_qemu(img, p, "raw", tmp_path)
        (problem,) = img.problems
        assert problem.offset == size and "not a whole number of 512-byte sectors" in \
            problem.message


@pytest.mark.parametrize("kind", ["fifo", "chardev", "socket", "dir"])
def test_not_a_file_is_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    """A FIFO would block open() until a writer comes (forever): it is refused, as are devices
    and sockets that hold no disk, with the file named; run in a child with a deadline."""
    import socket
    import subprocess
    import sys
    p = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
    elif kind == "dir":
        p.mkdir()
    else:
        p = Path("/dev/null")
    code = ("import sys\nfrom formats import open_image, FormatError\n"
            "try:\n    open_image(sys.argv[1])\nexcept FormatError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{p}: file: ") and "not a disk image" in out.stdout


def test_block_device_size(tmp_path: Path) -> None:
    """A block device's st_size is 0: its size is where it ends (a loop device over a file)."""
    import shutil
    import subprocess
    p = write_pattern(tmp_path / "d.raw", 8 * MiB, [(MiB, MiB)])
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup for a loop device")
    dev = subprocess.run(["losetup", "-f", "--show", "-r", str(p)], capture_output=True,
                         text=True)
    if dev.returncode != 0:
        pytest.skip(f"no loop device: {dev.stderr.strip()}")
    try:
        with open_image(dev.stdout.strip()) as img:
            assert img.virtual_size == 8 * MiB and img.file_size == 8 * MiB
            assert img.read(MiB, MiB) == p.read_bytes()[MiB:2 * MiB]
    finally:
        subprocess.run(["losetup", "-d", dev.stdout.strip()], check=True)


@pytest.mark.parametrize("fmt", ["raw", pytest.param("vpc", marks=needs_qemu)])
def test_file_shrinking_after_open_is_not_a_hole(tmp_path: Path, fmt: str) -> None:
    """A file truncated after it was opened: its allocation map must not turn the missing data
    into a hole (SEEK_DATA fails with ENXIO past the new end) but say what happened."""
    raw = write_pattern(tmp_path / "d.raw", 8 << 20, [(0, 4096), (6 << 20, 1 << 20)])
    path = raw
    if fmt == "vpc":
        path = tmp_path / "d.vhd"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o",
                        "subformat=fixed,force_size", str(raw), str(path)], check=True)
    with open_image(path, fmt) as img:
        assert [e.kind for e in img.extents()].count(Kind.DATA) == 2
        os.truncate(path, 1 << 20)
        with pytest.raises(TruncatedImage, match=f"{path}: file at offset 0x100000 .*shrank"):
            list(img.extents())
