"""disk.structure: every error-level problem `vhdtool info` reports fails `vhdtool check`.

Real images made by qemu-img from a partitioned disk (sgdisk, mkfs), then damaged with a few bytes
of Python at the spec's offsets: overlapping BAT entries, a bad footer checksum, a fixed VHD cut
short. Each is run through the real command line (`vhdtool check --no-guest --format json`).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.oracle import needs_qemu, qemu_img
from tests.vhdtool.images import MiB, gpt_hybrid, patch_footer

pytestmark = needs_qemu


@pytest.fixture(scope="module")
def hybrid_raw(tmp_path_factory) -> Path:
    return gpt_hybrid(tmp_path_factory.mktemp("structure") / "h.raw")


def qemu_vhd(raw: Path, out: Path, subformat: str) -> Path:
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={subformat},force_size",
             raw, out)
    return out


def check(path: Path) -> tuple[int, dict[str, dict]]:
    """Exit code and results by check id of `vhdtool check --no-guest --format json`."""
    res = subprocess.run([sys.executable, "-m", "vhdtool", "check", "--no-guest", "--format",
                          "json", str(path)], capture_output=True, text=True)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, {r["id"]: r for r in json.loads(res.stdout)["results"]}


def info_errors(path: Path) -> list[dict]:
    """`vhdtool info`'s error-level problems of the container (the partition table's problems are
    the partition checks' business: disk.part.scheme, disk.gpt.backup)."""
    res = subprocess.run([sys.executable, "-m", "vhdtool", "info", "--json", str(path)],
                         capture_output=True, text=True, check=True)
    return [p for p in json.loads(res.stdout)["problems"]
            if p["severity"] == "error" and not p["structure"].startswith(("GPT", "MBR"))]


def assert_structure_fails(path: Path, structure: str) -> dict[str, dict]:
    """Exit 1; disk.structure reports each of info's error-level problems with its offset; no
    finding suggests converting the damaged image."""
    errors = info_errors(path)
    assert errors and {e["structure"] for e in errors} == {structure}
    code, res = check(path)
    assert code == 1
    s = res["disk.structure"]
    assert s["verdict"] == "fail"
    assert [(f["message"], f["evidence"]) for f in s["findings"]] == [
        (f"{e['structure']}: {e['message']}", f"{e['structure']} @ {e['offset']:#x}")
        for e in errors]
    assert "vhdtool convert" not in s["remediation"]
    for r in res.values():
        for f in r["findings"]:
            assert "vhdtool convert" not in (f["fix"] or r["remediation"]), (r["id"], f)
    return res


def test_intact_fixed_vhd_passes(hybrid_raw: Path, tmp_path: Path) -> None:
    good = qemu_vhd(hybrid_raw, tmp_path / "good.vhd", "fixed")
    assert info_errors(good) == []
    code, res = check(good)
    assert res["disk.structure"]["verdict"] == "pass"
    assert code == 0, {i: r["findings"] for i, r in res.items() if r["verdict"] == "fail"}


def test_overlapping_bat_entries(hybrid_raw: Path, tmp_path: Path) -> None:
    p = qemu_vhd(hybrid_raw, tmp_path / "overlap.vhd", "dynamic")
    b = bytearray(p.read_bytes())
    header = struct.unpack_from(">Q", b, len(b) - 512 + 16)[0]
    bat = struct.unpack_from(">Q", b, header + 16)[0]
    assert struct.unpack_from(">2I", b, bat) != (0xFFFFFFFF,) * 2   # blocks 0 and 1 allocated
    b[bat + 4:bat + 8] = b[bat:bat + 4]                              # block 1 -> block 0's place
    p.write_bytes(bytes(b))
    res = assert_structure_fails(p, "VHD BAT")
    assert "blocks 0 and 1 overlap" in res["disk.structure"]["findings"][0]["message"]
    assert res["disk.structure"]["findings"][0]["evidence"] == f"VHD BAT @ {bat + 4:#x}"
    # the container checks still say what Azure needs, but point at the damage first
    assert res["disk.convert.needed"]["verdict"] == "fail"
    assert res["disk.convert.needed"]["findings"][0]["fix"].startswith(
        "first repair the damage disk.structure reports")


def test_bad_footer_checksum(hybrid_raw: Path, tmp_path: Path) -> None:
    p = qemu_vhd(hybrid_raw, tmp_path / "sum.vhd", "fixed")
    patch_footer(p, 28, b"vhdt", fix_checksum=False)     # creator app edited, checksum stale
    res = assert_structure_fails(p, "VHD footer")
    assert "checksum" in res["disk.structure"]["findings"][0]["message"]
    assert res["disk.structure"]["findings"][0]["evidence"] == f"VHD footer @ {64 * MiB:#x}"
    # reported once: disk.vhd.checksum defers to disk.structure
    assert res["disk.vhd.checksum"]["verdict"] == "skip"
    assert "disk.structure" in res["disk.vhd.checksum"]["reason"]


def test_fixed_vhd_shorter_than_its_current_size(hybrid_raw: Path, tmp_path: Path) -> None:
    p = qemu_vhd(hybrid_raw, tmp_path / "short.vhd", "fixed")
    b = p.read_bytes()
    p.write_bytes(b[:-512 - MiB] + b[-512:])              # 1 MiB of data lost, footer kept
    res = assert_structure_fails(p, "VHD footer")
    f = res["disk.structure"]["findings"][0]
    assert f["message"] == (f"VHD footer: current_size {64 * MiB} differs from the "
                            f"{63 * MiB} bytes of data before the footer")
    assert f["evidence"] == f"VHD footer @ {63 * MiB:#x}"
    assert res["disk.size.current-vs-file"]["verdict"] == "skip"
    # the lost MiB held the backup GPT: the partition checks say so
    assert res["disk.gpt.backup"]["verdict"] == "fail"
