"""Build partitioned sparse plain files with sgdisk/sfdisk (no loop devices) and read their views.

The tools are the oracle: tests compare our parse with ``sfdisk --json`` and ``sgdisk -p/-v``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

MiB = 1 << 20

needs_gdisk = pytest.mark.skipif(shutil.which("sgdisk") is None or shutil.which("sfdisk") is None,
                                 reason="sgdisk/sfdisk not installed")


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def sgdisk(path: Path, *args: str) -> str:
    r = subprocess.run(["sgdisk", *args, str(path)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise AssertionError(f"sgdisk {args} failed: {r.stdout}{r.stderr}")
    return r.stdout


def sgdisk_verify(path: Path) -> str:
    """``sgdisk -v`` stdout + stderr (it exits 0 even when it finds problems)."""
    r = subprocess.run(["sgdisk", "-v", str(path)], capture_output=True, text=True, check=False)
    return r.stdout + r.stderr


def sfdisk(path: Path, script: str, *args: str) -> None:
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", *args, str(path)],
                   input=script, capture_output=True, text=True, check=True)


def sfdisk_json(path: Path, *args: str) -> dict:
    r = subprocess.run(["sfdisk", "--json", *args, str(path)], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout)["partitiontable"]


def reader(path: Path) -> Callable[[int, int], bytes]:
    """A ``read(offset, length)`` over a plain file, clamped at its end like DiskImage.read()."""
    data = path.read_bytes() if os.path.getsize(path) <= 8 * MiB else None

    def read(offset: int, length: int) -> bytes:
        if data is not None:
            return data[offset:offset + length]
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    return read


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def fdisk_commands(path: Path, commands: str, sector_size: int = 4096) -> None:
    """Drive interactive fdisk (the only util-linux tool that takes a sector size for a file)."""
    subprocess.run(["fdisk", "-b", str(sector_size), str(path)], input=commands,
                   capture_output=True, text=True, check=True)


def fdisk_list(path: Path, columns: str, sector_size: int = 4096) -> list[dict[str, str]]:
    """``fdisk -b N -l -o columns`` parsed into one dict per partition (column → text)."""
    out = subprocess.run(["fdisk", "-b", str(sector_size), "-l", "-o", columns, str(path)],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("Device"))
    names = columns.split(",")
    return [dict(zip(names, ln.split(None, len(names) - 1))) for ln in lines[head + 1:] if ln]


def fdisk_warnings(path: Path, sector_size: int = 512) -> str:
    """What ``fdisk -l`` says about the table besides the listing (PMBR/backup complaints)."""
    r = subprocess.run(["fdisk", "-b", str(sector_size), "-l", str(path)], capture_output=True,
                       text=True, check=False)
    return r.stderr + "\n".join(ln for ln in r.stdout.splitlines()
                                if "mismatch" in ln or "backup" in ln.lower())
