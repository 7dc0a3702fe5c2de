"""Every declared check is complete, and each of its examples really passes or fails."""

from __future__ import annotations

import pytest

from vhdtool import checks
from vhdtool.checks.catalog import ID_RE, Verdict, run_check
from vhdtool.checks.examples import context_for

CATALOG = checks.load()
IDS = sorted(CATALOG)


def test_catalog_not_empty_and_ids_unique() -> None:
    assert len(IDS) >= 20
    assert len(set(IDS)) == len(IDS)
    assert all(ID_RE.match(i) for i in IDS)
    assert len({c.title for c in CATALOG.values()}) == len(IDS)


#: the disk-level checks issue 4 asks for
ISSUE_4_IDS = {
    "disk.vhd.cookie", "disk.vhd.checksum", "disk.vhd.version", "disk.vhd.data-offset",
    "disk.vhd.fixed", "disk.size.current-vs-file", "disk.size.mib", "disk.size.limit",
    "disk.vhd.stale-footer", "disk.vhd.chs-size", "disk.convert.needed", "disk.part.scheme",
    "disk.part.bounds", "disk.part.overlap", "disk.part.first-mib", "disk.part.alignment",
    "disk.gpt.backup", "disk.part.swap", "disk.part.lvm", "boot.g2.esp", "boot.g1.bios",
    "boot.generation", "disk.sector-size",
}


def test_issue_4_checks_declared() -> None:
    assert ISSUE_4_IDS <= set(IDS)
    assert all(CATALOG[i].needs == "disk" for i in ISSUE_4_IDS)


@pytest.mark.parametrize("cid", IDS)
def test_declaration_complete(cid: str) -> None:
    c = CATALOG[cid]
    for part in ("title", "rationale", "source", "remediation"):
        assert getattr(c, part).strip(), f"{cid} has no {part}"
    assert c.passes and c.fails, f"{cid} needs pass and fail examples"
    assert all(e.summary for e in c.passes + c.fails)


@pytest.mark.parametrize("cid", IDS)
def test_passes_on_baseline_and_pass_examples(cid: str) -> None:
    c = CATALOG[cid]
    base = context_for(None)
    r = run_check(c, base)
    if c.applies.why_not(base.profile, base.generations):
        assert r.verdict is Verdict.SKIP    # e.g. a Marketplace-only check on the default profile
    else:
        assert r.verdict is Verdict.PASS, (cid, r.reason, r.findings)
    for ex in c.passes:
        r = run_check(c, context_for(ex))
        assert r.verdict is Verdict.PASS, (cid, ex, r.reason, r.findings)


@pytest.mark.parametrize("cid", IDS)
def test_fails_on_fail_examples(cid: str) -> None:
    c = CATALOG[cid]
    for ex in c.fails:
        r = run_check(c, context_for(ex))
        assert r.verdict is Verdict.FAIL, (cid, ex.summary, r.reason)
        assert all(f.message for f in r.findings)


def test_sources_resolve_and_every_reference_is_cited() -> None:
    """Every citation names a registry key; every URL is https and well-formed; none unused."""
    from urllib.parse import urlsplit

    from vhdtool.checks.sources import REFERENCES, split
    cited = {split(s)[0] for c in CATALOG.values() for s in c.sources}
    assert cited <= set(REFERENCES), cited - set(REFERENCES)
    assert set(REFERENCES) <= cited, f"unused references: {set(REFERENCES) - cited}"
    for key, ref in REFERENCES.items():
        u = urlsplit(ref.url)
        assert u.scheme == "https" and u.netloc and "." in u.netloc, (key, ref.url)
        assert not any(ch.isspace() for ch in ref.url) and ref.title.strip(), key
    for cid, c in CATALOG.items():
        assert c.help_uri.startswith("https://"), cid


def test_no_source_points_outside_the_repository() -> None:
    """Sources, rationale and remediation cite the registry, never ../shared or an absolute path."""
    for cid, c in CATALOG.items():
        for text in (c.source, c.rationale, c.remediation):
            assert "../" not in text and "/work/" not in text, (cid, text)


def test_unknown_source_key_is_refused() -> None:
    from vhdtool.checks.catalog import check
    with pytest.raises(KeyError, match="NOPE"):
        check(id="test.unknown-source", title="t", severity=checks.Severity.INFO,
              rationale="r", source=("GEN", "NOPE: detail"), remediation="f", passes=(),
              fails=())(lambda ctx: [])
    assert "test.unknown-source" not in CATALOG


def test_no_file_of_the_catalog_points_outside_the_repository() -> None:
    from pathlib import Path
    root = Path(checks.__file__).parent
    files = sorted(root.rglob("*.py")) + [root.parent / "docs" / "checks.md"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "../shared" not in text and "/work/shared" not in text, path
