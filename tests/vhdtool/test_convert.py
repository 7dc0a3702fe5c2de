"""``vhdtool convert``: every source format to a fixed whole-MiB VHD, checked against qemu-img.

Oracles: ``qemu-img compare -f FMT -F vpc`` (the padding past the source's end must read as zeros:
without ``-s`` qemu-img accepts a size mismatch only if the extra area is all zeros),
``qemu-img info -f vpc`` for the size qemu 7.2 reads, ``hashlib`` over the output file for the
digests, ``sgdisk -v`` for the relocated GPT, ``st_blocks`` for sparseness.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from vhdtool.formats import TruncatedImage, open_image
from tests.oracle import needs_qemu, qemu_img, qemu_to_raw, qemu_virtual_size, write_pattern

vhd = pytest.importorskip("vhdtool.formats.vhd", reason="vhdtool.formats.vhd (branch vhd) not merged yet")

from vhdtool import convert as conv  # noqa: E402
from vhdtool.cli import cli  # noqa: E402
from vhdtool.convert import engine, run, sysio  # noqa: E402
from vhdtool.exitcodes import Exit  # noqa: E402

pytestmark = needs_qemu

MiB = 1 << 20
#: not a whole MiB, not even a whole 4 KiB; runs at odd offsets, one straddling the end
SIZE = 9 * MiB + 7 * 512
RUNS = [(3 * 4096 + 512, 100_000), (2 * MiB + 777 * 512, 1 * MiB + 3 * 512),
        (SIZE - 5 * 512, 5 * 512)]

RECIPES: dict[str, tuple[str, list[str]]] = {
    "raw": ("raw", []),
    "vpc-fixed": ("vpc", ["-O", "vpc", "-o", "subformat=fixed,force_size"]),
    "vpc-dynamic": ("vpc", ["-O", "vpc", "-o", "subformat=dynamic,force_size"]),
    "vhdx": ("vhdx", ["-O", "vhdx", "-o", "subformat=dynamic"]),
    "vhdx-fixed": ("vhdx", ["-O", "vhdx", "-o", "subformat=fixed"]),
    "vhdx-1m-blocks": ("vhdx", ["-O", "vhdx", "-o",
                                   "subformat=dynamic,block_size=1M,log_size=1M"]),
    "qcow2": ("qcow2", ["-O", "qcow2"]),
    "qcow2-compressed": ("qcow2", ["-O", "qcow2", "-c"]),
    "qcow2-v2": ("qcow2", ["-O", "qcow2", "-o", "compat=0.10"]),
    "qcow2-extended-l2": ("qcow2", ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k"]),
    "qcow2-backing": ("qcow2", []),      # an overlay over the raw file, see make_source
}


def make_source(tmp: Path, recipe: str, size: int = SIZE, runs=RUNS) -> tuple[Path, str, Path]:
    """(source image, its qemu format name, the raw file it was made from)."""
    raw = write_pattern(tmp / "pattern.raw", size, runs)
    fmt, args = RECIPES[recipe]
    if recipe == "qcow2-backing":
        out = tmp / "src.overlay.qcow2"
        qemu_img("create", "-f", "qcow2", "-b", raw.name, "-F", "raw", out)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 5M 70k", "-c",
                        "write -z 2M 64k", str(out)], check=True, capture_output=True)
        return out, fmt, raw
    if not args:
        return raw, fmt, raw
    out = tmp / f"src.{recipe}"
    qemu_img("convert", "-f", "raw", *args, raw, out)
    return out, fmt, raw


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def file_digests(path: Path) -> dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest(),
            "md5_base64": base64.b64encode(md5.digest()).decode()}


def assert_same_disk(src: Path, fmt: str, dst: Path) -> None:
    res = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "vpc", str(src), str(dst)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Images are identical" in res.stdout


def assert_valid_vhd(dst: Path, size: int) -> None:
    assert qemu_virtual_size(dst, "vpc") == size
    assert dst.stat().st_size == size + 512
    data = dst.read_bytes()[-512:] if dst.stat().st_size < 64 * MiB else _tail(dst)
    footer = vhd.parse_footer(data, str(dst), size, verify=True)
    assert footer.current_size == size
    # vhdtool's own reader: a fixed VHD every reader sees as ``size``, with nothing to report
    with open_image(dst) as img:
        assert (img.format_name, img.subformat, img.virtual_size) == ("vpc", "fixed", size)
        assert vhd.sizes_by_reader(img.footer)["qemu"] == size
        assert img.all_problems() == []


def _tail(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-512, os.SEEK_END)
        return f.read()


def no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".part")]


# -- every source format ---------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_convert_every_format(tmp_path: Path, recipe: str) -> None:
    src, fmt, raw = make_source(tmp_path, recipe)
    before = file_digests(src)["sha256"]
    dst = tmp_path / "out.vhd"
    res = conv.convert(str(src), str(dst), fmt=fmt, digests=["sha256", "md5"]).as_dict()

    want = -(-SIZE // MiB) * MiB
    assert res["output"]["virtual_size"] == want
    assert res["output"]["rounded_by"] == want - SIZE
    assert res["source"]["virtual_size"] == qemu_virtual_size(src, fmt)
    assert res["source"]["format"] == fmt
    assert_same_disk(src, fmt, dst)
    assert_valid_vhd(dst, want)
    # sparse: no more than the source's data plus one MiB
    assert allocated(dst) <= allocated(raw) + MiB
    assert res["output"]["allocated"] == allocated(dst)
    # digests cover the whole output file, footer included
    truth = file_digests(dst)
    assert {k: res["digests"][k] for k in truth} == truth
    assert str(dst.stat().st_size) in res["digests"]["covers"]
    # the source is untouched, and no temporary file is left
    assert file_digests(src)["sha256"] == before
    no_leftovers(tmp_path)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_convert_every_format_without_digest(tmp_path: Path, recipe: str) -> None:
    """No digest: the unordered path (plain data runs read straight from the file by the copy
    threads, the rest read by the main thread and written by them) gives the same disk, as
    sparse."""
    src, fmt, raw = make_source(tmp_path, recipe)
    dst = tmp_path / "out.vhd"
    res = conv.convert(str(src), str(dst), fmt=fmt, digests=["none"]).as_dict()
    want = -(-SIZE // MiB) * MiB
    assert_same_disk(src, fmt, dst)
    assert_valid_vhd(dst, want)
    assert res["digests"] == {}
    assert allocated(dst) <= allocated(raw) + MiB
    assert 0 < res["output"]["data_written"] <= allocated(raw) + MiB
    no_leftovers(tmp_path)


def test_cli_in_place_and_usage(tmp_path: Path) -> None:
    from click.testing import CliRunner

    src, _, _ = make_source(tmp_path, "raw")
    r = CliRunner().invoke(cli, ["convert", "--in-place", str(src), str(tmp_path / "x.vhd")])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["convert", str(src)])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["convert", "--in-place", "--digest", "none", "--json", str(src)])
    assert r.exit_code == 0, r.output
    facts = json.loads(r.stdout)
    assert facts["in_place"] is True and facts["digests"] == {}
    assert qemu_virtual_size(src, "vpc") == facts["output"]["virtual_size"] == 10 * MiB


def spy_copy_threads(monkeypatch) -> tuple[list[int], list[int]]:
    """(bytes read by preadv, bytes written by pwrite_all) from the copy threads only."""
    reads: list[int] = []
    writes: list[int] = []
    real_read, real_write = os.preadv, sysio.pwrite_all

    def in_copy_thread() -> bool:
        return threading.current_thread().name == "vhdtool-copy"

    def read_spy(fd, bufs, off):
        n = real_read(fd, bufs, off)
        if in_copy_thread():
            reads.append(n)
        return n

    def write_spy(fd, data, off):
        if in_copy_thread():
            writes.append(len(data))
        return real_write(fd, data, off)

    monkeypatch.setattr(os, "preadv", read_spy)
    monkeypatch.setattr(sysio, "pwrite_all", write_spy)
    return reads, writes


@pytest.mark.parametrize("recipe", ["raw", "vpc-fixed", "qcow2"])
def test_unordered_copy_path(tmp_path: Path, recipe: str, monkeypatch) -> None:
    """No digest to compute: data runs stored as plain file bytes are read straight from the
    file and written by the copy threads — only the data runs, never the holes."""
    src, fmt, raw = make_source(tmp_path, recipe)
    dst = tmp_path / "out.vhd"
    reads, writes = spy_copy_threads(monkeypatch)
    res = conv.convert(str(src), str(dst), fmt=fmt, digests=["none"]).as_dict()
    assert reads and sum(reads) <= allocated(src)     # only the data runs were read
    assert writes and sum(writes) <= sum(reads) + 512    # and the footer, by the same workers
    want = -(-SIZE // MiB) * MiB
    assert_same_disk(src, fmt, dst)
    assert_valid_vhd(dst, want)
    assert res["output"]["allocated"] <= allocated(raw) + MiB


@pytest.mark.parametrize("digests", [["none"], ["sha256"]])
def test_compressed_zero_clusters_are_holes(tmp_path: Path, digests) -> None:
    """Compressed clusters that hold zeros (read, not kernel-copied, on every path) stay holes."""
    src = tmp_path / "zc.qcow2"
    qemu_img("create", "-f", "qcow2", src, str(8 * MiB))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -c -P 0 0 64k", "-c",
                    "write -c -P 0 64k 64k", "-c", "write -c -P 7 1M 64k", str(src)],
                   check=True, capture_output=True)
    with open_image(src, "qcow2") as img:      # the zeros really are stored, compressed
        assert any(e.compressed and e.length == 128 * 1024 for e in img.extents())
    dst = tmp_path / "zc.vhd"
    res = conv.convert(str(src), str(dst), fmt="qcow2", digests=digests).as_dict()
    assert res["output"]["zero_bytes_skipped_in_data"] >= 128 * 1024
    assert res["output"]["data_written"] <= 64 * 1024 + 512
    assert allocated(dst) <= 64 * 1024 + MiB
    assert_same_disk(src, "qcow2", dst)


@pytest.mark.parametrize("recipe", ["raw", "vpc-fixed"])
def test_unordered_copy_skips_zero_blocks(tmp_path: Path, recipe: str, monkeypatch) -> None:
    """Allocated zeros inside a raw (or fixed-VHD) data run stay holes on the unordered path,
    as qemu-img leaves them: output allocation no larger than the non-zero data plus 1 MiB."""
    raw = write_pattern(tmp_path / "z.raw", 8 * MiB, [(0, 4096), (7 * MiB + 512, 3000)])
    with open(raw, "r+b") as f:             # 5 MiB of allocated zeros between the two runs
        f.seek(1 * MiB)
        f.write(bytes(5 * MiB))
    assert allocated(raw) >= 5 * MiB
    src, fmt = raw, "raw"
    if recipe == "vpc-fixed":               # a fixed VHD that stores its zeros
        src, fmt = tmp_path / "z.vhd", "vpc"
        shutil.copyfile(raw, src)
        with open(src, "ab") as f:
            f.write(conv.make_footer(8 * MiB))
        assert allocated(src) >= 5 * MiB
    reads, writes = spy_copy_threads(monkeypatch)
    dst = tmp_path / "z.out.vhd"
    res = conv.convert(str(src), str(dst), fmt=fmt, digests=["none"]).as_dict()
    assert sum(reads) >= 5 * MiB                           # the zeros were read and tested
    # only the two non-zero chunks, and the footer (written by the same workers)
    assert writes and sum(writes) <= 2 * 64 * 1024 + 512
    assert res["output"]["zero_bytes_skipped_in_data"] >= 5 * MiB
    assert_same_disk(src, fmt, dst)
    assert_valid_vhd(dst, 8 * MiB)
    peer = tmp_path / "z.qemu.vhd"
    qemu_img("convert", "-f", fmt, "-O", "vpc", "-o", "subformat=fixed,force_size", src, peer)
    assert allocated(dst) <= allocated(peer) + MiB
    assert allocated(dst) <= 2 * 4096 + MiB


def test_convert_raw_not_sector_multiple(tmp_path: Path) -> None:
    size = 3 * MiB + 1001
    raw = write_pattern(tmp_path / "odd.raw", size, [(size - 3000, 3000), (5, 70_000)])
    dst = tmp_path / "odd.vhd"
    res = conv.convert(str(raw), str(dst), digests=["none"]).as_dict()
    assert res["output"]["virtual_size"] == 4 * MiB
    assert res["digests"] == {}
    assert_same_disk(raw, "raw", dst)
    assert_valid_vhd(dst, 4 * MiB)


def test_whole_mib_source_is_not_grown(tmp_path: Path) -> None:
    raw = write_pattern(tmp_path / "mib.raw", 4 * MiB, [(MiB, 4096)])
    dst = tmp_path / "mib.vhd"
    res = conv.convert(str(raw), str(dst)).as_dict()
    assert res["output"]["rounded_by"] == 0
    assert_valid_vhd(dst, 4 * MiB)
    assert_same_disk(raw, "raw", dst)


def test_zero_blocks_inside_data_are_holes(tmp_path: Path) -> None:
    """A qcow2 whose clusters are allocated but hold zeros: the output stays sparse."""
    raw = write_pattern(tmp_path / "z.raw", 8 * MiB, [(0, 4096)])
    with open(raw, "r+b") as f:             # allocated zeros (not a hole) in the raw file
        f.seek(2 * MiB)
        f.write(bytes(4 * MiB))
    src = tmp_path / "z.qcow2"
    qemu_img("create", "-f", "qcow2", src, str(8 * MiB))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0 2M 4M", "-c",
                    "write -P 7 0 4k", str(src)], check=True, capture_output=True)
    dst = tmp_path / "z.vhd"
    res = conv.convert(str(src), str(dst), fmt="qcow2").as_dict()
    assert res["output"]["zero_bytes_skipped_in_data"] >= 4 * MiB - 64 * 1024
    assert allocated(dst) <= 1 * MiB
    assert_same_disk(src, "qcow2", dst)


@pytest.mark.parametrize("name", ["hyperv2012r2-dynamic.vhd", "iotest-dynamic-1G.vhdx"])
def test_samples(tmp_path: Path, sample, name: str) -> None:
    src = sample(name)
    fmt = "vpc" if name.endswith(".vhd") else "vhdx"
    dst = tmp_path / "out.vhd"
    res = conv.convert(str(src), str(dst), fmt=fmt, digests=["none"]).as_dict()
    size = qemu_virtual_size(src, fmt)
    want = -(-size // MiB) * MiB
    assert res["output"]["virtual_size"] == want
    assert_same_disk(src, fmt, dst)
    assert_valid_vhd(dst, want)


# -- GPT -------------------------------------------------------------------------------------------
GPT_SIZE = 21 * MiB + 17 * 512


def make_gpt_raw(path: Path) -> Path:
    """A raw disk that is not a whole MiB, with a GPT filling it to the last usable LBA."""
    with open(path, "wb") as f:
        f.truncate(GPT_SIZE)
    subprocess.run(["sgdisk", "-n", "1:2048:+4M", "-n", "2:0:0", str(path)], check=True,
                   capture_output=True)
    return path


def assert_gpt_clean(vhd_path: Path, orig_raw: Path, tmp: Path) -> None:
    """``sgdisk -v`` finds nothing wrong with the converted disk and the partitions are the
    same (the backup header now sits at the new last LBA)."""
    out = qemu_to_raw(vhd_path, "vpc", tmp / "gpt.out.raw")
    verify = subprocess.run(["sgdisk", "-v", str(out)], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout
    table = subprocess.run(["sgdisk", "-p", str(out)], capture_output=True, text=True).stdout
    orig = subprocess.run(["sgdisk", "-p", str(orig_raw)], capture_output=True, text=True).stdout
    assert table.split("Number")[1] == orig.split("Number")[1]
    out.unlink()


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="gdisk not installed")
@pytest.mark.parametrize("digests", [["sha256"], ["none"]])
def test_gpt_backup_moves_to_new_end(tmp_path: Path, digests) -> None:
    raw = make_gpt_raw(tmp_path / "gpt.raw")
    keep = tmp_path / "orig.raw"
    shutil.copyfile(raw, keep)
    dst = tmp_path / "gpt.vhd"
    res = conv.convert(str(raw), str(dst), digests=digests).as_dict()
    assert res["gpt_backup_relocated"] is True
    assert_valid_vhd(dst, 22 * MiB)
    if digests != ["none"]:
        assert res["digests"]["sha256"] == file_digests(dst)["sha256"]
    assert_gpt_clean(dst, keep, tmp_path)
    assert file_digests(raw) == file_digests(keep)        # the source is untouched
    # control: merely padding the disk leaves a GPT that sgdisk complains about
    naive = tmp_path / "naive.raw"
    shutil.copyfile(raw, naive)
    os.truncate(naive, 22 * MiB)
    verify = subprocess.run(["sgdisk", "-v", str(naive)], capture_output=True, text=True)
    assert "No problems found" not in verify.stdout


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="gdisk not installed")
def test_damaged_gpt_is_copied_with_a_warning(tmp_path: Path) -> None:
    raw = make_gpt_raw(tmp_path / "gpt.raw")
    with open(raw, "r+b") as f:            # break the primary header's CRC
        f.seek(512 + 16)
        f.write(b"\xde\xad\xbe\xef")
    dst = tmp_path / "gpt.vhd"
    res = conv.convert(str(raw), str(dst), digests=["none"]).as_dict()
    assert res["gpt_backup_relocated"] is False
    assert any("GPT backup not moved" in w for w in res["warnings"])
    assert_same_disk(raw, "raw", dst)


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="gdisk not installed")
def test_gpt_in_place(tmp_path: Path) -> None:
    raw = make_gpt_raw(tmp_path / "gpt.raw")
    keep = tmp_path / "orig.raw"
    shutil.copyfile(raw, keep)
    res = conv.convert_in_place(str(raw), digests=["none"]).as_dict()
    assert res["gpt_backup_relocated"] is True
    assert_valid_vhd(raw, 22 * MiB)
    assert_gpt_clean(raw, keep, tmp_path)


# -- failures leave nothing ------------------------------------------------------------------------
def _fail_after(monkeypatch: pytest.MonkeyPatch, exc: BaseException, calls: int = 1) -> None:
    real = engine.Engine.store
    count = {"n": 0}

    def failing(self, data, off):
        count["n"] += 1
        if count["n"] > calls:
            raise exc
        return real(self, data, off)

    monkeypatch.setattr(engine.Engine, "store", failing)


def _fail_copy_after(monkeypatch: pytest.MonkeyPatch, exc: BaseException, calls: int = 1) -> None:
    """The no-digest path writes with pwrite_all from its copy threads."""
    count = {"n": 0}
    real = sysio.pwrite_all

    def failing(*args):
        count["n"] += 1
        if count["n"] > calls:
            raise exc
        return real(*args)

    monkeypatch.setattr(sysio, "pwrite_all", failing)


@pytest.mark.parametrize("digests,recipe", [(["sha256"], "qcow2"), (["none"], "qcow2"),
                                            (["none"], "qcow2-compressed")])
def test_interrupted_conversion_leaves_nothing(tmp_path: Path, monkeypatch, digests,
                                              recipe) -> None:
    src, fmt, _ = make_source(tmp_path, recipe)
    before = file_digests(src)
    if digests == ["none"]:
        _fail_copy_after(monkeypatch, KeyboardInterrupt())
    else:
        _fail_after(monkeypatch, KeyboardInterrupt())
    dst = tmp_path / "out.vhd"
    with pytest.raises(KeyboardInterrupt):
        conv.convert(str(src), str(dst), fmt=fmt, digests=digests)
    assert not dst.exists()
    no_leftovers(tmp_path)
    assert file_digests(src) == before


def test_disk_full_is_a_clean_error(tmp_path: Path, monkeypatch) -> None:
    src, fmt, _ = make_source(tmp_path, "raw")
    before = file_digests(src)
    dst = tmp_path / "out.vhd"
    dst.write_bytes(b"old content")
    _fail_after(monkeypatch, OSError(28, "No space left on device"))
    with pytest.raises(conv.ConvertError, match=str(dst)):
        conv.convert(str(src), str(dst), fmt=fmt, force=True, digests=["sha256"])
    assert dst.read_bytes() == b"old content"      # the old file is untouched too
    no_leftovers(tmp_path)
    assert file_digests(src) == before


def test_write_error_names_destination(tmp_path: Path, monkeypatch) -> None:
    src, fmt, _ = make_source(tmp_path, "vhdx")
    _fail_after(monkeypatch, OSError(5, "Input/output error"), calls=0)
    dst = tmp_path / "out.vhd"
    with pytest.raises(conv.ConvertError, match=f"{dst}: writing failed"):
        conv.convert(str(src), str(dst), fmt=fmt, digests=["sha256"])
    assert not dst.exists()
    no_leftovers(tmp_path)
    with pytest.raises(conv.ConvertError, match="cannot create"):
        conv.convert(str(src), str(tmp_path / "no" / "such" / "dir.vhd"), fmt=fmt)


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 1 MiB file system (tmpfs: it allocates blocks on ``fallocate`` as ext4 does);
    skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("digests", [["none"], ["sha256"]])
def test_really_full_disk_is_a_clean_error(tmp_path: Path, small_fs: Path, digests) -> None:
    """Not a mock: a 9 MiB disk with 1.1 MiB of data into a 1 MiB file system.  The block
    allocation before each write (``allocate``) finds it full: a clean error naming DST, and
    nothing left there."""
    src, fmt, _ = make_source(tmp_path, "raw")
    before = file_digests(src)
    dst = small_fs / "out.vhd"
    with pytest.raises(conv.ConvertError, match=f"{dst}: no space left on the device"):
        conv.convert(str(src), str(dst), fmt=fmt, digests=digests)
    assert list(small_fs.iterdir()) == []
    assert file_digests(src) == before


@pytest.mark.parametrize("digests", [["none"], ["sha256"]])
def test_file_system_without_fallocate(tmp_path: Path, monkeypatch, digests) -> None:
    """Where ``fallocate`` is not supported (EOPNOTSUPP), the data is written as it is, and the
    call is not tried again for every write."""
    import ctypes
    import errno
    calls = []

    def no_fallocate(fd, mode, off, n):
        calls.append((off, n))
        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    real = sysio._libc
    monkeypatch.setattr(sysio, "_libc", lambda name: no_fallocate if name == "fallocate"
                        else real(name))
    src, fmt, raw = make_source(tmp_path, "qcow2")
    dst = tmp_path / "out.vhd"
    res = conv.convert(str(src), str(dst), fmt=fmt, digests=digests)
    assert_same_disk(raw, "raw", dst)
    assert 1 <= len(calls) <= engine.COPY_THREADS     # each thread may ask once before it is told
    assert allocated(dst) <= allocated(raw) + MiB
    # nothing reserved the space: fsynced before the rename, so a deferred error is seen
    assert res.output.flushed is True


@pytest.mark.parametrize("sync", [False, True])
def test_flushed_only_when_asked(tmp_path: Path, monkeypatch, sync: bool) -> None:
    """Where the blocks were allocated ahead, the output is fsynced (and its folder after the
    rename) only with ``sync``, as the result says."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    src, fmt, raw = make_source(tmp_path, "raw")
    dst = tmp_path / "out.vhd"
    res = conv.convert(str(src), str(dst), fmt=fmt, digests=["none"], sync=sync)
    assert_same_disk(raw, "raw", dst)
    assert res.output.flushed is sync
    assert len(synced) == (2 if sync else 0)        # the file, then the folder


