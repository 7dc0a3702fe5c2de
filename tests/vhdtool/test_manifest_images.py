"""The gallery derivation on real Debian 12 fixture images (slow: one libguestfs launch per image).

What each recipe built (fixtures/recipes.py: its layout, edits, flaws and os_state) decides what the
disk must support; the expectations below are computed from the recipe, not written per image.
Each image is checked once with declared values (generation V2, the recipe's OS state, Trusted
Launch, SCSI+NVMe, Accelerated Networking): a declared value the disk does not support must fail
with its reason, the others must pass; every derived property names its evidence.
"""

from __future__ import annotations

import pytest

from vhdtool.checks.catalog import V1, V2, Profile, Severity
from vhdtool.checks.gallery import Declaration, declare
from fixtures.base import DEFAULT_GRUB
from fixtures.recipes import RECIPES, Recipe, Write
from vhdtool import guestfs_engine as ge
from vhdtool.manifest import Digests, build, collect
from vhdtool.pipeline import run

pytestmark = [pytest.mark.slow, pytest.mark.guestfs]

IMAGES = sorted(RECIPES)
#: a recipe flaw -> what the os-state reason must name (the leftover or the check that saw it)
LEFTOVER = {"deprov.waagent-state": "/var/lib/waagent", "deprov.ci-state": "/var/lib/cloud",
            "prov.agent": "guest.provisioner.present"}
DECLARED = Declaration(security_type="TrustedLaunchSupported", disk_controllers=("SCSI", "NVMe"),
                       accelerated_networking=True)


def expected(recipe: Recipe) -> dict:
    """What the recipe built, in gallery terms."""
    lay = recipe.layout
    grub = next((e.text for e in recipe.edits if isinstance(e, Write)
                 and e.path == "etc/default/grub"), DEFAULT_GRUB)
    if recipe.os_state == "specialized" or "deprov.ssh-hostkeys" in recipe.flaws:
        state = "Specialized"                 # host keys kept: the image keeps its identity
    elif "prov.agent" in recipe.flaws or "prov.waagent.enabled" in recipe.flaws:
        state = None                          # no provisioner (or no agent), nothing kept
    else:
        state = "Generalized"
    return {
        "generations": tuple(g for g, ok in ((V1, lay.bios), (V2, lay.uefi)) if ok),
        "os_state": state,
        # every UEFI recipe installs Debian's Microsoft-signed shim (grub-install
        # --uefi-secure-boot, copied to EFI/BOOT/BOOTX64.EFI)
        "trusted_launch": lay.uefi and lay.boot != "systemd-boot",   # systemd-boot: unsigned
        "nvme": lay.uefi and lay.fstab == "uuid" and "nvme_core.io_timeout=240" in grub,
    }


@pytest.mark.parametrize("name", IMAGES)
def test_derived_definition_matches_the_recipe(name: str, fixture_image) -> None:
    recipe = RECIPES[name]
    want = expected(recipe)
    path = str(fixture_image(name))
    profile = declare(Profile(os_state=recipe.os_state, generations=frozenset({V2})), DECLARED)
    before = ge.LAUNCHES
    digests = Digests(path, md5=False)
    result = run(path, profile, "raw", guest_engine=ge.GuestfsEngine(progress=False),
                 collect=collect)
    assert ge.LAUNCHES - before == 1, "one appliance launch per image"
    doc = build(result, digests.result(), Severity.ERROR)
    d = result.extra["gallery"]

    assert d.os_type.value == "Linux" and d.architecture.value == "x64"
    assert d.generations.value == want["generations"], d.generations.ruled_out
    assert d.os_state.value == want["os_state"], d.os_state.ruled_out
    v2 = d.definition(V2)
    if v2 is not None:
        assert (v2.security_type.value == "TrustedLaunchSupported") is want["trusted_launch"]
        assert ("NVMe" in v2.disk_controllers.value) is want["nvme"]
    for prop in (d.os_type, d.os_state, d.architecture, d.generations, d.accelerated_networking):
        assert prop.evidence and all(e.source and e.detail for e in prop.evidence)
    assert {"boot.g1.bios", "boot.g2.esp"} <= {e.source for e in d.generations.evidence}

    results = {cid: r for cid, r in doc["checks"]["results"].items() if cid.startswith("gallery.")}

    def fails(cid: str, should: bool, *reason: str) -> None:
        r = results[cid]
        assert (r["verdict"] == "fail") is should, (cid, r)
        text = " ".join(f["message"] for f in r["findings"])
        if should:
            assert all(part in text for part in reason), (cid, text)

    fails("gallery.generation", V2 not in want["generations"], "declared V2", "boot.g2.esp")
    fails("gallery.os-state", want["os_state"] != {"generalized": "Generalized",
                                                    "specialized": "Specialized"}[recipe.os_state],
          "declared Generalized", *(LEFTOVER[f] for f in recipe.flaws if f in LEFTOVER))
    fails("gallery.security-type", not want["trusted_launch"], "TrustedLaunchSupported")
    fails("gallery.disk-controller", not want["nvme"], "SCSI,NVMe")
    fails("gallery.accelerated-networking", d.accelerated_networking.value is not True)
    assert doc["gallery"]["osState"]["value"] == want["os_state"]
    assert not doc["upload"]["ready"]      # a raw image is never ready: convert it first
    print(f"{name}: {result.extra['guest_timing'].describe()}; derived {d.generations.value} "
          f"{d.os_state.value} " + ", ".join(f"{x.generation}: {x.security_type.value}/"
                                            f"{','.join(x.disk_controllers.value)}"
                                            for x in d.definitions))

