"""Small disks for the native engine's fast tests: each filesystem made by its own mkfs, from a tree.

No root, no loop device, no appliance: ``mkfs.ext4 -d``, ``mkfs.xfs -p protofile``,
``mkfs.btrfs --rootdir``, ``mkfs.fat`` + ``mcopy`` write plain files, ``sgdisk`` the GPT, and
``dd conv=notrunc,sparse`` places each filesystem (as fixtures/synthetic.py does).

A tree maps a path to file content (str/bytes), :class:`Link` (a symbolic link) or :class:`Dir`.

References: mkfs.xfs(8) "-p protofile" (the proto file format), mkfs.btrfs(8) "--rootdir",
mke2fs(8) "-d", mkfs.fat(8) "-n -i", mtools(1) "mcopy -s", sgdisk(8).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
#: smallest sizes mkfs accepts (xfs 300 MB, btrfs ~109 MiB); files are sparse
MIN_MIB = {"ext4": 16, "ext2": 16, "xfs": 320, "btrfs": 128, "vfat": 33}


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755


@dataclass(frozen=True)
class Part:
    fstype: str                      #: ext4, ext2, xfs, btrfs, vfat, or "raw" (left empty)
    tree: Mapping[str, str | bytes | Link | Dir]
    label: str | None = None
    uuid: str | None = None          #: vfat: the volume id as 8 hex digits
    name: str = "part"               #: GPT partition name
    size_mib: int | None = None
    guid: str = LINUX


def run(*argv: str) -> str:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr}")
    return res.stdout


def populate(root: Path, tree: Mapping[str, str | bytes | Link | Dir]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for rel, item in sorted(tree.items()):
        target = root / rel.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(item, Link):
            os.symlink(item.target, target)
        elif isinstance(item, Dir):
            target.mkdir(exist_ok=True)
            target.chmod(item.mode)
        else:
            target.write_bytes(item.encode() if isinstance(item, str) else item)


def _proto(root: Path, out: Path) -> None:
    """An mkfs.xfs proto file reproducing ``root`` (regular files, directories, symlinks)."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(d: Path, depth: int) -> None:
        for p in sorted(d.iterdir()):
            st = p.lstat()
            perm = f"{st.st_mode & 0o777:03o}"
            if p.is_symlink():
                lines.append(f"{p.name} l--{perm} 0 0 {os.readlink(p)}")
            elif p.is_dir():
                lines.append(f"{p.name} d--{perm} 0 0")
                walk(p, depth + 1)
                lines.append("$")
            else:
                lines.append(f"{p.name} ---{perm} 0 0 {p}")
    walk(root, 1)
    lines += ["$", ""]
    out.write_text("\n".join(lines))


def make_fs(part: Part, work: Path, index: int) -> Path:
    img = work / f"fs{index}.img"
    tree = work / f"tree{index}"
    populate(tree, part.tree)
    size = part.size_mib or MIN_MIB.get(part.fstype, 16)
    with open(img, "wb") as f:
        f.truncate(size * MIB)
    label = ["-L", part.label] if part.label else []
    if part.fstype in ("ext4", "ext2", "ext3"):
        run(f"mkfs.{part.fstype}", "-q", "-F", "-d", str(tree), *label,
            *(["-U", part.uuid] if part.uuid else []), str(img))
    elif part.fstype == "xfs":
        proto = work / f"proto{index}"
        _proto(tree, proto)
        run("mkfs.xfs", "-q", "-f", *label, *(["-m", f"uuid={part.uuid}"] if part.uuid else []),
            "-p", str(proto), str(img))
    elif part.fstype == "btrfs":
        run("mkfs.btrfs", "-q", "-f", *label, *(["-U", part.uuid] if part.uuid else []),
            "--rootdir", str(tree), str(img))
    elif part.fstype == "vfat":
        img.unlink()
        run("mkfs.fat", "-C", *(["-n", part.label] if part.label else []),
            *(["-i", part.uuid] if part.uuid else []), str(img), str(size * 1024))
        if any(tree.iterdir()):
            run("mcopy", "-s", "-i", str(img), *[str(p) for p in sorted(tree.iterdir())], "::/")
    elif part.fstype != "raw":
        raise ValueError(part.fstype)
    return img


def make_disk(path: Path, parts: Sequence[Part]) -> Path:
    """A sparse raw GPT disk at ``path`` holding ``parts`` in order, 1 MiB aligned."""
    work = path.parent / (path.name + ".work")
    work.mkdir()
    try:
        start = 1
        layout = []
        for i, part in enumerate(parts, 1):
            size = part.size_mib or MIN_MIB.get(part.fstype, 16)
            layout.append((start, size))
            start += size
        with open(path, "wb") as f:
            f.truncate((start + 1) * MIB)
        argv = ["sgdisk", "-o"]
        for i, (part, (first, size)) in enumerate(zip(parts, layout), 1):
            img = make_fs(part, work, i)
            run("dd", f"if={img}", f"of={path}", "bs=1M", f"seek={first}", "conv=notrunc,sparse",
                "status=none")
            argv += [f"-n{i}:{first * 2048}:{(first + size) * 2048 - 1}", f"-t{i}:{part.guid}",
                     f"-c{i}:{part.name}"]
        run(*argv, str(path))
    finally:
        for p in sorted(work.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        work.rmdir()
    return path


def blkid(path: Path, offset: int) -> dict[str, str]:
    """``blkid -p`` of the filesystem at ``offset`` of ``path`` (the oracle for facts)."""
    out = run("blkid", "-p", "-o", "export", "-O", str(offset), str(path))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
