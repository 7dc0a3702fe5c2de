from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.formats.disktools import MiB, needs_gdisk, sfdisk, sfdisk_json, sgdisk, sparse
from tests.oracle import needs_qemu
from vhdtool.cli import cli

pytestmark = needs_gdisk


def _info(*args: str) -> str:
    r = CliRunner().invoke(cli, ["info", *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_info_json_lists_gpt_partitions_like_sfdisk(tmp_path: Path) -> None:
    p = sparse(tmp_path / "g.img", 32 * MiB)
    sgdisk(p, "-n1:2048:+1M", "-t1:ef02", "-n2:0:+8M", "-t2:ef00", "-c2:EFI", "-a", "1",
           "-n3:20500:0", "-t3:8300", "-c3:root")
    truth = sfdisk_json(p)
    facts = json.loads(_info("--json", str(p)))
    t = facts["partitions"]
    assert t["scheme"] == "gpt" and t["sector_size"] == 512
    assert [(q["index"], q["start"], q["size"], q["type_id"], q["name"]) for q in t["partitions"]] \
        == [(i, x["start"] * 512, x["size"] * 512, x["type"], x.get("name", ""))
            for i, x in enumerate(truth["partitions"], 1)]
    assert [q["aligned_1mib"] for q in t["partitions"]] == [True, True, False]
    assert {"severity": "info", "structure": "GPT partition 3", "offset": 20500 * 512,
            "message": f"start {20500 * 512} is not aligned to 1 MiB"} in facts["problems"]
    for key in ("schema_version", "path", "format", "virtual_size", "allocation", "details",
                "backing_chain", "problems"):
        assert key in facts


def test_info_text_shows_partitions_and_backup_problem(tmp_path: Path) -> None:
    p = sparse(tmp_path / "g.img", 16 * MiB)
    sgdisk(p, "-n1:0:+4M", "-t1:ef00", "-c1:ESP", "-n2:0:0", "-t2:8304")
    os.truncate(p, 20 * MiB)
    out = _info(str(p))
    assert "partitions:     gpt, 2 partition(s)" in out
    assert "EFI System" in out and "ESP" in out and "Linux root (x86-64)" in out
    assert "not at the last LBA" in out


@needs_qemu
def test_info_reads_partitions_through_the_image_format(tmp_path: Path) -> None:
    """A VHD made by qemu-img from an MBR disk shows the same partitions as the raw disk."""
    raw = sparse(tmp_path / "m.img", 16 * MiB)
    sfdisk(raw, "label: dos\nstart=2048, size=4M, type=83, bootable\nsize=4M, type=82\n")
    vhd = tmp_path / "m.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed",
                    str(raw), str(vhd)], check=True)
    if importlib.util.find_spec("vhdtool.formats.vhd") is None:
        pytest.skip("no VHD reader on this branch yet")
    want = json.loads(_info("--json", "-f", "raw", str(raw)))["partitions"]
    got = json.loads(_info("--json", str(vhd)))["partitions"]
    assert got["scheme"] == want["scheme"] == "mbr"
    assert [q["type_id"] for q in got["partitions"]] == ["0x83", "0x82"]
    assert got["partitions"] == want["partitions"]
