"""Small real test images for the check tests, made by qemu-img, sgdisk, mkfs and formats.vhd."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vhdtool.formats.vhd import build_fixed_footer, chs_geometry
from tests.oracle import qemu_img

MiB = 1 << 20


def run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def raw_disk(path: Path, size: int) -> Path:
    qemu_img("create", "-q", "-f", "raw", path, str(size))
    return path


def gpt_hybrid(path: Path, size: int = 64 * MiB) -> Path:
    """GPT with a BIOS boot partition, a FAT ESP and an ext4 root, plus boot code in sector 0."""
    raw_disk(path, size)
    run("sgdisk", "-n1:2048:+1M", "-t1:ef02", "-n2:0:+16M", "-t2:ef00", "-n3:0:0", "-t3:8300",
        path)
    run("mkfs.vfat", "-F", "16", "--offset", str(4096), path, str(16 * 1024))
    root_start, root_len = 36864 * 512, size - 36864 * 512 - 34 * 512
    run("mkfs.ext4", "-q", "-F", "-E", f"offset={root_start}", path, f"{root_len // 1024}k")
    with open(path, "r+b") as f:         # a non-zero boot code area, as grub-install leaves it
        f.write(b"\xeb\x63\x90" + b"\x10" * 437)
    return path


def wrap_fixed(raw: Path, out: Path, **footer_kw) -> Path:
    """A fixed VHD written by the format core: ``raw``'s bytes plus build_fixed_footer."""
    run("cp", "--sparse=always", raw, out)        # never densify a sparse test disk
    size = out.stat().st_size
    with open(out, "ab") as f:
        f.write(build_fixed_footer(size, **footer_kw))
    return out


def sparse_fixed(out: Path, size: int) -> Path:
    """An all-zero fixed VHD of ``size`` bytes that occupies only its footer on disk."""
    with open(out, "wb") as f:
        f.truncate(size)
        f.seek(size)
        f.write(build_fixed_footer(size))
    return out


def patch_footer(path: Path, offset_in_footer: int, data: bytes, fix_checksum: bool) -> None:
    """Overwrite footer bytes; optionally recompute the checksum (spec: one's complement sum)."""
    with open(path, "r+b") as f:
        f.seek(-512, 2)
        footer = bytearray(f.read(512))
        footer[offset_in_footer:offset_in_footer + len(data)] = data
        if fix_checksum:
            footer[64:68] = b"\0\0\0\0"
            footer[64:68] = ((~sum(footer)) & 0xFFFFFFFF).to_bytes(4, "big")
        f.seek(-512, 2)
        f.write(footer)


__all__ = ["chs_geometry", "gpt_hybrid", "patch_footer", "raw_disk", "run", "sparse_fixed",
           "wrap_fixed"]
