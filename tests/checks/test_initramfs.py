"""The initramfs reader against lsinitramfs (initramfs-tools), on archives built by real tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vhdtool.checks.initramfs import InitramfsError, read_initramfs



def _host_cloud_kernel() -> str:
    """The newest cloud kernel installed on this host (Debian's point releases move it: 6.1.0-56,
    -57, ...), or a placeholder name when there is none (the tests that need it then skip)."""
    found = [p.name for p in Path("/lib/modules").glob("*-cloud-amd64")]
    key = lambda v: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", v)]  # noqa: E731
    return max(found, key=key, default="6.1.0-0-cloud-amd64")


KVER = _host_cloud_kernel()
HOST_INITRD = Path(f"/boot/initrd.img-{KVER}")
# compression name -> command reading stdin, writing stdout
COMPRESSORS = {
    "none": ["cat"], "gzip": ["gzip", "-n", "-1"], "xz": ["xz", "-1", "--check=crc32"],
    "lzma": ["lzma", "-1"], "bzip2": ["bzip2", "-1"], "zstd": ["zstd", "-q", "-1"],
    "lz4-legacy": ["lz4", "-l", "-1"], "lz4": ["lz4", "-1"],
}

needs_lsinitramfs = pytest.mark.skipif(shutil.which("lsinitramfs") is None,
                                       reason="initramfs-tools not installed")


def lsinitramfs(path: Path) -> set[str]:
    out = subprocess.run(["lsinitramfs", str(path)], check=True, capture_output=True, text=True)
    return set(out.stdout.split()) - {"."}


def cpio(tree: Path, fmt: str) -> bytes:
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    return subprocess.run(["cpio", "-o", "-H", fmt, "--quiet"], cwd=tree, check=True,
                          input="\n".join(names).encode(), capture_output=True).stdout


def cpio_list(data: bytes) -> set[str]:
    out = subprocess.run(["cpio", "-t", "--quiet"], input=data, check=True, capture_output=True)
    return set(out.stdout.decode().split()) - {"."}


def compress(data: bytes, kind: str) -> bytes:
    return subprocess.run(COMPRESSORS[kind], input=data, check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("initrd")
    main = base / "main"
    mods = main / "usr/lib/modules" / KVER / "kernel/drivers"
    for rel in ("hv/hv_vmbus.ko", "scsi/hv_storvsc.ko.xz", "nvme/host/nvme-core.ko.zst"):
        (mods / rel).parent.mkdir(parents=True, exist_ok=True)
        (mods / rel).write_bytes(os.urandom(3000))
    (main / "init").write_text("#!/bin/sh\n")
    (main / "bin").mkdir()
    (main / "bin/sh").symlink_to("busybox")
    ucode = base / "ucode"
    (ucode / "kernel/x86/microcode").mkdir(parents=True)
    (ucode / "kernel/x86/microcode/GenuineIntel.bin").write_bytes(os.urandom(5000))
    return main, ucode


@needs_lsinitramfs
@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
@pytest.mark.parametrize("fmt", ["newc", "odc"])
def test_microcode_then_compressed_main(trees, tmp_path: Path, kind: str, fmt: str) -> None:
    main, ucode = trees
    if shutil.which(COMPRESSORS[kind][0]) is None:
        pytest.skip(f"{COMPRESSORS[kind][0]} missing")
    early = cpio(ucode, "newc")
    early += b"\0" * (-len(early) % 512)
    body = cpio(main, fmt)
    img = tmp_path / "initrd.img"
    img.write_bytes(early + compress(body, kind))
    got = read_initramfs(img.read_bytes())
    assert set(got.names) - {"."} == cpio_list(early) | cpio_list(body)
    if kind != "none":   # lsinitramfs cannot split two uncompressed archives (cpio: premature end)
        assert set(got.names) - {"."} == lsinitramfs(img)
    assert [s.compression for s in got.segments] == ["none", kind]
    assert {"hv_vmbus", "hv_storvsc", "nvme_core"} <= got.modules


@needs_lsinitramfs
@pytest.mark.skipif(not HOST_INITRD.exists(), reason="no host cloud kernel initramfs")
def test_host_initramfs_matches_lsinitramfs() -> None:
    got = read_initramfs(HOST_INITRD.read_bytes())
    assert set(got.names) - {"."} == lsinitramfs(HOST_INITRD)
    assert {"hv_vmbus", "hv_storvsc", "hv_netvsc"} <= got.modules


@pytest.mark.slow
@needs_lsinitramfs
@pytest.mark.skipif(not Path(f"/lib/modules/{KVER}").exists(), reason="no cloud kernel")
@pytest.mark.parametrize("kind", ["gzip", "xz", "lz4", "zstd"])
def test_mkinitramfs_compressions(tmp_path: Path, kind: str) -> None:
    conf = tmp_path / "conf"
    shutil.copytree("/etc/initramfs-tools", conf)
    text = (conf / "initramfs.conf").read_text()
    (conf / "initramfs.conf").write_text(text.replace("MODULES=most", "MODULES=list"))
    (conf / "modules").write_text("hv_vmbus\nhv_storvsc\nhv_netvsc\n")
    img = tmp_path / "initrd.img"
    subprocess.run(["mkinitramfs", "-d", str(conf), "-c", kind, "-l", "1", "-o", str(img), KVER],
                   check=True, capture_output=True)
    got = read_initramfs(img.read_bytes())
    assert set(got.names) - {"."} == lsinitramfs(img)
    assert {"hv_vmbus", "hv_storvsc", "hv_netvsc"} <= got.modules


@pytest.mark.parametrize("data", [
    b"070701" + b"Z" * 104,                           # non-hex field
    b"070701" + b"0" * 88 + b"FFFFFFFF" + b"0" * 8,   # name size out of range
    b"\x1f\x8b\x08\x00" + b"\0" * 20,                 # truncated gzip
    b"PK\x03\x04",                                    # not an initramfs
])
def test_bad_archives_raise_initramfs_error(data: bytes) -> None:
    with pytest.raises(InitramfsError):
        read_initramfs(data)


def test_truncated_entry_data() -> None:
    from tests.checks.fakeguest import newc
    arc = newc({"a.ko": b"x" * 100}, trailer=False)
    with pytest.raises(InitramfsError, match="truncated"):
        read_initramfs(arc[:-60])
