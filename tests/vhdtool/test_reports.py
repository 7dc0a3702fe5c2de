"""Reports: JSON against its published schema, SARIF against the OASIS 2.1.0 schema, JUnit
parsed as XML; the CLI's --format/-o pairing, exit codes, --select/--ignore, checks list/show."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from vhdtool import checks
from vhdtool.checks.catalog import V1, Finding, Profile, Severity, Verdict
from tests.oracle import qemu_img
from tests.vhdtool.images import MiB, gpt_hybrid, wrap_fixed
from vhdtool.catalogdoc import markdown
from vhdtool.cli import cli
from vhdtool.exitcodes import Exit
from vhdtool.report import parse_outputs, render
from vhdtool.pipeline import run
from vhdtool import schemas

ROOT = Path(__file__).resolve().parents[2]
REPORT_SCHEMA = schemas.load("check-report")
SARIF_SCHEMA = json.loads((Path(__file__).parent / "schemas/sarif-schema-2.1.0.json").read_text())


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rep")
    raw = gpt_hybrid(d / "d.raw", 40 * MiB)     # a bootable layout: only the container varies
    nf = d / "nf.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", raw, nf)
    qcow = d / "d.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, qcow)
    return {"raw": raw, "nf": nf, "good": wrap_fixed(raw, d / "good.vhd"), "qcow2": qcow}


def _crashing_run(path: Path):
    """A run in which one check crashes and Gen2 checks are skipped (Gen1 only), to exercise the
    error and skip paths of every report."""
    r = run(str(path), Profile(generations=frozenset({V1})))
    from vhdtool.checks.catalog import Result
    c = r.results[0].check
    r.results[0] = Result(c, Verdict.ERROR, c.severity, reason="KeyError: 'x'")
    return r


@pytest.mark.parametrize("name", ["nf", "good", "qcow2", "crash"])
def test_json_validates(images, name: str) -> None:
    r = _crashing_run(images["nf"]) if name == "crash" else run(str(images[name]), Profile())
    doc = json.loads(render("json", r, Severity.ERROR))
    jsonschema.Draft202012Validator(REPORT_SCHEMA).validate(doc)
    assert doc["passed"] is (name == "good")


@pytest.mark.parametrize("name", ["nf", "qcow2", "crash"])
def test_sarif_validates(images, name: str) -> None:
    r = _crashing_run(images["nf"]) if name == "crash" else run(str(images[name]), Profile())
    doc = json.loads(render("sarif", r, Severity.ERROR))
    jsonschema.Draft4Validator(SARIF_SCHEMA).validate(doc)
    rules = doc["runs"][0]["tool"]["driver"]["rules"]
    assert [x["id"] for x in rules] == sorted(checks.load())
    for res in doc["runs"][0]["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
    failing = {x.check.id for x in r.results if x.verdict is Verdict.FAIL}
    assert {res["ruleId"] for res in doc["runs"][0]["results"]} == failing
    if name == "crash":
        assert doc["runs"][0]["invocations"][0]["toolExecutionNotifications"]


def test_junit_structure(images) -> None:
    r = _crashing_run(images["nf"])
    root = ET.fromstring(render("junit", r, Severity.ERROR))
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(r.results) == int(suite.get("tests"))
    by_id = {c.get("name"): c for c in cases}
    assert by_id["disk.size.mib"].find("failure").get("type") == "error"
    assert by_id[r.results[0].check.id].find("error") is not None
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert skipped and all(c.find("skipped").get("message") for c in skipped)
    for tag, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
        assert int(suite.get(attr)) == sum(c.find(tag) is not None for c in cases)


def test_parse_outputs() -> None:
    assert parse_outputs((), None)[0].fmt == "text"
    outs = parse_outputs(("text", "sarif:a.sarif", "json"), "b.json")
    assert [(o.fmt, o.path) for o in outs] == [("text", "b.json"), ("sarif", "a.sarif"),
                                              ("json", None)]
    for bad in ((("text", "json"), None), (("xml",), None), (("json:a", "sarif:a"), None),
                (("json:a",), "b")):
        with pytest.raises(ValueError):
            parse_outputs(*bad)


def check_cli(*args: str):
    """`vhdtool check --no-guest ...`: these tests are about disk-level behaviour only."""
    return CliRunner().invoke(cli, ["check", "--no-guest", *args])


def test_cli_exit_codes_and_outputs(images, tmp_path: Path) -> None:
    # -o goes to the first format naming no file (junit); json is left for stdout
    res = check_cli(str(images["nf"]), "--format", "junit",
                    "--format", f"sarif:{tmp_path / 'r.sarif'}", "--format", "json",
                    "-o", str(tmp_path / "r.xml"))
    assert res.exit_code == Exit.FINDINGS, res.output
    doc = json.loads(res.output)
    assert any(x["id"] == "disk.size.mib" and x["verdict"] == "fail" for x in doc["results"])
    assert json.loads((tmp_path / "r.sarif").read_text())["version"] == "2.1.0"
    ET.parse(tmp_path / "r.xml")
    assert not list(tmp_path.glob(".vhdtool-*"))        # no temp files left
    assert (tmp_path / "r.xml").stat().st_mode & 0o044   # readable by others, like any file
    assert check_cli(str(images["good"])).exit_code == Exit.OK
    ignored = check_cli(str(images["nf"]), "--ignore", "disk.size")
    assert ignored.exit_code == Exit.OK, ignored.output
    only = check_cli(str(images["nf"]), "--select", "disk.vhd", "--format", "json")
    assert {x["id"].rsplit(".", 1)[0] for x in json.loads(only.output)["results"]} == {"disk.vhd"}
    assert check_cli(str(images["nf"]), "--select", "nope").exit_code == Exit.USAGE
    assert check_cli(str(images["nf"]), "--format", "json",
                     "--format", "sarif").exit_code == Exit.USAGE
    assert check_cli(str(tmp_path / "missing.vhd")).exit_code == Exit.BAD_IMAGE
    assert check_cli(str(images["qcow2"])).exit_code == Exit.FINDINGS


def test_fail_on_threshold(images, tmp_path: Path) -> None:
    chs = tmp_path / "chs.vhd"
    from vhdtool.formats.vhd import chs_geometry
    wrap_fixed(images["raw"], chs, geometry=chs_geometry(40 * MiB))   # a warning only
    assert check_cli(str(chs)).exit_code == Exit.OK
    warn = check_cli(str(chs), "--fail-on", "warning")
    assert warn.exit_code == Exit.FINDINGS and "disk.vhd.chs-size" in warn.output


def test_checks_list_show_and_docs_up_to_date() -> None:
    cli_run = CliRunner().invoke
    listed = cli_run(cli, ["checks", "list"]).output.splitlines()
    assert [line.split()[0] for line in listed] == sorted(checks.load())
    shown = cli_run(cli, ["checks", "show", "disk.size.mib"])
    assert shown.exit_code == 0 and "remediation:" in shown.output and "fails when:" in shown.output
    assert cli_run(cli, ["checks", "show", "no.such"]).exit_code == Exit.USAGE
    doc = (ROOT / "docs/checks.md").read_text()
    assert doc == markdown(checks.load()), \
        "docs/checks.md is stale: run `vhdtool checks docs -o docs/checks.md`"


def test_text_report_lines(images) -> None:
    r = run(str(images["nf"]), Profile())
    out = render("text", r, Severity.ERROR)
    line = next(x for x in out.splitlines() if "disk.size.mib" in x)
    assert "[footer @ " in line and "\x1b[" not in out
    assert "\x1b[" in render("text", r, Severity.ERROR, color=True)
    assert out.rstrip().splitlines()[-1].startswith("FAILED")
    # skipped checks are counted by default and listed, with their reasons, on request
    skipped = [x for x in r.results if x.verdict is Verdict.SKIP]
    assert skipped and "skipped:" not in out
    assert f"({len(skipped)} checks did not apply: --show-skipped" in out
    listed = render("text", r, Severity.ERROR, show_skipped=True)
    assert all(f"  {x.check.id}: {x.reason}" in listed for x in skipped)


HOST_KEYS = [f"/etc/ssh/ssh_host_{k}_key{pub}" for k in ("ecdsa", "ed25519", "rsa")
             for pub in ("", ".pub")]


def test_text_report_summarises_a_check_with_many_findings(images) -> None:
    """Six host key files: one text line with the count, the first three pieces of evidence and
    how many more; JSON, SARIF and JUnit keep every location. Three findings stay three lines."""
    from vhdtool.checks.catalog import CATALOG, Result
    r = run(str(images["good"]), Profile())
    keys, cmd = CATALOG["guest.deprovision.ssh-host-keys"], CATALOG["guest.cmdline.console"]
    many = tuple(Finding(f"{p} is left from the build machine", p, fix=f"delete {p}")
                 for p in HOST_KEYS)
    few = tuple(Finding(f"line {n} lacks console=ttyS0", f"/boot/grub/grub.cfg:{n}")
                for n in (10, 20, 30))
    made = {keys.id: Result(keys, Verdict.FAIL, Severity.WARNING, many),
            cmd.id: Result(cmd, Verdict.FAIL, Severity.ERROR, few)}
    r.results = [made.get(x.check.id, x) for x in r.results]
    text = render("text", r, Severity.ERROR)
    lines = [x for x in text.splitlines() if keys.id in x]
    assert len(lines) == 1, lines
    assert "6 findings, e.g. /etc/ssh/ssh_host_ecdsa_key is left" in lines[0]
    assert f"[{', '.join(HOST_KEYS[:3])}, +3 more]" in lines[0]
    assert HOST_KEYS[3] not in lines[0] and f"fix: {keys.remediation}" in lines[0]
    assert len([x for x in text.splitlines() if f"{cmd.id}: line" in x]) == 3
    doc = json.loads(render("json", r, Severity.ERROR))
    got = next(x for x in doc["results"] if x["id"] == keys.id)
    assert [f["evidence"] for f in got["findings"]] == HOST_KEYS
    sarif = json.loads(render("sarif", r, Severity.ERROR))
    evidence = [res["properties"]["evidence"] for res in sarif["runs"][0]["results"]
                if res["ruleId"] == keys.id]
    assert evidence == HOST_KEYS
    junit = render("junit", r, Severity.ERROR)
    assert all(p in junit for p in HOST_KEYS)


def test_show_skipped_option(images) -> None:
    res = CliRunner().invoke(cli, ["check", "--no-guest", str(images["nf"])])
    assert "guest.opened" not in res.output and "--show-skipped lists them" in res.output
    res = CliRunner().invoke(cli, ["check", "--no-guest", "--show-skipped", str(images["nf"])])
    assert "  guest.opened: disk-only run (--no-guest)" in res.output


def test_guest_checks_skip_with_reason(images) -> None:
    from vhdtool.checks.catalog import CATALOG, check
    saved = dict(CATALOG)
    try:
        check(id="test.guest-only", title="t", severity=Severity.ERROR, rationale="r",
              source="GEN", remediation="f", passes=[], fails=[], needs="guest")(
                  lambda ctx: [Finding("x")])
        r = {x.check.id: x for x in run(str(images["good"]), Profile()).results}
        assert r["test.guest-only"].verdict is Verdict.SKIP
        assert "guest" in r["test.guest-only"].reason
    finally:
        CATALOG.clear()
        CATALOG.update(saved)


def test_guest_engine_seam(images) -> None:
    """A guest engine, when given, receives the image and its disk facts; its view reaches
    the guest checks."""
    from vhdtool.checks.catalog import CATALOG, check
    seen = {}

    def engine(path, facts):
        seen["args"] = (path, facts.format)
        return {"etc/hostname": "x"}

    saved = dict(CATALOG)
    try:
        check(id="test.guest-view", title="t", severity=Severity.ERROR, rationale="r",
              source="GEN", remediation="f", passes=[], fails=[], needs="guest")(
                  lambda ctx: [Finding(ctx.guest["etc/hostname"])])
        res = {x.check.id: x for x in run(str(images["good"]), Profile(),
                                           guest_engine=engine).results}
    finally:
        CATALOG.clear()
        CATALOG.update(saved)
    assert seen["args"] == (str(images["good"]), "vpc")
    assert res["test.guest-view"].findings[0].message == "x"


def test_docs_command_writes_the_page(tmp_path: Path) -> None:
    out = tmp_path / "checks.md"
    assert CliRunner().invoke(cli, ["checks", "docs", "-o", str(out)]).exit_code == 0
    assert out.read_text() == (ROOT / "docs/checks.md").read_text()


def test_unwritable_report_paths(images, tmp_path: Path, monkeypatch) -> None:
    """A report or manifest whose folder is missing is a usage error found before the run; a
    write that fails afterwards (disk full) is exit 1 naming the file, leaving nothing behind."""
    img = str(images["nf"])
    for args in (["--format", f"json:{tmp_path}/no/r.json"], ["-o", f"{tmp_path}/no/r.txt"],
                 ["--manifest", f"{tmp_path}/no/m.json"]):
        res = CliRunner().invoke(cli, ["check", "--no-guest", img, *args])
        assert res.exit_code == Exit.USAGE, res.output
        assert f"{tmp_path}/no/" in res.output and "does not exist" in res.output
    res = CliRunner().invoke(cli, ["manifest", "--no-guest", img, "-o", f"{tmp_path}/no/m.json"])
    assert res.exit_code == Exit.USAGE and "does not exist" in res.output

    import errno
    import vhdtool.report as report

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(report.os, "fsync", full)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["check", "--no-guest", img, "--format", f"json:{out}"])
    assert res.exit_code == Exit.FINDINGS
    assert f"{out}: writing it failed: No space left on device" in res.output
    assert list(tmp_path.iterdir()) == []
