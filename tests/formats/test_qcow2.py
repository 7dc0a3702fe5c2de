"""qcow2 reader against qemu-img/qemu-io: every image is made by qemu, every answer checked by qemu.

``assert_reads_like_qemu`` compares every byte of ``read()`` with ``qemu-img convert -f qcow2 -O
raw``; the allocation map is compared with ``qemu-img map --output=json`` where qemu's map has the
same meaning as ours (no backing file, no data file).
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from vhdtool.formats import (CorruptImage, EncryptedImage, FormatError, Kind, MissingBackingFile,
                              UnsupportedFeature, open_image, probe)
from vhdtool.formats.qcow2 import Qcow2Image
from tests.oracle import (assert_reads_like_qemu, needs_qemu, qemu_img, qemu_info, qemu_io,
                          write_pattern)

pytestmark = needs_qemu

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


def make_qcow2(tmp: Path, name: str, size: int, runs: list[tuple[int, int]], options: str = "",
               compress: bool = False, seed: int = 1) -> Path:
    """A qcow2 converted by qemu-img from a sparse raw file with random data at ``runs``."""
    raw = write_pattern(tmp / (name + ".src.raw"), size, runs, seed)
    out = tmp / name
    args = ["convert", "-f", "raw", "-O", "qcow2"]
    if compress:
        args.append("-c")
    if options:
        args += ["-o", options]
    qemu_img(*args, raw, out)
    raw.unlink()
    return out


def qemu_map(path: Path) -> list[tuple[int, int, Kind, int | None]]:
    """qemu-img map as merged (start, end, kind, host offset) runs, in our terms."""
    out: list[tuple[int, int, Kind, int | None]] = []
    for e in json.loads(qemu_img("map", "--output=json", "-f", "qcow2", path)):
        kind = (Kind.DATA if e["data"] else Kind.ZERO if e["present"] else Kind.UNALLOCATED)
        host = e.get("offset") if kind is Kind.DATA else None
        out.append((e["start"], e["start"] + e["length"], kind, host))
    return _merge(out)


def our_map(img: Qcow2Image) -> list[tuple[int, int, Kind, int | None]]:
    return _merge([(e.offset, e.end, e.kind, None if e.compressed else e.host_offset)
                   for e in img.extents()])


Run = tuple[int, int, Kind, int | None]


def _merge(runs: list[Run]) -> list[Run]:
    out: list[Run] = []
    for s, e, k, h in runs:
        if out:
            ps, pe, pk, ph = out[-1]
            contiguous = ph is None and h is None or (ph is not None and h is not None
                                                      and ph + pe - ps == h)
            if pk is k and pe == s and contiguous:
                out[-1] = (ps, e, k, ph)
                continue
        out.append((s, e, k, h))
    return out


def qemu_run_in(cwd: Path, *argv: str | Path) -> str:
    """A qemu tool run in ``cwd``: qemu 7.2 resolves a relative data file name against the cwd."""
    res = subprocess.run([*map(str, argv)], cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0 and "error" not in res.stdout.lower(), res.stdout + res.stderr
    return res.stdout


def qemu_img_in(cwd: Path, *args: str | Path) -> str:
    return qemu_run_in(cwd, "qemu-img", *args)


def check_against_qemu(path: Path, tmp: Path, compare_map: bool = True) -> Qcow2Image:
    """Bytes, allocation map and cluster counts as qemu-img convert / map / check see them."""
    img = open_image(path, "qcow2")
    assert isinstance(img, Qcow2Image)
    assert_reads_like_qemu(img, path, "qcow2", tmp)
    if compare_map:
        assert our_map(img) == qemu_map(path)
        check = json.loads(qemu_img("check", "--output=json", "-f", "qcow2", path))
        counts = img.cluster_counts()
        assert counts["allocated"] == check.get("allocated-clusters", 0)
        assert counts["compressed"] == check.get("compressed-clusters", 0)
    return img


def set_header_field(path: Path, offset: int, fmt: str, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


RUNS = [(0, 4096), (100 * KiB + 3, 300 * KiB), (3 * MiB, 2 * MiB + 512), (9 * MiB - 700, 700)]


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("cluster", [512, 64 * KiB, 2 * MiB])
def test_plain_images_read_like_qemu(tmp_path: Path, compat: str, cluster: int) -> None:
    p = make_qcow2(tmp_path, "a.qcow2", 9 * MiB, RUNS, f"compat={compat},cluster_size={cluster}")
    # zero writes and a discard on top: zero clusters (v3) or zeroed data (v2)
    qemu_io(p, "qcow2", "write -z 2M 2M", "discard 6M 2M", "write -P 0x41 8M 4k")
    with check_against_qemu(p, tmp_path) as img:
        assert probe(p) == "qcow2"
        info = img.info()
        q = qemu_info(p, "qcow2")
        assert info["cluster_size"] == q["cluster-size"] == cluster
        assert info["compat"] == q["format-specific"]["data"]["compat"]
        assert info["version"] == (3 if compat == "1.1" else 2)
        assert info["refcount_bits"] == q["format-specific"]["data"]["refcount-bits"]
        assert info["dirty"] is False and info["corrupt"] is False
        assert info["allocated_clusters"] > 0
        if compat == "1.1":
            assert info["zero_clusters"] > 0
            assert any(e.kind is Kind.ZERO for e in img.extents())


def test_odd_virtual_size(tmp_path: Path) -> None:
    size = 5 * MiB + 1536          # not a multiple of the cluster size
    p = make_qcow2(tmp_path, "odd.qcow2", size, [(size - 5000, 5000), (0, 1)])
    with check_against_qemu(p, tmp_path) as img:
        assert img.virtual_size == size


@pytest.mark.parametrize("ctype", ["zlib", "zstd"])
@pytest.mark.parametrize("cluster", [4 * KiB, 64 * KiB, 2 * MiB])
def test_compressed_images(tmp_path: Path, ctype: str, cluster: int) -> None:
    # half random (incompressible: stored raw-ish), half repetitive text (really compressed)
    size = 6 * MiB + 1536       # the last, partial cluster is compressed too
    p0 = write_pattern(tmp_path / "src.raw", size, [(0, MiB + 5)])
    with open(p0, "r+b") as f:
        f.seek(3 * MiB)
        f.write(b"vhdtool qcow2 compressed clusters " * 40000)
        f.seek(size - 3000)
        f.write(b"tail " * 600)
    p = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
             f"compression_type={ctype},cluster_size={cluster}", p0, p)
    with check_against_qemu(p, tmp_path) as img:
        info = img.info()
        assert info["compression_type"] == ctype
        assert info["compression_type"] == qemu_info(p, "qcow2")["format-specific"]["data"][
            "compression-type"]
        assert info["compressed_clusters"] > 0
        # reads that start and end inside compressed clusters
        ref = p0.read_bytes()
        for off, n in [(3 * MiB + 77, 5000), (cluster - 3, 7), (MiB - 100, cluster + 200)]:
            assert img.read(off, n) == ref[off:off + n]


def test_extended_l2(tmp_path: Path) -> None:
    p = make_qcow2(tmp_path, "x.qcow2", 8 * MiB, [(0, 2 * MiB)], "extended_l2=on,cluster_size=128k")
    # subcluster-sized (4 KiB) writes, zero writes and discards leave mixed bitmaps
    qemu_io(p, "qcow2", "write -P 0x11 4M 4k", f"write -P 0x22 {4 * MiB + 12 * KiB} 8k",
            "write -z 64k 8k",
            "discard 128k 32k", "write -z 5M 128k", f"write -P 0x33 {6 * MiB + 124 * KiB} 8k")
    with check_against_qemu(p, tmp_path) as img:
        assert img.info()["extended_l2"] is True
        assert qemu_info(p, "qcow2")["format-specific"]["data"]["extended-l2"] is True
        kinds = {e.kind for e in img.extents(4 * MiB, 4 * MiB + 128 * KiB)}
        assert kinds == {Kind.DATA, Kind.UNALLOCATED}


def test_extended_l2_compressed(tmp_path: Path) -> None:
    src = write_pattern(tmp_path / "s.raw", 2 * MiB, [(0, MiB)])
    with open(src, "r+b") as f:
        f.seek(MiB)
        f.write(b"subclusters " * 50000)
    p = tmp_path / "xc.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=64k",
             src, p)
    qemu_io(p, "qcow2", "write -P 0x09 1M 2k")      # a subcluster write over a compressed cluster
    with check_against_qemu(p, tmp_path) as img:
        assert img.info()["compressed_clusters"] > 0


def test_internal_snapshots_read_the_active_state(tmp_path: Path) -> None:
    p = make_qcow2(tmp_path, "s.qcow2", 2 * MiB, [(0, MiB)])
    qemu_img("snapshot", "-c", "before", p)
    qemu_io(p, "qcow2", "write -P 0x5a 64k 128k", "discard 512k 64k", "write -z 1M 64k")
    with check_against_qemu(p, tmp_path) as img:
        assert img.info()["snapshots"] == 1
        assert not img.problems


def test_extended_l2_over_backing(tmp_path: Path) -> None:
    base = write_pattern(tmp_path / "base.raw", 2 * MiB, [(0, 2 * MiB)], seed=7)
    p = tmp_path / "ov.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", "-b", base.name,
             "-F", "raw", p, str(2 * MiB))
    qemu_io(p, "qcow2", "write -P 0x44 2k 2k", "write -z 10k 4k", "write -P 0x55 100k 6k")
    with check_against_qemu(p, tmp_path, compare_map=False) as img:
        sources = {e.source.path if e.source else None for e in img.extents()
                   if e.kind is Kind.DATA}
        assert sources == {None, str(base)}


def test_backing_raw_shorter_than_overlay(tmp_path: Path) -> None:
    base = write_pattern(tmp_path / "base.raw", 3 * MiB, [(0, 3 * MiB)], seed=3)
    p = tmp_path / "ov.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", p, str(8 * MiB))
    qemu_io(p, "qcow2", "write -P 0x66 1M 64k", "write -z 2M 64k", "write -P 0x67 5M 4k")
    with check_against_qemu(p, tmp_path, compare_map=False) as img:
        info = img.info()
        q = qemu_info(p, "qcow2")
        assert info["backing_file"] == q["backing-filename"] == "base.raw"
        assert info["backing_format"] == q["backing-filename-format"] == "raw"
        assert img.read(3 * MiB, 4096) == bytes(4096)           # past the backing file's end
        assert img.read(2 * MiB, 4096) == bytes(4096)           # zero cluster hides the backing


def test_backing_chain_qcow2_over_qcow2(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path, "base.qcow2", 4 * MiB, [(0, 4 * MiB)], seed=5)
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid, str(6 * MiB))
    qemu_io(mid, "qcow2", "write -P 0x01 64k 128k", "write -z 1M 64k")
    qemu_img("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top, str(6 * MiB))
    qemu_io(top, "qcow2", "write -P 0x02 128k 64k")
    # hide the backing format extension (unknown extensions are ignored): format is probed
    head = top.read_bytes()[:4096]
    at = head.index(struct.pack(">I", 0xE2792ACA))
    set_header_field(top, at, ">I", 0x0BADF00D)
    with check_against_qemu(top, tmp_path, compare_map=False) as img:
        assert img.backing is not None and img.backing.backing is not None
        assert img.info()["backing_format"] is None


def test_compressed_backing_under_a_different_cluster_size(tmp_path: Path) -> None:
    src = tmp_path / "s.raw"
    src.write_bytes(b"compressible backing data " * 100000)       # ~2.5 MiB
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4k", src, base)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=64k", "-b", "base.qcow2", "-F", "qcow2",
             top, str(4 * MiB))
    qemu_io(top, "qcow2", "write -P 0x31 65536 4096", "write -z 1M 64k")
    with check_against_qemu(top, tmp_path, compare_map=False) as img:
        ref = src.read_bytes()
        assert img.read(70000, 100000) == ref[70000:170000]
        assert any(e.compressed and e.source is img.backing for e in img.extents())


def test_missing_backing_file(tmp_path: Path) -> None:
    base = write_pattern(tmp_path / "base.raw", MiB, [(0, 4096)])
    p = tmp_path / "ov.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", p, str(MiB))
    base.unlink()
    with pytest.raises(MissingBackingFile, match="base.raw"):
        open_image(p)


def test_backing_loop_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", a, "1M")
    qemu_img("create", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", b, "1M")
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a)
    with pytest.raises(FormatError, match="loop"):
        open_image(b)


@pytest.mark.parametrize("raw_data,extra", [("on", ""), ("off", ""),
                                             ("off", ",extended_l2=on,cluster_size=64k")])
def test_external_data_file(tmp_path: Path, raw_data: str, extra: str) -> None:
    src = write_pattern(tmp_path / "src.raw", 4 * MiB, [(MiB, MiB), (3 * MiB + 5, 100)])
    p = tmp_path / "d.qcow2"
    # qemu 7.2 resolves a relative data file name against its cwd, we against the image's
    # folder: run qemu in the image's folder so both mean the same file
    qemu_img_in(tmp_path, "convert", "-f", "raw", "-O", "qcow2", "-o",
                f"data_file=d.data,data_file_raw={raw_data}{extra}", src, p)
    qemu_run_in(tmp_path, "qemu-io", "-f", "qcow2", "-c", "write -z 1M 64k",
                "-c", "write -P 0x77 200k 8k", "-c", "discard 2M 64k", "-c", "write -z 3M 4k", p)
    qemu_img_in(tmp_path, "convert", "-f", "qcow2", "-O", "raw", p, "ref.raw")
    q = json.loads(qemu_img_in(tmp_path, "info", "--output=json", "-f", "qcow2", p))
    with open_image(p) as img:
        assert img.virtual_size == q["virtual-size"]
        assert img.read(0, 4 * MiB) == (tmp_path / "ref.raw").read_bytes()
        info = img.info()
        fs = q["format-specific"]["data"]
        assert info["data_file"] == fs["data-file"] == "d.data"
        assert info["data_file_raw"] is fs["data-file-raw"] is (raw_data == "on")
        data = [e for e in img.extents() if e.kind is Kind.DATA]
        assert data and all(e.source is img.data_file for e in data)
    (tmp_path / "d.data").unlink()
    with pytest.raises(MissingBackingFile, match="d.data"):
        open_image(p)


@pytest.mark.parametrize("prealloc", ["metadata", "falloc"])
def test_preallocation(tmp_path: Path, prealloc: str) -> None:
    p = tmp_path / "p.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"preallocation={prealloc}", p, str(4 * MiB))
    qemu_io(p, "qcow2", "write -P 0x12 1M 4k", "write -z 2M 64k")
    with check_against_qemu(p, tmp_path) as img:
        assert img.info()["allocated_clusters"] >= 60


@pytest.mark.parametrize("fmt,name", [("luks", "LUKS"), ("aes", "AES-CBC")])
def test_encrypted_images_are_refused(tmp_path: Path, fmt: str, name: str) -> None:
    p = tmp_path / "e.qcow2"
    opts = f"encrypt.format={fmt},encrypt.key-secret=sec0"
    if fmt == "luks":
        opts += ",encrypt.iter-time=100"
    for attempt in range(3):    # qemu's PBKDF benchmark fails now and then on a loaded machine
        try:
            qemu_img("create", "-f", "qcow2", "--object", "secret,id=sec0,data=abc", "-o", opts,
                     p, "1M")
            break
        except AssertionError:
            if attempt == 2:
                raise
    assert qemu_info(p, "qcow2")["encrypted"] is True
    with pytest.raises(EncryptedImage, match=name):
        open_image(p)


def test_dirty_and_corrupt_bits_are_problems_not_errors(tmp_path: Path) -> None:
    p = make_qcow2(tmp_path, "d.qcow2", 2 * MiB, [(0, MiB)], "lazy_refcounts=on")
    set_header_field(p, 72, ">Q", 0b11)       # dirty + corrupt: qemu still reads it read-only
    with check_against_qemu(p, tmp_path) as img:
        info = img.info()
        assert info["dirty"] and info["corrupt"]
        assert qemu_info(p, "qcow2")["format-specific"]["data"]["corrupt"] is True
        assert {p.severity for p in img.problems} == {"warning", "error"}
        assert "lazy refcounts" in info["compatible_features"]


def test_unknown_incompatible_bit_is_refused(tmp_path: Path) -> None:
    p = make_qcow2(tmp_path, "u.qcow2", MiB, [(0, 4096)])
    set_header_field(p, 72, ">Q", 1 << 9)
    with pytest.raises(UnsupportedFeature, match="bit 9"):
        open_image(p)
    with pytest.raises(AssertionError, match="Unsupported qcow2 feature"):   # qemu refuses too
        qemu_img("info", "-f", "qcow2", p)
    # a name for bit 9 in the feature name table is reported by both
    table = p.read_bytes()[:4096].index(struct.pack(">I", 0x6803F857)) + 8
    with open(p, "r+b") as f:
        f.seek(table + 2)
        f.write(b"future feature".ljust(46, b"\0"))
        f.seek(table + 1)
        f.write(bytes([9]))
    with pytest.raises(UnsupportedFeature, match=r"bit 9 \(future feature\)"):
        open_image(p)
    with pytest.raises(AssertionError, match="future feature"):
        qemu_img("info", "-f", "qcow2", p)


def test_bad_header_fields_are_corrupt(tmp_path: Path) -> None:
    p = make_qcow2(tmp_path, "b.qcow2", MiB, [(0, 4096)])
    good = p.read_bytes()
    for off, fmt, value, exc in [(20, ">I", 8, CorruptImage), (20, ">I", 22, UnsupportedFeature),
                                 (4, ">I", 4, UnsupportedFeature), (36, ">I", 0, CorruptImage),
                                 (40, ">Q", 12345, CorruptImage), (100, ">I", 96, CorruptImage)]:
        p.write_bytes(good)
        set_header_field(p, off, fmt, value)
        with pytest.raises(exc):
            open_image(p)


def test_size_not_a_sector_multiple_reads_like_qemu(tmp_path: Path) -> None:
    p = make_qcow2(tmp_path, "s.qcow2", 2 * MiB, [(2 * MiB - 4096, 4096)], "cluster_size=4k")
    set_header_field(p, 24, ">Q", 2 * MiB - 212)      # qemu counts whole sectors only
    with check_against_qemu(p, tmp_path) as img:
        assert img.virtual_size == 2 * MiB - 512
        assert any("multiple of 512" in p.message for p in img.problems)


def test_header_extension_checks_match_qemu(tmp_path: Path) -> None:
    p = make_qcow2(tmp_path, "h.qcow2", MiB, [(0, 4096)], "compat=0.10")
    # v2: extensions start at byte 72; an end marker with an absurd length is refused by qemu
    set_header_field(p, 76, ">I", 1 << 20)
    with pytest.raises(AssertionError, match="Header extension too large"):
        qemu_img("info", "-f", "qcow2", p)
    with pytest.raises(CorruptImage, match="header extension") as exc:
        open_image(p)
    assert exc.value.offset == 72
    # the raw-external-data autoclear bit without a data file
    v3 = make_qcow2(tmp_path, "r.qcow2", MiB, [(0, 4096)])
    set_header_field(v3, 88, ">Q", 2)
    with pytest.raises(AssertionError, match="data-file-raw requires a data file"):
        qemu_img("convert", "-f", "qcow2", "-O", "raw", v3, tmp_path / "r.raw")
    with pytest.raises(CorruptImage, match="raw external data"):
        open_image(v3)


def test_l2_pointer_past_eof_names_table_and_offset(tmp_path: Path) -> None:
    p = make_qcow2(tmp_path, "t.qcow2", MiB, [(0, 4096)])
    l1_off = struct.unpack(">Q", p.read_bytes()[40:48])[0]
    set_header_field(p, l1_off, ">Q", (1 << 63) | (1 << 40))
    with open_image(p) as img:
        with pytest.raises(CorruptImage, match="L1 table entry 0") as exc:
            img.read(0, 10)
        assert exc.value.offset == l1_off


def test_zero_flag_in_v2_image_is_corrupt_like_qemu(tmp_path: Path) -> None:
    p = make_qcow2(tmp_path, "v2.qcow2", MiB, [(0, 64 * KiB)], "compat=0.10")
    data = p.read_bytes()
    l1 = struct.unpack(">Q", data[40:48])[0]
    l2 = struct.unpack(">Q", data[l1:l1 + 8])[0] & 0x00FF_FFFF_FFFF_FE00
    set_header_field(p, l2, ">Q", struct.unpack(">Q", data[l2:l2 + 8])[0] | 1)
    with pytest.raises(AssertionError, match="pre-v3"):
        qemu_img("convert", "-f", "qcow2", "-O", "raw", p, tmp_path / "out.raw")
    with open_image(p) as img:
        with pytest.raises(CorruptImage, match="version 2") as exc:
            img.read(0, 512)
        assert exc.value.offset == l2


def test_sparse_1tib_map_is_fast_and_complete(tmp_path: Path) -> None:
    import time

    p = tmp_path / "big.qcow2"
    qemu_img("create", "-f", "qcow2", p, str(TiB))
    qemu_io(p, "qcow2", "write -P 0x01 0 64k", "write -P 0x02 300G 1M", "write -z 600G 2M",
            f"write -P 0x03 {TiB - 64 * KiB} 64k")
    with open_image(p) as img:
        t0 = time.perf_counter()
        ext = list(img.extents())
        elapsed = time.perf_counter() - t0
        assert elapsed < 1.0
        assert sum(e.length for e in ext) == TiB
        assert our_map(img) == qemu_map(p)
        assert img.allocated_bytes() == 64 * KiB + MiB + 64 * KiB
        assert img.read(300 * GiB, 8) == b"\x02" * 8
        assert img.read(TiB - 8, 100) == b"\x03" * 8


# -- mutated images: only FormatError or a successful read, in bounded time and memory -----------

FUZZ_READ = 4 * MiB


@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small valid images of several kinds (bytes), made once."""
    tmp = tmp_path_factory.mktemp("qcow2-fuzz")
    runs = [(0, 8 * KiB), (700 * KiB, 200 * KiB), (3 * MiB, 64 * KiB)]
    bases = {
        "v3-512": make_qcow2(tmp, "v3-512.qcow2", 4 * MiB, runs, "cluster_size=512"),
        "v2-4k": make_qcow2(tmp, "v2-4k.qcow2", 4 * MiB, runs, "compat=0.10,cluster_size=4k"),
        "zlib": make_qcow2(tmp, "zlib.qcow2", 4 * MiB, runs, "cluster_size=4k", compress=True),
        "zstd": make_qcow2(tmp, "zstd.qcow2", 4 * MiB, runs,
                           "cluster_size=4k,compression_type=zstd", compress=True),
        "extl2": make_qcow2(tmp, "extl2.qcow2", 4 * MiB, runs,
                            "cluster_size=16k,extended_l2=on"),
    }
    qemu_io(bases["v3-512"], "qcow2", "write -z 1M 64k")
    qemu_io(bases["extl2"], "qcow2", "write -z 16k 4k", "write -P 3 2M 1k")
    return {k: v.read_bytes() for k, v in bases.items()}


