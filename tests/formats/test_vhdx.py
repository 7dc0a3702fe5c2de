"""VHDX reader against qemu-img/qemu-io (naming -f vhdx) and a Hyper-V-made sample."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from vhdtool.formats import Kind, open_image, probe
from vhdtool.formats.errors import (CorruptImage, FormatError, MissingBackingFile, TruncatedImage,
                                    UnsupportedFeature)
from vhdtool.formats import vhdx
from vhdtool.formats.vhdx import VhdxImage
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
        assert img.subformat == "dynamic" and info["log_state"] == "clean"
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
            assert info["log_length"] == 2 * MiB
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


# -- dirty log ------------------------------------------------------------------------------------
def _dirty(tmp_path: Path, size: str, fail_sector: int, writes: tuple[str, ...]) -> Path:
    """A VHDX whose last BAT update is only in the log: blkdebug fails qemu's write of the BAT
    sector ``fail_sector`` after the log entry was written and flushed (qemu then leaves the
    header's LogGuid set)."""
    p = make(tmp_path / "dirty.vhdx", size, "block_size=1M")
    conf = tmp_path / "blkdebug.conf"
    conf.write_text(f'[inject-error]\nevent = "pwritev"\nsector = "{fail_sector}"\nerrno = "5"\n')
    argv = [QEMU_IO or "qemu-io", "-f", "vhdx"]
    for w in writes:
        argv += ["-c", w]
    res = subprocess.run([*argv, f"blkdebug:{conf}:{p}"], capture_output=True, text=True)
    assert "Input/output error" in res.stdout + res.stderr, res
    return p


@needs_qemu
@pytest.mark.parametrize("size,fail_sector,writes,blocks", [
    # BAT at 2 MiB = sector 4096; the first BAT write fails
    ("32M", 4096, ("write -P 0x5a 0 1M", "write -P 0x6b 3M 100k"), 1),
    # 2 GiB: BAT entry 1536 is in the BAT's 4th 4 KiB page (sector 4120); entries 1 and 2 are
    # older, already applied log entries of the same log, entry 3 is the active one
    ("2G", 4120, ("write -P 0x5a 0 1M", "write -P 0x77 8M 4k", "write -P 0x6b 1536M 100k"), 3),
])
def test_dirty_log_is_replayed_in_memory(tmp_path: Path, size: str, fail_sector: int,
                                         writes: tuple[str, ...], blocks: int) -> None:
    p = _dirty(tmp_path, size, fail_sector, writes)
    before = sha(p)
    # qemu refuses to read it as it is
    res = subprocess.run([QEMU_IO or "qemu-io", "-f", "vhdx", "-r", "-c", "read 0 4k", str(p)],
                         capture_output=True, text=True)
    assert "log that needs to be replayed" in res.stdout + res.stderr
    repaired = tmp_path / "repaired.vhdx"
    shutil.copy(p, repaired)
    qemu_img("check", "-r", "all", "-f", "vhdx", repaired)
    with open_image(p, "vhdx") as img:
        info = img.info()
        assert info["log_state"] == "replayed in memory"
        assert info["log_entries_replayed"] >= 1
        assert info["bat_states"]["fully_present"] == blocks
        assert any("log was replayed" in pr.message for pr in img.problems)
        assert_reads_like_qemu(img, repaired, "vhdx", tmp_path)
    with open_image(repaired, "vhdx") as clean:
        assert clean.info()["log_state"] == "clean"
        assert clean.info()["bat_states"] == info["bat_states"]
    assert sha(p) == before


@needs_qemu
def test_file_range_is_what_read_gives(tmp_path: Path) -> None:
    """``file_range`` (used by convert's unordered copy) names file bytes equal to ``read()``, and
    names none for data a replayed log page covers."""
    import os

    p = _dirty(tmp_path, "32M", 4096, ("write -P 0x5a 0 1M", "write -P 0x6b 3M 100k"))
    with open_image(p, "vhdx") as img:
        data = [e for e in img.extents() if e.kind is Kind.DATA]
        assert data
        for ext in data:
            fd, off = img.file_range(ext)
            assert os.pread(fd, ext.length, off) == img.read(ext.offset, ext.length)
        ext = data[0]
        page = ext.host_offset // vhdx.PAGE * vhdx.PAGE + vhdx.PAGE
        img._overlay[page] = b"\x01" * vhdx.PAGE          # as if the log patched that page
        img._overlay_keys = sorted(img._overlay)
        assert img.file_range(ext) is None
        assert img.read(ext.offset, ext.length) != os.pread(img.fileno(), ext.length,
                                                            ext.host_offset)


@needs_qemu
def test_dirty_log_without_replay_would_lose_data(tmp_path: Path) -> None:
    """The replayed BAT page really differs from the one on disk (the test above is not vacuous)."""
    p = _dirty(tmp_path, "32M", 4096, ("write -P 0x5a 0 1M",))
    with open_image(p, "vhdx") as img:
        bat = img.regions[vhdx.BAT_GUID].file_offset
        assert img._overlay and bat in img._overlay
        on_disk = p.read_bytes()[bat:bat + 8]
        assert int.from_bytes(on_disk, "little") & 7 != vhdx.FULLY_PRESENT
        assert img.read(0, MiB) == b"\x5a" * MiB


# -- damaged images: only FormatError subclasses, bounded time ------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import crc32c  # noqa: E402

#: (structure, start, length, CRC-covered length or 0) in a qemu image with 1 MiB blocks
STRUCTURES = [("identifier", 0, 1024, 0), ("header1", 64 << 10, 80, 4096),
              ("header2", 128 << 10, 80, 4096), ("regions1", 192 << 10, 80, 65536),
              ("regions2", 256 << 10, 80, 65536), ("log", MiB, 8192, 0),
              ("bat", 2 * MiB, 512, 0), ("metadata", 3 * MiB, 256, 0),
              ("items", 3 * MiB + (64 << 10), 8192, 0),
              # the last MiB: the sector bitmap block of the differencing image
              ("last MiB", -MiB, 1024, 0)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A folder holding parent.vhdx, and valid images to damage: clean, dirty (log to replay),
    diff (differencing image of parent.vhdx, with a partially present block)."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img not installed")
    d = tmp_path_factory.mktemp("vhdx-fuzz")
    clean = make(d / "clean.vhdx", "24M", "block_size=1M", writes=WRITES[:4])
    dirty = _dirty(d, "32M", 4096, ("write -P 0x5a 0 1M", "write -P 0x6b 3M 100k"))
    parent = make(d / "parent.vhdx", "8M", "block_size=1M", writes=("write -P 0xa1 0 8M",))
    child = make(d / "child.vhdx", "8M", "block_size=1M", "block_state_zero=off",
                 writes=("write -P 0xc1 1M 1M", "write -P 0xc3 3M 1M"))
    make_differencing(child, parent, {0: 0, 2: 0, 3: vhdx.PARTIALLY_PRESENT},
                      {3: [(8, 16), (1000, 1040)]})
    with open_image(child, "vhdx") as img:
        assert img.subformat == "differencing"
    return d, {"clean": clean.read_bytes(), "dirty": dirty.read_bytes(),
               "diff": child.read_bytes()}


def _read_all(p: Path) -> None:
    try:
        with open_image(p, "vhdx") as img:
            img.info()
            budget = 64 * MiB     # the map of the whole disk, the bytes of its first data runs
            for ext in list(img.extents()):
                if ext.kind is Kind.DATA and budget > 0:
                    n = min(ext.length, budget, 16 * MiB)
                    assert len(img.read(ext.offset, n)) == n
                    budget -= n
    except FormatError:
        pass


@settings(max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["clean", "dirty", "diff"]), where=st.sampled_from(STRUCTURES),
       edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1,
                      max_size=4),
       fix_crc=st.booleans())