@pytest.mark.parametrize("where,exc,error", [
    ("pwrite_all", OSError(28, "No space left on device"), "no space left"),
    ("pwrite_all", KeyboardInterrupt(), None),
    ("preadv", OSError(5, "Input/output error"), "{src}: reading failed at file offset 0x"),
])
def test_copy_thread_failure_leaves_nothing(tmp_path: Path, monkeypatch, where, exc,
                                            error) -> None:
    """A failure in a copy thread (a write to a full disk, Ctrl-C, a read error on the source)
    stops the conversion with an error naming the file it concerns, and leaves nothing."""
    src, _, _ = make_source(tmp_path, "raw")
    before = file_digests(src)

    def boom(*a, **k):
        if threading.current_thread().name == "vhdtool-copy":
            raise exc
        return real(*a, **k)

    owner = sysio if where == "pwrite_all" else os
    real = getattr(owner, where)
    monkeypatch.setattr(owner, where, boom)
    dst = tmp_path / "out.vhd"
    if error is None:
        with pytest.raises(KeyboardInterrupt):
            conv.convert(str(src), str(dst), digests=["none"])
    else:
        with pytest.raises(conv.ConvertError, match=re.escape(error.format(src=src))):
            conv.convert(str(src), str(dst), digests=["none"])
    assert not dst.exists()
    no_leftovers(tmp_path)
    assert file_digests(src) == before