def _exercise(path: Path) -> None:
    """Open, map and read a (possibly broken) image the way the converter would."""
    with open_image(path, "qcow2") as img:
        img.info()
        n = 0
        for ext in img.extents():
            n += 1
            if ext.kind is Kind.DATA and n < 64:
                img.read(ext.offset, min(ext.length, 64 * KiB))
            if n > 20000:
                break
        img.read(0, FUZZ_READ)
        img.read(max(0, img.virtual_size - FUZZ_READ), FUZZ_READ)


def _fuzz_one(base: bytes, writes: list[tuple[int, bytes]], cut: int | None) -> None:
    import tempfile
    import time
    import tracemalloc

    data = bytearray(base)
    for off, chunk in writes:
        off %= len(data)
        data[off:off + len(chunk)] = chunk
    if cut is not None:
        del data[cut % len(data):]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.qcow2"
        p.write_bytes(bytes(data))
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            _exercise(p)
        except FormatError:
            pass
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.perf_counter() - t0 < 10
        assert peak < 96 * MiB


def _interesting_offsets(base: bytes) -> list[int]:
    """Header fields, the L1 table and the first L2 table of a base image."""
    l1 = struct.unpack(">Q", base[40:48])[0]
    l2 = struct.unpack(">Q", base[l1:l1 + 8])[0] & 0x00FF_FFFF_FFFF_FE00
    return [*range(0, 112, 4), l1, l1 + 8, l2, l2 + 8, l2 + 16, l2 + 64, l2 + 1024]


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])
CHUNKS = st.one_of(st.binary(min_size=1, max_size=8),
                   st.sampled_from([b"\xff" * 8, b"\0" * 8, b"\x80" + b"\0" * 7,
                                    b"\x40\0\0\0\0\0\0\0", b"\0\0\0\0\0\0\0\x01",
                                    b"\x7f\xff\xff\xff\xff\xff\xff\xff"]))


