"""--data-disk LUN=FILE on check and manifest: LUNs parsed and refused (0-63, unique, the
managed-image route's 0..N-1), each data disk read and checked with the data-disk role (no guest),
its findings labelled by LUN and file in every report format, the exit code over all disks, an
unreadable data disk exit 3 naming it, and the manifest's data_disks (sizes and digests against
sha256sum, schema)."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from tests.vhdtool.images import MiB, gpt_hybrid, raw_disk, wrap_fixed
from vhdtool import schemas
from vhdtool.cli import cli
from vhdtool.datadisks import DataDisk, parse, route_problem


@pytest.fixture(scope="module")
def disks(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("datadisks")
    odd = raw_disk(d / "odd.raw", 32 * MiB + 4096)      # raw, not a fixed VHD
    return {"os": wrap_fixed(gpt_hybrid(d / "os.raw", 64 * MiB), d / "os.vhd"),
            "data": wrap_fixed(raw_disk(d / "data.raw", 32 * MiB), d / "data.vhd"),
            "small": wrap_fixed(raw_disk(d / "small.raw", 8 * MiB), d / "small.vhd"),
            "odd": odd}


def invoke(*argv: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in argv], catch_exceptions=False)


def test_parse_sorts_by_lun_and_refuses_what_azure_refuses() -> None:
    assert parse(["5=b.vhd", "0=a.vhd"]) == (DataDisk(0, "a.vhd"), DataDisk(5, "b.vhd"))
    assert parse(["63=x.vhd"]) == (DataDisk(63, "x.vhd"),)
    for bad, said in ((["64=a.vhd"], "0 to 63"), (["-1=a.vhd"], "0 to 63"),
                      (["x=a.vhd"], "not an integer"), (["a.vhd"], "LUN=FILE"),
                      (["1="], "LUN=FILE"), (["1=a.vhd", "1=b.vhd"], "LUN 1 is given twice")):
        with pytest.raises(ValueError, match=said):
            parse(bad)
    gap = parse(["0=a.vhd", "2=b.vhd"])
    assert "0, 2" in route_problem(gap, "managed-image")
    assert route_problem(gap, "managed-disk") is None
    assert route_problem(parse(["1=a.vhd", "0=b.vhd"]), "managed-image") is None


def test_usage_errors_are_exit_2_naming_the_option(disks) -> None:
    r = invoke("check", disks["os"], "--no-guest", "--data-disk", f"64={disks['data']}")
    assert r.exit_code == 2 and "--data-disk" in r.output and "0 to 63" in r.output
    r = invoke("manifest", disks["os"], "--no-guest", "--source", "managed-image",
               "--data-disk", f"1={disks['data']}")
    assert r.exit_code == 2 and "az image create numbers data disks" in r.output


@pytest.mark.parametrize("name, said", [("missing.vhd", "No such file or directory"),
                                        ("adir", "a directory")])
def test_an_unreadable_data_disk_is_exit_3_naming_it(disks, tmp_path: Path, name, said) -> None:
    (tmp_path / "adir").mkdir()
    r = invoke("check", disks["os"], "--no-guest", "--data-disk", f"3={tmp_path / name}")
    assert r.exit_code == 3 and name in r.output and said in r.output, r.output


def test_a_good_data_disk_passes_and_is_checked_as_a_data_disk(disks, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = invoke("check", disks["os"], "--no-guest", "--data-disk", f"0={disks['data']}",
               "--format", f"json:{out}")
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, schemas.load("check-report"))
    (data,) = doc["data_disks"]
    assert data["lun"] == 0 and data["passed"] and data["label"] == "LUN 0 data.vhd"
    verdicts = {x["id"]: x["verdict"] for x in data["results"]}
    assert verdicts["disk.vhd.fixed"] == verdicts["disk.size.limit"] == "pass"
    assert verdicts["disk.size.mib"] == "pass"
    # the OS-only checks do not apply to a data disk, and no guest check ran
    assert verdicts["disk.part.scheme"] == "skip" and verdicts["boot.g2.esp"] == "skip"
    assert not [x for x in data["results"] if x["id"].startswith(("guest.", "gallery."))
                and x["verdict"] != "skip"]


def test_failing_data_disks_are_labelled_in_every_report(disks, tmp_path: Path) -> None:
    files = {f: tmp_path / f"r.{f}" for f in ("json", "junit", "sarif")}
    r = invoke("check", disks["os"], "--no-guest", "--data-disk", f"0={disks['data']}",
               "--data-disk", f"3={disks['odd']}", "--data-disk", f"7={disks['small']}",
               *(x for f, p in files.items() for x in ("--format", f"{f}:{p}")),
               "--format", "text")
    assert r.exit_code == 1, r.output          # the OS disk alone passes: the data disks fail
    assert "disk.convert.needed (LUN 3 odd.raw): the image is raw" in r.output
    assert "disk.size.limit (LUN 7 small.vhd): 8,388,608 bytes is smaller than the 20 MiB" \
        in r.output
    assert f"data disk LUN 0: {disks['data']}" in r.output
    doc = json.loads(files["json"].read_text())
    assert not doc["passed"] and [d["passed"] for d in doc["data_disks"]] == [True, False, False]
    suites = ET.parse(files["junit"]).getroot().findall("testsuite")
    assert len(suites) == 4 and "LUN 3 odd.raw" in suites[2].get("name")
    failed = [c.get("name") for s in suites for c in s if c.find("failure") is not None]
    assert sorted(failed) == ["lun3.disk.convert.needed", "lun7.disk.size.limit"]
    sarif = json.loads(files["sarif"].read_text())["runs"][0]
    by_lun = {x["properties"].get("lun"): x for x in sarif["results"]}
    assert by_lun[3]["message"]["text"].startswith("LUN 3 odd.raw: ")
    assert by_lun[3]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == \
        str(disks["odd"])
    assert len(sarif["artifacts"]) == 4


def test_the_manifest_carries_each_data_disk(disks, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    r = invoke("manifest", disks["os"], "--no-guest", "--md5", "--data-disk",
               f"5={disks['data']}", "--data-disk", f"2={disks['odd']}", "-o", out)
    assert r.exit_code == 1, r.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, schemas.load("manifest"))
    two, five = doc["data_disks"]
    assert (two["lun"], five["lun"]) == (2, 5)
    size = disks["data"].stat().st_size
    assert five["file"]["size"] == five["file"]["upload_size_bytes"] == size
    sha = subprocess.run(["sha256sum", disks["data"]], capture_output=True, text=True,
                         check=True).stdout.split()[0]
    assert five["file"]["sha256"] == sha and five["file"]["md5"]
    assert five["container"]["footer"]["disk_type"] == "fixed" and five["checks"]["passed"]
    assert not two["checks"]["passed"]
    assert any("data disk LUN 2 odd.raw is not a fixed VHD" in b
               for b in doc["upload"]["blockers"])
