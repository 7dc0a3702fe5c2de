"""``vhdtool fix`` on the real fixture images (one appliance launch each): the flawed images lose
every finding that has a fix, the good image comes out with SRC's data byte for byte (qemu-img
compare), both engines agree on a fixed image, SRC is never modified (sha256 and mtime), and a fix
that fails or a signal leaves no DST and no temporary file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vhdtool import checks
from vhdtool import guestfs_engine as ge
from vhdtool.checks.fixes import Fix, RunProgram, Safety, WriteFile
from vhdtool.cli import cli
from vhdtool.exitcodes import Exit
from fixtures.recipes import RECIPES
from tests.oracle import qemu_img

pytestmark = [pytest.mark.slow, pytest.mark.guestfs]

FLAWED = sorted(name for name in RECIPES if name != "good")


def fingerprint(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest(), path.stat().st_mtime_ns


def vhdtool_fix(src: Path, dst: Path, *args: str) -> tuple[int, dict | None, str]:
    """`vhdtool fix SRC DST --format json:REPORT ARGS` in process: (exit, report, stderr); one
    appliance launch at most."""
    report = dst.with_suffix(".report.json")
    before = ge.LAUNCHES
    res = CliRunner().invoke(cli, ["fix", str(src), str(dst), "--format", f"json:{report}",
                                   "--no-progress", *args])
    assert ge.LAUNCHES - before <= 1, "one appliance launch per vhdtool fix"
    doc = json.loads(report.read_text()) if report.exists() else None
    return res.exit_code, doc, res.stderr


def leftovers(folder: Path, *keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p not in keep)


@pytest.mark.parametrize("name", FLAWED)
def test_unsafe_fixes_leave_no_fixable_finding(name: str, fixture_image, tmp_path: Path) -> None:
    src = fixture_image(name)
    before = fingerprint(src)
    dst = tmp_path / f"{name}.vhd"
    code, doc, err = vhdtool_fix(src, dst, "--unsafe-fixes")
    assert code in (Exit.OK, Exit.FINDINGS), err
    assert doc is not None and dst.exists()
    catalog = checks.load()
    fixable_failing = [r["id"] for r in doc["results"]
                       if r["verdict"] == "fail" and catalog[r["id"]].fix is not None]
    assert fixable_failing == []
    assert not [f for f in doc["fix"]["findings"] if f["status"] in ("new failure", "crashed")]
    assert [f for f in doc["fix"]["findings"] if f["status"] == "still failing"] == []
    if name == "not-deprovisioned":
        assert {f["id"] for f in doc["fix"]["findings"] if f["status"] == "fixed"} >= {
            "guest.deprovision.ssh-host-keys", "guest.deprovision.waagent-state",
            "guest.deprovision.cloudinit-state"}
    info = json.loads(qemu_img("info", "-f", "vpc", "--output=json", dst))
    assert info["virtual-size"] % (1 << 20) == 0
    assert fingerprint(src) == before, "SRC was modified"
    assert leftovers(tmp_path, dst, dst.with_suffix(".report.json")) == []


def test_good_image_comes_out_unchanged(fixture_image, tmp_path: Path) -> None:
    src = fixture_image("good")
    before = fingerprint(src)
    dst = tmp_path / "good.vhd"
    code, doc, err = vhdtool_fix(src, dst)
    assert code == Exit.OK, err
    assert doc["fix"]["applied"] == []
    # DST's data equals SRC's (the good image is a whole number of MiB: no padding)
    qemu_img("compare", "-f", "raw", "-F", "vpc", src, dst)
    assert fingerprint(src) == before


def test_engines_agree_on_a_fixed_image(fixture_image, tmp_path: Path) -> None:
    pytest.importorskip("dissect.extfs")
    from vhdtool.checks.catalog import Profile
    from vhdtool.native_engine import NativeEngine

    from .differential import differences, findings
    dst = tmp_path / "nd.vhd"
    code, _, err = vhdtool_fix(fixture_image("not-deprovisioned"), dst, "--generalize")
    assert code in (Exit.OK, Exit.FINDINGS), err
    native, native_facts = findings(str(dst), NativeEngine(), Profile())
    ref, ref_facts = findings(str(dst), ge.GuestfsEngine(progress=False), Profile())
    assert ref_facts is not None
    assert differences(native, ref) == {}
    assert native_facts == ref_facts


def _replace_fix(monkeypatch, cid: str, plan) -> None:
    catalog = checks.load()
    fix = Fix("test-only fault", Safety.SAFE, plan)
    monkeypatch.setitem(catalog, cid, dataclasses.replace(catalog[cid], fix=fix))


def _assert_failed_cleanly(src: Path, before: tuple[str, int], tmp_path: Path, cid: str,
                           named: str) -> None:
    dst = tmp_path / "out.vhd"
    code, doc, err = vhdtool_fix(src, dst)
    assert code == Exit.FIX_FAILED, err
    assert cid in err and named in err
    assert doc is None and not dst.exists()
    assert leftovers(tmp_path, src) == []
    assert fingerprint(src) == before


def test_a_guest_program_that_fails_leaves_nothing(fixture_image, tmp_path: Path,
                                                    monkeypatch) -> None:
    src = fixture_image("not-deprovisioned")
    cid = "guest.deprovision.waagent-state"
    _replace_fix(monkeypatch, cid, lambda ctx, r: [RunProgram(("false",), "test fault")])
    _assert_failed_cleanly(src, fingerprint(src), tmp_path, cid, "false")


def test_a_full_disk_in_the_appliance_leaves_nothing(synthetic_image, tmp_path: Path,
                                                     monkeypatch) -> None:
    uuid = "6f1d0c2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f"
    src = synthetic_image({"etc/fstab": f"UUID={uuid} / ext4 defaults 0 1\n",
                           "etc/os-release": "ID=debian\nVERSION_ID=12\n",
                           "var/log/waagent.log": "provisioned\n"}, root_uuid=uuid, size_mib=32)
    cid = "guest.deprovision.logs"
    _replace_fix(monkeypatch, cid, lambda ctx, r: [      # 3 MiB files until the root is full
        WriteFile(f"/var/tmp/fill-{i}", os.urandom(1) * (3 << 20)) for i in range(16)])
    _assert_failed_cleanly(src, fingerprint(src), tmp_path, cid, "/var/tmp/fill-")


def test_sigterm_during_the_fix_leaves_nothing(fixture_image, tmp_path: Path) -> None:
    src = fixture_image("not-deprovisioned")
    before = fingerprint(src)
    dst = tmp_path / "out.vhd"
    proc = subprocess.Popen([sys.executable, "-m", "vhdtool", "fix", str(src), str(dst),
                             "--no-progress"], stderr=subprocess.PIPE, text=True)
    time.sleep(8)              # the overlay is made and the appliance is starting
    assert leftovers(tmp_path), "no temporary folder beside DST yet: nothing was tested"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == Exit.TERMINATED, err
    assert not dst.exists() and leftovers(tmp_path) == []
    assert fingerprint(src) == before
