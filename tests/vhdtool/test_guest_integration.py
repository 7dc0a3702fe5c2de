"""The whole guest catalog through libguestfs on real Debian 12 images from fixtures/ (slow).

Each recipe states its flaws with the requirement ids of azure-requirements.md section 1; the map
below names the guest checks that implement each. The good image passes with nothing failing; a
flawed image fails exactly the checks of its flaws (at least one per flaw, none outside them);
one appliance launch per run.
"""

from __future__ import annotations

import pytest

from checks.catalog import Profile, Verdict
from vhdtool import guestfs_engine as ge

pytestmark = [pytest.mark.slow, pytest.mark.guestfs]

#: requirement id (azure-requirements.md section 1) -> guest checks that detect it
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
    "disk.part.swap": frozenset({"guest.swap"}),
    "kernel.hv-initramfs": frozenset({"guest.drivers.hyperv-initramfs"}),
    "kernel.udf-vfat": frozenset({"guest.drivers.udf"}),
    "fs.fstab": frozenset({"guest.fstab.stable-names", "guest.fstab.uuids-exist"}),
}

RECIPES = ["good", "not-deprovisioned", "udf-blacklisted", "fstab-devname", "swap-console",
           "no-provisioner", "no-hv-drivers", "specialized", "gen1-mbr", "lvm-xfs"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_fails_exactly_its_flaws(name: str, fixture_image, fixture_info) -> None:
    path = fixture_image(name)
    info = fixture_info(name)
    recipe = info.get("recipe", info)
    os_state = recipe.get("os_state", "generalized")
    flaws = [f for f in recipe.get("flaws", []) if f in REQUIREMENT_CHECKS]
    before = ge.LAUNCHES
    results, timing = ge.run_guest_checks(str(path), "raw", Profile(os_state=os_state),
                                          progress=False)
    assert ge.LAUNCHES - before == 1, "one appliance launch per check run"
    crashed = {r.check.id: r.reason for r in results if r.verdict is Verdict.ERROR}
    assert not crashed
    failed = {r.check.id for r in results if r.verdict is Verdict.FAIL}
    for flaw in flaws:
        assert failed & REQUIREMENT_CHECKS[flaw], f"{flaw} not detected; failed: {failed}"
    allowed = set().union(*(REQUIREMENT_CHECKS[f] for f in flaws)) if flaws else set()
    extra = {r.check.id: [(f.message, f.evidence) for f in r.findings] for r in results
             if r.verdict is Verdict.FAIL and r.check.id not in allowed}
    assert not extra, f"checks failing outside the recipe's flaws: {extra}"
    for r in results:
        for f in r.findings:
            assert f.evidence, (r.check.id, f.message)
    print(f"{name}: {timing.describe()}")
    assert timing.checks < 5.0     # the target is < 2 s; the machine is shared


def test_good_image_as_trusted_launch(fixture_image) -> None:
    """The good image's ESP carries Debian's Microsoft-signed shim as BOOTX64.EFI."""
    results, _ = ge.run_guest_checks(str(fixture_image("good")), "raw",
                                     Profile(features=frozenset({"trusted_launch"})),
                                     select=["guest.trusted-launch", "guest.efi"], progress=False)
    verdicts = {r.check.id: r.verdict for r in results}
    assert verdicts == {"guest.trusted-launch.shim-signed": Verdict.PASS,
                        "guest.efi.fallback": Verdict.PASS}
