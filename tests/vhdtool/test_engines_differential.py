"""Differential: the native and libguestfs engines give identical findings on every fixture image.

For each recipe (fixtures/recipes.py) the whole catalog runs twice, once per engine, on the same
image: every check's id, verdict, reason and findings (message, evidence, fix) must be equal, and
so must the guest facts both engines derive (filesystems with UUID/LABEL/PARTUUID/mountpoint,
kernels, bootloader files, fstab). libguestfs is the reference: it reads through the Linux kernel.
"""

from __future__ import annotations

import pytest

from checks.catalog import Profile, Verdict
from fixtures.recipes import RECIPES
from vhdtool.guestfs_engine import GuestfsEngine

from .differential import differences, findings

pytestmark = [pytest.mark.slow, pytest.mark.guestfs]
pytest.importorskip("dissect.extfs")
from vhdtool.native_engine import NativeEngine  # noqa: E402


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_native_equals_guestfs(name: str, fixture_image, fixture_info) -> None:
    path = str(fixture_image(name))
    recipe = fixture_info(name).get("recipe", {})
    profile = Profile(os_state=recipe.get("os_state", "generalized"))
    native, native_facts = findings(path, NativeEngine(), profile)
    ref, ref_facts = findings(path, GuestfsEngine(progress=False), profile)
    assert ref_facts is not None, "libguestfs opened no guest"
    ran = [cid for cid, v in ref.items() if cid.startswith("guest.") and v[0] != "skip"]
    assert ran, "no guest check ran: nothing compared"
    assert not [cid for cid, v in native.items() if v[0] == Verdict.ERROR.value]
    assert differences(native, ref) == {}
    assert native_facts == ref_facts
