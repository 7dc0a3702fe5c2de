from __future__ import annotations

import pytest

from vhdtool.checks.catalog import (ALL, Applies, Check, Context, Example, Finding, NotApplicable,
                                     Profile, Severity, Verdict, check, run_catalog, selected)


def _mk(cid: str, func, **kw) -> dict[str, Check]:
    cat: dict[str, Check] = {}
    defaults = dict(title="t", severity=Severity.WARNING, rationale="r", source="GEN",
                    remediation="fix", passes=(Example("p"),), fails=(Example("f"),),
                    needs="disk", applies=ALL)
    defaults.update(kw)
    import vhdtool.checks.catalog as c
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


def test_declare_a_table_of_rows() -> None:
    """vhdtool.checks.tables.declare: one check per row, the row's declaration, the row's data."""
    from dataclasses import dataclass

    import vhdtool.checks.catalog as c
    from vhdtool.checks.tables import Row, declare

    @dataclass(frozen=True, kw_only=True)
    class Limit(Row):
        limit: int

    rows = tuple(Limit(id=f"t.limit-{n}", title=f"at most {n}", severity=Severity.INFO,
                       rationale="r", source=("GEN",), remediation="fix",
                       passes=(Example("p"),), fails=(Example("f"),), needs="disk", limit=n)
                 for n in (1, 5))

    def body(row: Limit):
        def func(ctx: Context) -> list[Finding]:
            return [Finding(f"{ctx.disk} > {row.limit}")] if ctx.disk > row.limit else []
        return func

    saved = dict(c.CATALOG)
    try:
        c.CATALOG.clear()
        declare(rows, body)
        cat = dict(c.CATALOG)
    finally:
        c.CATALOG.clear()
        c.CATALOG.update(saved)
    assert sorted(cat) == ["t.limit-1", "t.limit-5"]
    one = cat["t.limit-1"]
    assert (one.title, one.severity, one.sources, one.needs, one.func.__name__) == \
        ("at most 1", Severity.INFO, ("GEN",), "disk", "limit_1")
    results = run_catalog(Context(Profile(), disk=3), catalog=cat)
    assert [(r.check.id, r.verdict) for r in results] == \
        [("t.limit-1", Verdict.FAIL), ("t.limit-5", Verdict.PASS)]
    assert results[0].findings[0].message == "3 > 1"


def test_every_table_row_is_a_check_with_its_declaration() -> None:
    from vhdtool import checks
    from vhdtool.checks.disk_checks import FOOTER_FIELDS
    from vhdtool.checks.guest_boot import CMDLINE_ARGS, DRIVERS
    from vhdtool.checks.guest_deprov import LEFTOVERS

    cat = checks.load()
    rows = FOOTER_FIELDS + LEFTOVERS + CMDLINE_ARGS + DRIVERS
    assert len({r.id for r in rows}) == len(rows) == 18
    for r in rows:
        chk = cat[r.id]
        assert (chk.title, chk.severity, chk.rationale, chk.sources, chk.remediation,
                chk.passes, chk.fails, chk.needs, chk.applies, chk.error_when) == \
            (r.title, r.severity, r.rationale, r.source, r.remediation, r.passes, r.fails,
             r.needs, r.applies, r.error_when)