def test_mutated_images_fail_cleanly(pristine, tmp_path: Path, which: str, where, edits,
                                     fix_crc: bool) -> None:
    _name, start, length, crc_len = where
    folder, images = pristine
    buf = bytearray(images[which])
    start %= len(buf)
    for rel, val in edits:
        buf[start + rel % length] = val
    if fix_crc and crc_len:
        buf[start + 4:start + 8] = b"\0" * 4
        buf[start + 4:start + 8] = crc32c.crc32c(bytes(buf[start:start + crc_len])).to_bytes(
            4, "little")
    p = folder / "m.vhdx"            # beside parent.vhdx
    p.write_bytes(buf)
    t = time.monotonic()
    _read_all(p)
    assert time.monotonic() - t < 3
    assert p.read_bytes() == buf


@settings(max_examples=25, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["clean", "dirty", "diff"]), keep=st.integers(0, 12 * MiB))
def test_truncated_images_fail_cleanly(pristine, which: str, keep: int) -> None:
    folder, images = pristine
    p = folder / "t.vhdx"
    p.write_bytes(images[which][:keep])
    _read_all(p)


# -- differencing (built by hand: qemu-img cannot create, nor read, VHDX with a parent) ------------
def _locator(pairs: dict[str, str]) -> bytes:
    """A VHDX parent locator item: header, key/value entries, UTF-16LE strings (MS-VHDX 2.6.2.6)."""
    head = vhdx.ParentLocatorHeader.build(dict(locator_type=vhdx.VHDX_PARENT_LOCATOR_TYPE.bytes_le,
                                               reserved=0, key_value_count=len(pairs)))
    strings = b""
    entries = b""
    base = len(head) + 12 * len(pairs)
    for k, v in pairs.items():
        kb, vb = k.encode("utf-16-le"), v.encode("utf-16-le")
        entries += vhdx.ParentLocatorEntry.build(dict(
            key_offset=base + len(strings), value_offset=base + len(strings) + len(kb),
            key_length=len(kb), value_length=len(vb)))
        strings += kb + vb
    return head + entries + strings


