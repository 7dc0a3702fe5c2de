"""qemu-img as the independent oracle for every format (see README: "Testing against the truth").

Every helper here names the format explicitly: probed, a fixed VHD reads as raw, footer included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")

needs_qemu = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img (Debian qemu-utils) not installed")

CHUNK = 4 * 1024 * 1024


def qemu_img(*args: str | os.PathLike[str]) -> str:
    res = subprocess.run([QEMU_IMG or "qemu-img", *map(str, args)], capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"qemu-img {' '.join(map(str, args))} failed: {res.stderr}")
    return res.stdout


def qemu_io(path: str | os.PathLike[str], fmt: str, *commands: str) -> None:
    argv = [QEMU_IO or "qemu-io", "-f", fmt]
    for c in commands:
        argv += ["-c", c]
    res = subprocess.run([*argv, str(path)], capture_output=True, text=True)
    if res.returncode != 0 or "error" in res.stdout.lower() or "failed" in res.stdout.lower():
        raise AssertionError(f"qemu-io {commands} failed: {res.stdout} {res.stderr}")


def qemu_info(path: str | os.PathLike[str], fmt: str) -> dict:
    return json.loads(qemu_img("info", "--output=json", "-f", fmt, path))


def qemu_virtual_size(path: str | os.PathLike[str], fmt: str) -> int:
    return int(qemu_info(path, fmt)["virtual-size"])


def qemu_to_raw(path: str | os.PathLike[str], fmt: str, out: Path) -> Path:
    qemu_img("convert", "-f", fmt, "-O", "raw", path, out)
    return out


def write_pattern(path: Path, size: int, runs: list[tuple[int, int]], seed: int = 1) -> Path:
    """A sparse raw file of ``size`` bytes with pseudo-random data at each (offset, length) run.

    The data is deterministic for a seed and differs from run to run, so misplaced blocks show.
    """
    import random

    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length in runs:
            f.seek(off)
            left = length
            while left:
                n = min(left, 1 << 20)
                f.write(rng.randbytes(n))
                left -= n
    return path


def assert_reads_like_qemu(image, path: str | os.PathLike[str], fmt: str, tmp: Path) -> None:
    """Every byte of ``image.read()`` equals ``qemu-img convert -O raw`` of the same file."""
    ref = qemu_to_raw(path, fmt, tmp / (Path(path).name + ".oracle.raw"))
    assert image.virtual_size == qemu_virtual_size(path, fmt)
    assert image.virtual_size == ref.stat().st_size
    with open(ref, "rb") as f:
        off = 0
        while off < image.virtual_size:
            want = f.read(CHUNK)
            got = image.read(off, CHUNK)
            if got != want:
                bad = next(i for i in range(len(want)) if i >= len(got) or got[i] != want[i])
                raise AssertionError(f"{path}: byte {off + bad:#x} differs from qemu-img's reading")
            off += len(want)
    ref.unlink()
