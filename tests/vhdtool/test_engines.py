"""``vhdtool check --engine auto|native|guestfs``: which engine runs, and what is said about it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from vhdtool import native_engine as ne
from vhdtool.cli import cli

from .nativeimages import ESP, Dir, Part, make_disk
from vhdtool import schemas

pytest.importorskip("dissect.extfs")

UUID = "5b0c8a34-7e0b-4a8e-9d5e-3f1c2b4a6d7e"


@pytest.fixture(scope="module")
def guest_disk(tmp_path_factory) -> Path:
    tree = {"etc/fstab": f"UUID={UUID} / ext4 defaults 0 1\nLABEL=ESP /boot/efi vfat ro 0 2\n",
            "etc/os-release": "ID=debian\nVERSION_ID=12\n", "boot/efi": Dir(),
            "etc/machine-id": "4c7a2f9e0d3b4e6a9f1c2d3e4f5a6b7c\n"}
    return make_disk(tmp_path_factory.mktemp("engines") / "disk.raw",
                     [Part("vfat", {"EFI/BOOT/BOOTX64.EFI": b"MZ"}, label="ESP", guid=ESP),
                      Part("ext4", tree, uuid=UUID)])


def _check(disk: Path, tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["check", "--guest", *args, str(disk), "--format",
                                   f"json:{out}", "--format", "text"])
    return res.exit_code, (json.loads(out.read_text()) if out.exists() else {}), res.output


@pytest.mark.parametrize("mode", ["auto", "native"])
def test_native_runs_the_guest_checks(guest_disk: Path, tmp_path: Path, mode: str) -> None:
    code, report, text = _check(guest_disk, tmp_path, "--engine", mode)
    assert code == 1                                     # raw disk + a planted machine-id
    assert report["guest_engine"]["name"] == "native"
    verdicts = {r["id"]: r["verdict"] for r in report["results"]}
    assert verdicts["guest.deprovision.machine-id"] == "fail"
    assert "guest engine: native" in text
    schema = schemas.load("check-report")
    jsonschema.Draft202012Validator(schema).validate(report)
    if mode == "auto":
        assert "vfat /boot/efi" in report["guest_engine"]["reason"]


def test_native_without_readers_is_a_missing_tool(guest_disk: Path, tmp_path: Path,
                                                  monkeypatch) -> None:
    monkeypatch.setattr(ne, "available", lambda: "dissect.extfs not installed")
    code, report, text = _check(guest_disk, tmp_path, "--engine", "native")
    assert code == 4 and report == {}


def test_native_on_a_disk_without_root_skips_with_the_reason(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "data.raw", [Part("ext4", {"data": "x"})])
    code, report, _ = _check(disk, tmp_path, "--engine", "native")
    assert report["guest_engine"]["name"] is None
    skipped = {r["id"]: r["reason"] for r in report["results"] if r["verdict"] == "skip"}
    assert any("no ext2/3/4, XFS or btrfs filesystem holding /etc/fstab" in (why or "")
               for cid, why in skipped.items() if cid.startswith("guest."))
