"""Every guest check on the fake guest: passes on the baseline and its pass examples, fails on
each of its fail examples with evidence on every finding."""

from __future__ import annotations

import pytest

from vhdtool import checks
from vhdtool.checks.catalog import Verdict, run_check
from vhdtool.checks.examples import context_for

CATALOG = checks.load()
GUEST = sorted((c for c in CATALOG.values() if c.needs == "guest"), key=lambda c: c.id)
CASES = [(c, "pass", e) for c in GUEST for e in c.passes] + \
        [(c, "fail", e) for c in GUEST for e in c.fails]


def test_guest_checks_declared() -> None:
    ids = {c.id for c in GUEST}
    for cid in ("guest.provisioner.present", "guest.drivers.hyperv-initramfs", "guest.swap",
                "guest.fstab.uuids-exist", "guest.deprovision.ssh-host-keys", "guest.efi.fallback"):
        assert cid in ids
    for c in GUEST:
        assert c.fails and c.passes and c.rationale and c.source and c.remediation


@pytest.mark.parametrize("chk", GUEST, ids=lambda c: c.id)
def test_baseline_passes(chk) -> None:
    ctx = context_for(None)
    r = run_check(chk, ctx)
    assert r.verdict in (Verdict.PASS, Verdict.SKIP), (r.verdict, r.reason, r.findings)


@pytest.mark.parametrize("chk,kind,ex", CASES, ids=[f"{c.id}-{k}-{e.summary}" for c, k, e in CASES])
def test_examples(chk, kind, ex) -> None:
    r = run_check(chk, context_for(ex))
    if kind == "pass":
        assert r.verdict in (Verdict.PASS, Verdict.SKIP), (r.reason, r.findings)
        assert r.verdict is Verdict.PASS or "not installed" in (r.reason or "") \
            or "regenerat" in (r.reason or "")
    else:
        assert r.verdict is Verdict.FAIL, (r.verdict, r.reason)
        assert all(f.evidence for f in r.findings)
