"""The whole catalog through `vhdtool check` and libguestfs on real Debian 12 images from fixtures/
(slow: one appliance launch per run, ~10-25 s under TCG).

Each recipe states its flaws with the requirement ids of azure-requirements.md section 1 (the map
below names the checks, guest and disk, that implement each) and `fails`, exactly the checks that
fail on it. A recipe fails exactly its `fails` (and the raw container check), every flaw is
detected by one of its checks, and no other check has a finding at any severity; one appliance
launch per `vhdtool check`. The native engine is held to the same in test_engines_differential.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vhdtool import guestfs_engine as ge
from vhdtool.cli import cli
from vhdtool.exitcodes import Exit
from fixtures.recipes import RECIPES

pytestmark = [pytest.mark.slow, pytest.mark.guestfs]

#: requirement id (azure-requirements.md section 1) -> checks that detect it
REQUIREMENT_CHECKS: dict[str, frozenset[str]] = {
    "prov.agent": frozenset({"guest.provisioner.present"}),
    "prov.waagent.enabled": frozenset({"guest.waagent.enabled"}),
    "prov.conflict": frozenset({"guest.provisioner.conflict"}),
    "prov.ci.datasource": frozenset({"guest.cloudinit.datasource"}),
    "deprov.ssh-hostkeys": frozenset({"guest.deprovision.ssh-host-keys",
                                      "guest.deprovision.ssh-host-keys-shared"}),
    "deprov.machine-id": frozenset({"guest.deprovision.machine-id"}),
    "deprov.history": frozenset({"guest.deprovision.history"}),
    "deprov.waagent-state": frozenset({"guest.deprovision.waagent-state"}),
    "deprov.ci-state": frozenset({"guest.deprovision.cloudinit-state"}),
    "boot.cmdline.console": frozenset({"guest.cmdline.console"}),
    "disk.part.swap": frozenset({"guest.swap", "disk.part.swap"}),
    "disk.part.layout": frozenset({"disk.part.lvm"}),
    "kernel.hv-initramfs": frozenset({"guest.drivers.hyperv-initramfs"}),
    "kernel.udf-vfat": frozenset({"guest.drivers.udf"}),
    "fs.fstab": frozenset({"guest.fstab.stable-names", "guest.fstab.uuids-exist"}),
}

#: checks that fail on a recipe as a true consequence of its edits, beyond the requirement ids of
#: its flaws (declared here, outside the recipes: their content keys the image cache)
#: the fixtures are raw disks: this container check fails on every one of them (by design: Azure
#: takes only a fixed VHD); test_good_image_as_fixed_vhd_passes checks the converted image
RAW_CONTAINER = frozenset({"disk.convert.needed"})


def findings_outside(report: dict, declared: frozenset[str]) -> dict[str, list]:
    """Checks with a finding (whatever their verdict or severity) that the recipe does not declare."""
    return {r["id"]: r["findings"] for r in report["results"]
            if r["findings"] and r["id"] not in declared | RAW_CONTAINER}


def vhdtool_check(path: Path, *args: str) -> tuple[int, dict, str]:
    """`vhdtool -v check PATH --format json ARGS`: (exit code, report, stderr); one launch."""
    before = ge.LAUNCHES
    res = CliRunner().invoke(cli, ["-v", "check", "--engine", "guestfs", str(path), "--format",
                                   "json", *args])
    assert ge.LAUNCHES - before == 1, "one appliance launch per vhdtool check"
    return res.exit_code, json.loads(res.stdout), res.stderr


def failed(report: dict) -> dict[str, list[tuple[str, str | None]]]:
    return {r["id"]: [(f["message"], f["evidence"]) for f in r["findings"]]
            for r in report["results"] if r["verdict"] == "fail"}


#: through the command line and libguestfs: every recipe that fails a check, and the base's three
#: flawless layouts; test_engines_differential holds every recipe to its declaration on both
#: engines (libguestfs == native == declared), so the other layouts are not launched a third time
CLI_RECIPES = sorted({n for n, r in RECIPES.items() if r.fails} | {"good", "gen1-mbr", "specialized"})


@pytest.mark.parametrize("name", CLI_RECIPES)
def test_recipe_fails_exactly_its_flaws(name: str, fixture_image) -> None:
    path = fixture_image(name)
    recipe = RECIPES[name]
    flaws = set(recipe.flaws)
    assert flaws <= set(REQUIREMENT_CHECKS), f"unmapped: {flaws - set(REQUIREMENT_CHECKS)}"
    code, report, err = vhdtool_check(path, "--os-state", recipe.os_state)
    assert code == Exit.FINDINGS                   # raw: the container checks fail
    assert not [r for r in report["results"] if r["verdict"] == "error"], report
    guest_skips = {r["id"]: r["reason"] for r in report["results"]
                   if r["id"].startswith("guest.") and r["verdict"] == "skip"
                   and "applies" not in r["reason"]}
    assert not any("not opened" in why or "no Linux root" in why for why in guest_skips.values())
    fails = failed(report)
    assert set(fails) == RAW_CONTAINER | recipe.fails, fails
    assert findings_outside(report, recipe.fails) == {}
    for flaw in flaws:
        assert recipe.fails & REQUIREMENT_CHECKS[flaw], f"{flaw} not detected; failed: {fails}"
    for cid, findings in fails.items():
        assert all(evidence for _, evidence in findings), (cid, findings)
    assert "timing: appliance launch" in err and "checks" in err


def test_good_image_as_fixed_vhd_passes(fixture_image, tmp_path: Path) -> None:
    """What a user does: convert, then check the VHD (read by libguestfs as format vpc)."""
    from vhdtool.convert import convert
    vhd = tmp_path / "good.vhd"
    convert(str(fixture_image("good")), str(vhd), digests=(), progress=False, sync=False)
    code, report, err = vhdtool_check(vhd)
    assert failed(report) == {} and code == Exit.OK, (failed(report), err)
    ran = {r["id"] for r in report["results"] if r["verdict"] == "pass"}
    assert {"guest.provisioner.present", "guest.drivers.hyperv-initramfs",
            "guest.cmdline.console", "disk.vhd.fixed"} <= ran


def test_good_image_as_trusted_launch(fixture_image) -> None:
    """The good image's ESP carries Debian's Microsoft-signed shim as BOOTX64.EFI."""
    code, report, _ = vhdtool_check(fixture_image("good"), "--trusted-launch", "--generation", "2",
                                    "--select", "guest.trusted-launch", "--select", "guest.efi")
    verdicts = {r["id"]: r["verdict"] for r in report["results"]}
    assert verdicts == {"guest.trusted-launch.shim-signed": "pass", "guest.efi.fallback": "pass"}
    assert code == Exit.OK


def test_systemd_boot_image_refuses_trusted_launch(fixture_image) -> None:
    """Debian 12's systemd-boot is not signed by Microsoft's UEFI CA: BOOTX64.EFI is unsigned, so
    Trusted Launch (Secure Boot) is refused, while the command line comes from the BLS entry."""
    code, report, _ = vhdtool_check(fixture_image("systemd-boot"), "--trusted-launch",
                                    "--generation", "2", "--select", "guest.trusted-launch",
                                    "--select", "guest.efi", "--select", "guest.cmdline.console")
    res = {r["id"]: r for r in report["results"]}
    assert {k: r["verdict"] for k, r in res.items()} == {
        "guest.trusted-launch.shim-signed": "fail", "guest.efi.fallback": "pass",
        "guest.cmdline.console": "pass"}
    (finding,) = res["guest.trusted-launch.shim-signed"]["findings"]
    assert "BOOTX64.EFI" in finding["evidence"].upper()
    assert code == Exit.FINDINGS


def test_disk_without_linux_root_says_so(tmp_path: Path) -> None:
    """A partitioned, formatted disk with no Linux system on it: said on stderr, guest checks
    skipped with that reason, and guest.opened fails the gate (nothing of the guest was checked)."""
    from tests.vhdtool.images import MiB, gpt_hybrid, wrap_fixed
    vhd = wrap_fixed(gpt_hybrid(tmp_path / "d.raw", 64 * MiB), tmp_path / "d.vhd")
    code, report, err = vhdtool_check(vhd)
    assert "guest checks skipped" in err and "no Linux root filesystem found" in err
    guest = [r for r in report["results"]
             if r["id"].startswith("guest.") and r["id"] != "guest.opened"]
    assert guest and all(r["verdict"] == "skip" for r in guest)
    assert any("no Linux root filesystem found" in r["reason"] for r in guest)
    opened = next(r for r in report["results"] if r["id"] == "guest.opened")
    assert opened["verdict"] == "fail"
    assert "no Linux root filesystem found" in opened["findings"][0]["message"]
    failed = {r["id"] for r in report["results"] if r["verdict"] == "fail"}
    assert failed == {"guest.opened"}, failed
    assert code == Exit.FINDINGS
