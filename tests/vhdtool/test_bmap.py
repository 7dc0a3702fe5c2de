"""The bmap digest (vhdtool.bmap), the default of ``vhdtool convert``, against bmaptool itself.

Oracle: Debian's bmap-tools: ``bmaptool create`` of the same output file must list the same
mapped ranges with the same SHA-256s, and ``bmaptool copy --bmap`` must accept vhdtool's bmap file
and reject it once one mapped byte of the VHD changed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.oracle import needs_qemu, qemu_img, write_pattern
from vhdtool.cli import cli

BMAPTOOL = shutil.which("bmaptool")
pytestmark = [needs_qemu, pytest.mark.skipif(BMAPTOOL is None,
                                             reason="bmaptool (Debian bmap-tools) not installed")]
MiB = 1 << 20
RANGE = re.compile(r'<Range chksum="([0-9a-f]{64})">\s*(\d+)(?:-(\d+))?\s*</Range>')


def ranges(xml: str) -> list[tuple[int, int, str]]:
    return [(int(a), int(b or a), h) for h, a, b in RANGE.findall(xml)]


def field(xml: str, name: str) -> str:
    m = re.search(rf"<{name}>\s*(\S+)\s*</{name}>", xml)
    assert m, name
    return m.group(1)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A 40 MiB + 3 sectors qcow2 (grown to 41 MiB by convert) with data at odd places."""
    raw = write_pattern(tmp_path / "p.raw", 40 * MiB + 1536,
                        [(4096 * 3 + 512, 70_000), (9 * MiB, 3 * MiB), (40 * MiB, 1536)])
    out = tmp_path / "src.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, out)
    return out


@pytest.mark.parametrize("extra", [[], ["--digest", "sha256", "--digest", "bmap"]])
def test_default_bmap_is_what_bmaptool_makes(tmp_path: Path, source: Path, extra) -> None:
    dst, bm = tmp_path / "out.vhd", tmp_path / "out.bmap"
    r = CliRunner().invoke(cli, ["convert", "--json", "--bmap", str(bm), *extra, str(source),
                                 str(dst)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    ours = bm.read_text()
    ref = subprocess.run([BMAPTOOL, "create", str(dst)], capture_output=True, text=True,
                         check=True).stdout
    assert ranges(ours) == ranges(ref) and ranges(ours)
    for name in ("ImageSize", "BlockSize", "BlocksCount", "MappedBlocksCount"):
        assert field(ours, name) == field(ref, name)
    summary = doc["digests"]["bmap"]
    assert summary["sha256"] == field(ours, "BmapFileChecksum")
    assert summary["ranges"] == len(ranges(ours)) and summary["file"] == str(bm)
    assert ("sha256" in doc["digests"]) == bool(extra)
    target = tmp_path / "copy.img"
    subprocess.run([BMAPTOOL, "copy", "--bmap", str(bm), str(dst), str(target)],
                   capture_output=True, text=True, check=True)
    assert target.read_bytes() == dst.read_bytes()


def test_bmaptool_rejects_a_changed_byte(tmp_path: Path, source: Path) -> None:
    dst, bm = tmp_path / "out.vhd", tmp_path / "out.bmap"
    assert CliRunner().invoke(cli, ["convert", "-q", "--bmap", str(bm), str(source),
                                    str(dst)]).exit_code == 0
    first, _, _ = ranges(bm.read_text())[1]
    with open(dst, "r+b") as f:
        f.seek(first * 4096 + 100)
        byte = f.read(1)
        f.seek(first * 4096 + 100)
        f.write(bytes([byte[0] ^ 1]))
    res = subprocess.run([BMAPTOOL, "copy", "--bmap", str(bm), str(dst), str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "checksum mismatch" in res.stderr


def test_summary_identifies_content_not_runs(tmp_path: Path, source: Path) -> None:
    """The map's sha256 differs when one mapped byte differs, and the summary line shows it."""
    out = []
    for name in ("a.vhd", "b.vhd"):
        r = CliRunner().invoke(cli, ["convert", "--json", str(source), str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        out.append(json.loads(r.output)["digests"]["bmap"])
    # two conversions differ in the footer (unique id, time stamp): a different map digest
    assert out[0]["sha256"] != out[1]["sha256"]
    assert out[0]["ranges"] == out[1]["ranges"] and out[0]["file"] is None
    r = CliRunner().invoke(cli, ["convert", str(source), str(tmp_path / "c.vhd")])
    assert re.search(r"^bmap: \d+ bytes of data in \d+ ranges, map sha256 [0-9a-f]{64}$",
                     r.output, re.M), r.output


def test_in_place_bmap(tmp_path: Path) -> None:
    raw = write_pattern(tmp_path / "disk.raw", 5 * MiB + 512, [(MiB, 4096)])
    bm = tmp_path / "disk.bmap"
    r = CliRunner().invoke(cli, ["convert", "--in-place", "--json", "--bmap", str(bm), str(raw)])
    assert r.exit_code == 0, r.output
    ref = subprocess.run([BMAPTOOL, "create", str(raw)], capture_output=True, text=True,
                         check=True).stdout
    assert ranges(bm.read_text()) == ranges(ref)
    assert json.loads(r.output)["digests"]["bmap"]["sha256"] == field(bm.read_text(),
                                                                     "BmapFileChecksum")