def make_differencing(child: Path, parent: Path, states: dict[int, int],
                      bitmap: dict[int, list[tuple[int, int]]], linkage: str | None = None,
                      relative: str = "parent.vhdx") -> None:
    """Turn the qemu-made dynamic VHDX ``child`` into a differencing image of ``parent``.

    ``states``: payload block -> new BAT state (the block's file offset is kept); ``bitmap``:
    partially present block -> sector runs [a, b) stored in this file (one sector bitmap block
    appended at the end of the file, for chunk 0).  Everything else is qemu's own layout.
    """
    with open_image(child, "vhdx") as img:
        meta = img.regions[vhdx.METADATA_GUID]
        bat = img.regions[vhdx.BAT_GUID]
        items = img.metadata_items
        fp = items[vhdx.FILE_PARAMETERS]
        cr, spb = img.chunk_ratio, img.block_size // img.logical_sector_size
        nitems = len(items)
    with open_image(parent, "vhdx") as par:
        guid = par.data_write_guid
    buf = bytearray(child.read_bytes())
    # file parameters: HasParent
    flags_at = meta.file_offset + fp.offset + 4
    buf[flags_at] |= 2
    # a parent locator item after the last item, and its table entry
    loc = _locator({"parent_linkage": linkage or "{%s}" % guid, "relative_path": relative,
                    "absolute_win32_path": "C:\\nowhere\\parent.vhdx"})
    item_off = max(i.offset + i.length for i in items.values())
    item_off = -(-item_off // 4096) * 4096
    buf[meta.file_offset + item_off:meta.file_offset + item_off + len(loc)] = loc
    entry_at = meta.file_offset + 32 + 32 * nitems
    buf[entry_at:entry_at + 32] = vhdx.MetadataTableEntry.build(dict(
        item_id=vhdx.PARENT_LOCATOR.bytes_le, offset=item_off, length=len(loc), flags=4,
        reserved=0))
    buf[meta.file_offset + 10:meta.file_offset + 12] = (nitems + 1).to_bytes(2, "little")
    # BAT states
    for blk, state in states.items():
        at = bat.file_offset + 8 * (blk + blk // cr)
        e = int.from_bytes(buf[at:at + 8], "little")
        buf[at:at + 8] = ((e & vhdx.OFFSET_MASK) | state).to_bytes(8, "little")
    if bitmap:
        sb_off = len(buf)
        sb = bytearray(MiB)
        for blk, runs in bitmap.items():
            for a, b in runs:
                for s in range(a, b):
                    bit = blk * spb + s
                    sb[bit // 8] |= 1 << (bit % 8)       # LSB-first
        buf += sb
        at = bat.file_offset + 8 * cr
        buf[at:at + 8] = (sb_off | vhdx.SB_PRESENT).to_bytes(8, "little")
    child.write_bytes(buf)


@pytest.fixture
def diff_pair(tmp_path: Path):
    parent = make(tmp_path / "parent.vhdx", "8M", "block_size=1M", "block_state_zero=off",
                  writes=("write -P 0xa1 0 8M", "write -P 0xa2 2M 1M"))
    child = make(tmp_path / "child.vhdx", "8M", "block_size=1M", "block_state_zero=off",
                 writes=("write -P 0xc1 1M 1M", "write -P 0xc3 3M 1M", "write -P 0xc5 5M 1M",
                         "write -P 0xc6 6M 1M"))
    refs = {}
    for name, p in (("parent", parent), ("child", child)):
        qemu_img("convert", "-f", "vhdx", "-O", "raw", p, tmp_path / f"{name}.raw")
        refs[name] = (tmp_path / f"{name}.raw").read_bytes()
    # block 1 fully present, 3 partially (sectors 8..16 and 1000..1040), 5 ZERO, 6 UNDEFINED
    # (reads as zeros like qemu); 0, 2, 4, 7 NOT_PRESENT -> parent
    states = {0: 0, 2: 0, 3: vhdx.PARTIALLY_PRESENT, 4: 0, 5: vhdx.ZERO, 6: vhdx.UNDEFINED, 7: 0}
    runs = [(8, 16), (1000, 1040)]
    expected = bytearray(refs["parent"])
    expected[1 * MiB:2 * MiB] = refs["child"][1 * MiB:2 * MiB]
    for a, b in runs:
        expected[3 * MiB + 512 * a:3 * MiB + 512 * b] = refs["child"][3 * MiB + 512 * a:
                                                                     3 * MiB + 512 * b]
    expected[5 * MiB:7 * MiB] = bytes(2 * MiB)
    return parent, child, states, {3: runs}, bytes(expected)


@needs_qemu
def test_differencing_reads_parent_and_child(diff_pair) -> None:
    parent, child, states, bitmap, expected = diff_pair
    make_differencing(child, parent, states, bitmap)
    res = subprocess.run([shutil.which("qemu-img") or "qemu-img", "info", "-f", "vhdx",
                          str(child)], capture_output=True, text=True)
    assert res.returncode != 0       # qemu refuses VHDX with a parent: it is one
    with open_image(child) as img:
        assert img.subformat == "differencing" and img.backing is not None
        assert Path(img.backing.path).resolve() == parent.resolve()
        info = img.info()
        assert info["parent"]["locator"]["relative_path"] == "parent.vhdx"
        assert info["bat_states"] == {"fully_present": 1, "not_present": 4,
                                      "partially_present": 1, "undefined": 1, "zero": 1}
        assert img.read(0, img.virtual_size) == expected
        kinds = {e.source is img.backing for e in img.extents() if e.kind is Kind.DATA}
        assert kinds == {True, False}


@needs_qemu
@pytest.mark.parametrize("kwargs,error,match", [
    ({"linkage": "{01234567-89ab-cdef-0123-456789abcdef}"}, MissingBackingFile, "parent_linkage"),
    ({"relative": "..\\elsewhere\\gone.vhdx"}, MissingBackingFile, "gone.vhdx"),
    ({"relative": "child.vhdx"}, FormatError, "loop"),          # its own parent
])
def test_differencing_bad_parent_is_refused(diff_pair, kwargs: dict, error: type, match: str
                                            ) -> None:
    parent, child, states, bitmap, _ = diff_pair
    make_differencing(child, parent, states, bitmap, **kwargs)
    with pytest.raises(error, match=match):
        open_image(child, "vhdx")


# -- targeted damage: the right error or problem, naming structure and offset ---------------------
def _patched(src: Path, dst: Path, edits: list[tuple[int, bytes]],
             crc: tuple[int, int] | None = None, both_region_tables: bool = False) -> Path:
    """``src`` with ``edits``, the CRC of the structure ``crc`` = (start, length) recomputed;
    ``both_region_tables`` repeats edits and CRC in the second table (64 KiB further)."""
    buf = bytearray(src.read_bytes())
    if both_region_tables:
        edits = edits + [(off + 65536, data) for off, data in edits]
    for off, data in edits:
        buf[off:off + len(data)] = data
    for start, n in ([crc, (crc[0] + 65536, crc[1])] if both_region_tables and crc else
                     [crc] if crc else []):
        buf[start + 4:start + 8] = bytes(4)
        buf[start + 4:start + 8] = crc32c.crc32c(bytes(buf[start:start + n])).to_bytes(4, "little")
    dst.write_bytes(buf)
    return dst


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make(tmp_path / "base.vhdx", "16M", "block_size=1M", writes=WRITES[:3])


@needs_qemu
def test_bad_header_is_a_problem_and_the_other_is_used(base: Path, tmp_path: Path) -> None:
    with open_image(base, "vhdx") as img:
        cur = img.header.offset
    other = 192 * 1024 - cur     # 64 KiB <-> 128 KiB
    p = _patched(base, tmp_path / "h.vhdx", [(cur + 100, b"\xff")])   # current header: bad CRC
    with open_image(p, "vhdx") as img:
        assert img.header.offset == other
        assert [(pr.structure, pr.offset) for pr in img.problems] == [("header", cur)]
        assert "CRC" in img.problems[0].message
        assert img.read(0, 64 << 10) == b"\x11" * (64 << 10)
    p = _patched(p, tmp_path / "h2.vhdx", [(other, b"HEAD")])
    with pytest.raises(CorruptImage, match="no valid header") as exc:
        open_image(p, "vhdx")
    assert exc.value.structure == "header"


@needs_qemu
def test_region_table_2_used_when_1_is_bad(base: Path, tmp_path: Path) -> None:
    p = _patched(base, tmp_path / "r.vhdx", [(192 * 1024 + 20, b"\x99")])
    with open_image(p, "vhdx") as img:
        assert any(pr.structure == "region table" and pr.offset == 192 * 1024
                   for pr in img.problems)
        assert_reads_like_qemu(img, base, "vhdx", tmp_path)


RT = 192 * 1024


@needs_qemu
@pytest.mark.parametrize("case,error,structure", [
    ("unknown_required_region", UnsupportedFeature, "region table entry"),
    ("overlapping_regions", CorruptImage, "region table entry"),
    ("region_past_eof", TruncatedImage, "region table entry"),
    ("unknown_required_item", UnsupportedFeature, "metadata table entry"),
    ("block_size_not_pow2", CorruptImage, "metadata item file parameters"),
    ("sector_size_1024", CorruptImage, "metadata item logical sector size"),
    ("bat_past_eof", CorruptImage, "BAT entry 0"),
    ("bat_state_4", CorruptImage, "BAT entry 2"),
    ("bat_over_metadata", CorruptImage, "BAT entry 0"),
    ("absurd_virtual_size", CorruptImage, "metadata item virtual disk size"),
])
def test_damage_is_named(base: Path, tmp_path: Path, case: str, error: type, structure: str
                         ) -> None:
    with open_image(base, "vhdx") as img:
        meta, bat = img.regions[vhdx.METADATA_GUID], img.regions[vhdx.BAT_GUID]
        items = img.metadata_items
        size = img.file_size
    entry0 = RT + 16                            # first region table entry
    bat_e = RT + 16 + 32 * [r.guid for r in img.regions.values()].index(vhdx.BAT_GUID)
    guid = uuid.uuid4().bytes_le
    item = lambda g: meta.file_offset + items[g].offset  # noqa: E731
    edits = {
        "unknown_required_region": ([(entry0, guid), (entry0 + 28, b"\1")], (RT, 65536)),
        "overlapping_regions": ([(bat_e + 16, (meta.file_offset).to_bytes(8, "little"))],
                                (RT, 65536)),
        "region_past_eof": ([(bat_e + 16, (size + MiB).to_bytes(8, "little"))], (RT, 65536)),
        "unknown_required_item": ([(meta.file_offset + 32, guid),
                                   (meta.file_offset + 32 + 24, b"\4")], None),
        "block_size_not_pow2": ([(item(vhdx.FILE_PARAMETERS), (3 * MiB).to_bytes(4, "little"))],
                                None),
        "sector_size_1024": ([(item(vhdx.LOGICAL_SECTOR_SIZE), (1024).to_bytes(4, "little"))],
                             None),
        "bat_past_eof": ([(bat.file_offset, ((size + MiB) | 6).to_bytes(8, "little"))], None),
        "bat_over_metadata": ([(bat.file_offset, (meta.file_offset | 6).to_bytes(8, "little"))],
                              None),
        "bat_state_4": ([(bat.file_offset + 16, (4).to_bytes(8, "little"))], None),
        "absurd_virtual_size": ([(item(vhdx.VIRTUAL_DISK_SIZE), (1 << 62).to_bytes(8, "little"))],
                                None),
    }[case]
    p = _patched(base, tmp_path / "x.vhdx", *edits, both_region_tables=edits[1] is not None)
    # qemu agrees the damaged file is unreadable, except where it checks less than we do
    if case not in ("unknown_required_item", "region_past_eof", "bat_state_4"):
        res = subprocess.run([shutil.which("qemu-img") or "qemu-img", "convert", "-f", "vhdx",
                              "-O", "raw", str(p), str(tmp_path / "q.raw")],
                             capture_output=True, text=True)
        assert res.returncode != 0, res
    with pytest.raises(error) as exc:
        open_image(p, "vhdx")
    assert exc.value.structure == structure and str(p) in str(exc.value)
    assert exc.value.offset is not None or structure.startswith("metadata item")


@needs_qemu
def test_identical_headers_with_equal_sequence(base: Path, tmp_path: Path) -> None:
    """Disk2VHD writes two identical headers (same sequence number): accepted; two different
    headers with one sequence number are corrupt."""
    raw = base.read_bytes()
    h1 = raw[64 << 10:(64 << 10) + 4096]
    p = _patched(base, tmp_path / "same.vhdx", [(128 << 10, h1)])
    with open_image(p, "vhdx") as img:
        assert img.problems == [] and img.info()["header1_sequence"] == img.info()["header2_sequence"]
        assert_reads_like_qemu(img, p, "vhdx", tmp_path)
    # same sequence number, different FileWriteGuid, valid CRC
    p = _patched(p, tmp_path / "diff.vhdx", [((128 << 10) + 16, uuid.uuid4().bytes_le)],
                 crc=(128 << 10, 4096))
    with pytest.raises(CorruptImage, match="sequence number") as exc:
        open_image(p, "vhdx")
    assert exc.value.structure == "header"


@needs_qemu
def test_dirty_log_of_a_truncated_file_is_corrupt(tmp_path: Path) -> None:
    p = _dirty(tmp_path, "32M", 4096, ("write -P 0x5a 0 1M",))
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - MiB)      # shorter than the log's FlushedFileOffset
    with pytest.raises(CorruptImage, match="flushed") as exc:
        open_image(p, "vhdx")
    assert exc.value.structure == "log entry" and exc.value.offset is not None


@given(data=st.binary(min_size=0, max_size=64))
def test_bitmap_runs_match_a_naive_scan(data: bytes) -> None:
    nbits = len(data) * 8
    bits = int.from_bytes(data, "little")
    runs = list(vhdx._runs_of_bits(bits, nbits))
    naive = [bool(data[i // 8] >> (i % 8) & 1) for i in range(nbits)]   # LSB-first
    flat = [v for a, b, v in runs for _ in range(a, b)]
    assert flat == naive
    assert all(r1[2] != r2[2] and r1[1] == r2[0] for r1, r2 in zip(runs, runs[1:]))


@needs_qemu
def test_dirty_log_entry_wrapping_the_circular_log(tmp_path: Path) -> None:
    """Move qemu's log entry so its data sector wraps to the start of the log (tail and CRC
    rewritten); qemu replays the same circular log with `check -r all`."""
    p = _dirty(tmp_path, "32M", 4096, ("write -P 0x5a 0 1M", "write -P 0x6b 3M 100k"))
    with open_image(p, "vhdx") as img:
        log, length = img.header.log_offset, img.header.log_length
    buf = bytearray(p.read_bytes())
    entry = bytearray(buf[log:log + 8192])
    assert entry[:4] == b"loge" and int.from_bytes(entry[8:12], "little") == 8192
    last = length - 4096
    entry[12:16] = last.to_bytes(4, "little")             # tail: the entry itself
    entry[4:8] = bytes(4)
    entry[4:8] = crc32c.crc32c(bytes(entry)).to_bytes(4, "little")
    buf[log:log + length] = bytes(length)
    buf[log + last:log + length] = entry[:4096]
    buf[log:log + 4096] = entry[4096:]
    p.write_bytes(buf)
    repaired = tmp_path / "repaired.vhdx"
    shutil.copy(p, repaired)
    qemu_img("check", "-r", "all", "-f", "vhdx", repaired)
    with open_image(p, "vhdx") as img:
        assert img.info()["log_entries_replayed"] == 1
        assert img.info()["bat_states"]["fully_present"] == 1
        assert_reads_like_qemu(img, repaired, "vhdx", tmp_path)
    assert p.read_bytes() == buf


def _entry(offset: int, seq: int, length: int = 4096) -> vhdx.LogEntry:
    return vhdx.LogEntry(offset, seq, offset, length, 0, 0, ())


def test_active_log_sequence_is_the_newest_run() -> None:
    L = 16 * 4096
    # an older run 1,2,3 at slots 0..2; the newest run is 9 (slot 13), 10 (slot 14, 8 KiB
    # long, so it ends at the log's end and its successor is slot 0)
    valid = {0: _entry(0, 1), 4096: _entry(4096, 2), 8192: _entry(8192, 3),
             13 * 4096: _entry(13 * 4096, 9), 14 * 4096: _entry(14 * 4096, 10, 8192)}
    chain = vhdx.VhdxImage._longest_newest_chain(valid, L)
    assert [e.sequence_number for e in chain] == [9, 10]
    # slot 0 held the older 1; once it holds 11 the run continues across the wrap
    valid[0] = _entry(0, 11)
    chain = vhdx.VhdxImage._longest_newest_chain(valid, L)
    assert [e.sequence_number for e in chain] == [9, 10, 11]
    assert vhdx.VhdxImage._longest_newest_chain({}, L) == []


class _CountingEntries(dict):
    """The valid-entries map, counting every lookup the chain search makes in it."""

    lookups = 0

    def __getitem__(self, key):
        type(self).lookups += 1
        return super().__getitem__(key)

    def __contains__(self, key):
        type(self).lookups += 1
        return super().__contains__(key)


def test_active_log_sequence_is_linear_in_entries() -> None:
    # counted, not timed: a walk from every entry without memo makes ~n^2/2 lookups
    for n in (1024, 8192):        # logs of one-page entries, one long run
        valid = _CountingEntries({i * 4096: _entry(i * 4096, i + 1) for i in range(n)})
        _CountingEntries.lookups = 0
        chain = vhdx.VhdxImage._longest_newest_chain(valid, n * 4096)
        assert len(chain) == n and _CountingEntries.lookups <= 8 * n


@needs_qemu
@pytest.mark.parametrize("size", [str(40 * MiB + 512), str(MiB - 4096)])
def test_size_not_a_multiple_of_the_block(tmp_path: Path, size: str) -> None:
    n = int(size)
    p = make(tmp_path / "odd.vhdx", size, "block_size=8M",
             writes=(f"write -P 0x7e 0 {n}", "write -z 4096 4096"))
    with open_image(p, "vhdx") as img:
        assert img.virtual_size == n and img.payload_blocks == -(-n // (8 * MiB))
        assert_reads_like_qemu(img, p, "vhdx", tmp_path)