# -- refusals -------------------------------------------------------------------------------------
def test_refuses_existing_destination_without_force(tmp_path: Path) -> None:
    src, _, _ = make_source(tmp_path, "raw")
    dst = tmp_path / "out.vhd"
    dst.write_bytes(b"keep me")
    with pytest.raises(conv.ConvertError, match="--force"):
        conv.convert(str(src), str(dst))
    assert dst.read_bytes() == b"keep me"
    conv.convert(str(src), str(dst), force=True)
    assert_same_disk(src, "raw", dst)


def test_destination_appearing_meanwhile_is_not_overwritten(tmp_path: Path, monkeypatch) -> None:
    src, _, _ = make_source(tmp_path, "raw")
    dst = tmp_path / "out.vhd"
    real = run.make_footer

    def racing(size, unique_id=None):      # someone creates DST while we copy
        dst.write_bytes(b"theirs")
        return real(size, unique_id)

    monkeypatch.setattr(run, "make_footer", racing)
    with pytest.raises(conv.ConvertError, match="appeared"):
        conv.convert(str(src), str(dst))
    assert dst.read_bytes() == b"theirs"
    no_leftovers(tmp_path)


def test_refuses_source_as_destination(tmp_path: Path) -> None:
    src, _, _ = make_source(tmp_path, "raw")
    before = file_digests(src)
    link = tmp_path / "hardlink.raw"
    os.link(src, link)
    for dst in (src, link):
        with pytest.raises(conv.ConvertError, match="in-place"):
            conv.convert(str(src), str(dst), force=True)
    assert file_digests(src) == before


