from __future__ import annotations

import pytest

from checks.catalog import (ALL, Applies, Check, Context, Example, Finding, NotApplicable, Profile,
                            Severity, Verdict, check, run_catalog, selected)


def _mk(cid: str, func, **kw) -> dict[str, Check]:
    cat: dict[str, Check] = {}
    defaults = dict(title="t", severity=Severity.WARNING, rationale="r", source="GEN",
                    remediation="fix", passes=(Example("p"),), fails=(Example("f"),),
                    needs="disk", applies=ALL)
    defaults.update(kw)
    import checks.catalog as c
    saved = dict(c.CATALOG)
    try:
        c.CATALOG.clear()
        check(id=cid, **defaults)(func)
        cat.update(c.CATALOG)
    finally:
        c.CATALOG.clear()
        c.CATALOG.update(saved)
    return cat


def test_verdicts_pass_fail_skip_error() -> None:
    ctx = Context(Profile(), disk=object())
    assert run_catalog(ctx, catalog=_mk("a.ok", lambda c: []))[0].verdict is Verdict.PASS
    r = run_catalog(ctx, catalog=_mk("a.bad", lambda c: [Finding("x", "f:1")]))[0]
    assert r.verdict is Verdict.FAIL and r.findings[0].evidence == "f:1"

    def na(c):
        raise NotApplicable("no cloud-init")
    r = run_catalog(ctx, catalog=_mk("a.na", na))[0]
    assert r.verdict is Verdict.SKIP and r.reason == "no cloud-init"

    def boom(c):
        raise KeyError("k")
    r = run_catalog(ctx, catalog=_mk("a.boom", boom))[0]
    assert r.verdict is Verdict.ERROR and "KeyError" in r.reason


def test_applies_and_escalation() -> None:
    spec = Context(Profile(os_state="specialized"), disk=object())
    cat = _mk("a.gen", lambda c: [Finding("x")],
              applies=Applies(os_states=frozenset({"generalized"})))
    assert run_catalog(spec, catalog=cat)[0].verdict is Verdict.SKIP
    mp = Context(Profile(features=frozenset({"marketplace"})), disk=object())
    cat = _mk("a.mp", lambda c: [Finding("x")], error_when=("marketplace",))
    assert run_catalog(mp, catalog=cat)[0].severity is Severity.ERROR
    assert run_catalog(Context(Profile(), disk=object()), catalog=cat)[0].severity is Severity.WARNING
    guest_less = Context(Profile(), disk=object())
    assert run_catalog(guest_less, catalog=_mk("a.g", lambda c: [], needs="guest"))[0].verdict \
        is Verdict.SKIP


def test_select_ignore_by_prefix() -> None:
    assert selected("deprov.history", ["deprov"], [])
    assert not selected("deprov.history", ["disk"], [])
    assert not selected("deprov.history", [], ["deprov."])
    assert selected("deprov.history", [], ["deprov.hist"])   # prefixes are whole components


def test_bad_declarations_refused() -> None:
    with pytest.raises(ValueError):
        _mk("NoDots", lambda c: [])
    with pytest.raises(ValueError):
        Profile(os_state="sideways")