@pytest.mark.parametrize("kind", ["v3-512", "v2-4k", "zlib", "zstd", "extl2"])
@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_metadata(fuzz_bases: dict[str, bytes], kind: str, data: st.DataObject) -> None:
    base = fuzz_bases[kind]
    where = st.sampled_from(_interesting_offsets(base)).flatmap(
        lambda o: st.integers(o, o + 7))
    writes = data.draw(st.lists(st.tuples(where, CHUNKS), min_size=1, max_size=4))
    _fuzz_one(base, writes, None)


@pytest.mark.parametrize("kind", ["v3-512", "zlib", "extl2"])
@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_anywhere_and_truncated(fuzz_bases: dict[str, bytes], kind: str,
                                        data: st.DataObject) -> None:
    base = fuzz_bases[kind]
    writes = data.draw(st.lists(st.tuples(st.integers(0, len(base) - 1), CHUNKS), max_size=6))
    cut = data.draw(st.none() | st.integers(0, len(base) - 1))
    _fuzz_one(base, writes, cut)


@pytest.mark.parametrize("kind", ["v3-512", "v2-4k", "extl2", "zlib", "zstd"])
@pytest.mark.parametrize("region", ["header", "l1+l2"])
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutations_read_like_qemu_when_both_read(fuzz_bases: dict[str, bytes], kind: str,
                                                 region: str, tmp_path: Path,
                                                 data: st.DataObject) -> None:
    """Differential: whenever qemu and we both accept a mutated image, the bytes agree."""
    import tempfile

    base = bytearray(fuzz_bases[kind])
    offsets = _interesting_offsets(bytes(base))
    l1, l2 = offsets[-7], offsets[-5]
    entry = 16 if kind == "extl2" else 8
    for _ in range(data.draw(st.integers(1, 3))):
        if region == "header":
            i = data.draw(st.integers(0, 111))
        elif data.draw(st.booleans()):
            i = l1 + data.draw(st.integers(0, 15))
        else:
            i = l2 + data.draw(st.integers(0, 63)) * entry + data.draw(
                st.sampled_from([0, 1, 7, entry - 1]))
        base[i] = data.draw(st.sampled_from([0, 1, 0x80, 0xFF]) | st.integers(0, 255))
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        p = Path(d) / "m.qcow2"
        p.write_bytes(bytes(base))
        ref = Path(d) / "ref.raw"
        res = subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", p, ref],
                             capture_output=True)
        try:
            with open_image(p, "qcow2") as img:
                if img.virtual_size > 64 * MiB:
                    return
                ours = img.read(0, img.virtual_size)
        except FormatError:
            return
        if res.returncode == 0:
            assert ours == ref.read_bytes()