def test_refuses_past_azure_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.qcow2"
    qemu_img("create", "-f", "qcow2", big, str(conv.AZURE_MAX_SIZE + 512))
    with pytest.raises(conv.ConvertError, match="32 TiB"):
        conv.convert(str(big), str(tmp_path / "big.vhd"), fmt="qcow2")
    no_leftovers(tmp_path)
    assert not (tmp_path / "big.vhd").exists()


def test_refuses_an_empty_image(tmp_path: Path) -> None:
    """0 bytes is a build that failed, not a disk: refused (not padded to 1 MiB), in every path."""
    empty = tmp_path / "empty.raw"
    empty.touch()
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "empty.qcow2", "0")
    for src in (empty, tmp_path / "empty.qcow2"):
        with pytest.raises(conv.ConvertError, match=f"{src}: the image is empty"):
            conv.convert(str(src), str(tmp_path / "out.vhd"), digests=())
    with pytest.raises(conv.ConvertError, match="the image is empty"):
        conv.convert_in_place(str(empty))
    assert empty.stat().st_size == 0 and not (tmp_path / "out.vhd").exists()
    no_leftovers(tmp_path)


def test_above_2040_gib_is_supported(tmp_path: Path) -> None:
    """qemu-img refuses VHDs over 2040 GiB; Azure takes up to 32 TiB.  Sparse, so cheap."""
    size = 2100 * (1 << 30) + 4096
    src = tmp_path / "big.qcow2"
    qemu_img("create", "-f", "qcow2", src, str(size))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 9 {size - 4096} 4096", str(src)],
                   check=True, capture_output=True)
    dst = tmp_path / "big.vhd"
    res = conv.convert(str(src), str(dst), fmt="qcow2", digests=["none"]).as_dict()
    want = -(-size // MiB) * MiB
    assert res["output"]["virtual_size"] == want
    assert any("2040 GiB" in w for w in res["warnings"])
    footer = vhd.parse_footer(_tail(dst), str(dst), want, verify=True)
    assert footer.current_size == want
    with open(dst, "rb") as f:
        f.seek(size - 4096)
        assert f.read(4096) == bytes([9]) * 4096
    assert allocated(dst) <= MiB


# -- in place --------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["raw", "vpc-fixed"])
def test_in_place(tmp_path: Path, recipe: str) -> None:
    src, fmt, raw = make_source(tmp_path, recipe)
    keep = tmp_path / "original.raw"
    shutil.copyfile(raw, keep)
    res = conv.convert_in_place(str(src), fmt=fmt, digests=["sha256"]).as_dict()
    want = -(-SIZE // MiB) * MiB
    assert res["in_place"] is True
    assert res["output"]["rounded_by"] == want - SIZE
    assert_valid_vhd(src, want)
    assert_same_disk(keep, "raw", src)
    assert res["digests"]["sha256"] == file_digests(src)["sha256"]


@pytest.mark.parametrize("recipe", ["raw", "vpc-fixed"])
def test_in_place_failure_restores_the_file(tmp_path: Path, monkeypatch, recipe: str) -> None:
    src, fmt, _ = make_source(tmp_path, recipe)
    before = file_digests(src)
    size_before = src.stat().st_size
    real = sysio.pwrite_all
    failed = []

    def full(fd, data, off):          # the new footer's write finds the disk full, once
        if len(data) == 512 and off > SIZE and not failed:
            failed.append(off)
            raise OSError(28, "No space left on device")
        return real(fd, data, off)

    monkeypatch.setattr(sysio, "pwrite_all", full)
    with pytest.raises(conv.ConvertError, match="restored"):
        conv.convert_in_place(str(src), fmt=fmt)
    assert failed
    assert src.stat().st_size == size_before
    assert file_digests(src) == before


def test_in_place_whole_mib_raw(tmp_path: Path) -> None:
    raw = write_pattern(tmp_path / "mib.raw", 3 * MiB, [(0, 4096)])
    res = conv.convert_in_place(str(raw), digests=["md5"]).as_dict()
    assert res["output"]["rounded_by"] == 0
    assert raw.stat().st_size == 3 * MiB + 512
    assert_valid_vhd(raw, 3 * MiB)
    assert res["digests"]["md5_base64"] == file_digests(raw)["md5_base64"]


def test_in_place_refuses_other_formats(tmp_path: Path) -> None:
    src, fmt, _ = make_source(tmp_path, "qcow2")
    before = file_digests(src)
    with pytest.raises(conv.ConvertError, match="in-place"):
        conv.convert_in_place(str(src), fmt=fmt)
    assert file_digests(src) == before


# -- the command line ------------------------------------------------------------------------------
def test_cli_json(tmp_path: Path) -> None:
    from click.testing import CliRunner

    src, fmt, _ = make_source(tmp_path, "qcow2")
    dst = tmp_path / "cli.vhd"
    r = CliRunner().invoke(cli, ["convert", "-f", fmt, "--digest", "md5", "--json", str(src),
                                 str(dst)])
    assert r.exit_code == 0, r.output
    facts = json.loads(r.stdout)
    assert facts["digests"]["md5_base64"] == file_digests(dst)["md5_base64"]
    assert "sha256" not in facts["digests"]
    assert facts["output"]["file_size"] == dst.stat().st_size
    assert set(facts["timings"]) >= {"total"}
    # refusal: exit 5 (not 1, a finding) and a message naming DST; bad source: exit 3
    r = CliRunner().invoke(cli, ["convert", str(src), str(dst)])
    assert r.exit_code == Exit.CONVERT_FAILED == 5 and str(dst) in r.stderr
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + bytes(100))
    r = CliRunner().invoke(cli, ["convert", "-f", "qcow2", str(bad), str(tmp_path / "x.vhd")])
    assert r.exit_code == 3, r.output
    no_leftovers(tmp_path)


def test_source_shrinking_during_copy_is_a_clean_error(tmp_path: Path, monkeypatch) -> None:
    """A source truncated while it is copied: whichever sees it first — a copy thread whose
    read comes up short, or the main thread walking the allocation map (SEEK_DATA past the new
    end) — it is a TruncatedImage naming the source (exit 3), and no destination."""
    src, fmt, _ = make_source(tmp_path, "raw")
    real = os.preadv
    calls = []

    def read_then_shrink(fd, bufs, off):
        n = real(fd, bufs, off)
        if not calls and threading.current_thread().name == "vhdtool-copy":
            os.truncate(src, 1 << 20)          # our own scratch source, after its first read
            calls.append(off)
        return n

    monkeypatch.setattr(engine, "COPY_THREADS", 1)    # the next read is surely past the new end
    monkeypatch.setattr(os, "preadv", read_then_shrink)
    dst = tmp_path / "out.vhd"
    with pytest.raises(TruncatedImage, match=f"{src}: .* at offset 0x.*shrank while it was being"):
        conv.convert(str(src), str(dst), fmt=fmt, digests=["none"])
    assert calls, "the copy threads did not read the source"
    assert not dst.exists()
    no_leftovers(tmp_path)
