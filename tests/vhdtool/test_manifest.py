"""The upload manifest on a real small fixed VHD (hybrid GPT made by sgdisk/mkfs) with the fake guest
plugged in as the guest engine: schema, sizes, digests against md5sum/sha256sum, the commands and
the ARM fragment; the CLI (manifest, check --manifest) without the guest."""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from vhdtool.checks.catalog import V1, V2, Profile, Severity
from tests.checks.fakeguest import fake_guest
from vhdtool.checks.gallery import Declaration, declare
from vhdtool.checks.gallery.rules import UNSIGNED
from tests.vhdtool.images import MiB, gpt_hybrid, wrap_fixed
from vhdtool.cli import cli
from vhdtool.datadisks import DataDisk, run_all
from vhdtool.manifest import Digests, build, collect, script
from vhdtool.pipeline import run
from vhdtool import schemas

SCHEMA = schemas.load("manifest")
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
NAMES = dict(publisher="myorg", offer="debian", sku="12", gallery="my_gallery",
             definition="debian-12", version="1.0.0", end_of_life="2999-12-31")


class FakeEngine:
    """The pipeline's guest engine over tests.checks.fakeguest (counts its calls)."""

    skip_reason = None
    timing = None

    def __init__(self, files=None) -> None:
        self.files, self.calls = files, 0

    def __call__(self, image, facts):
        self.calls += 1
        return fake_guest(self.files)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def vhd(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("manifest")
    raw = gpt_hybrid(d / "disk.raw", 64 * MiB)
    with open(raw, "r+b") as f:          # some data past the filesystems' metadata
        f.seek(40 * MiB)
        f.write(bytes(range(256)) * 4096)
    return wrap_fixed(raw, d / "disk.vhd")


def manifest(path: Path, profile: Profile = Profile(), files=None, md5: bool = True,
             data_disks: tuple[DataDisk, ...] = (), **decl):
    """The manifest of ``path`` with the fake guest (and ``data_disks``, checked as the CLI
    does)."""
    engine = FakeEngine(files)
    profile = declare(profile, Declaration(**decl))
    digests = Digests(str(path), md5)
    extra = run_all(data_disks, profile, md5=md5)
    result = run(str(path), profile, guest_engine=engine, collect=collect)
    result.extra["data_disks"] = extra
    assert engine.calls == 1
    return build(result, digests.result(), Severity.ERROR)


def valid(doc: dict) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in VALIDATOR.iter_errors(doc)]
    assert not errors, errors[:5]


def tool(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          check=True).stdout


def test_manifest_validates_and_pins_size_and_digests(vhd: Path) -> None:
    doc = manifest(vhd, **NAMES)
    valid(doc)
    f = doc["file"]
    assert f["size"] == f["upload_size_bytes"] == vhd.stat().st_size
    assert f["sha256"] == tool("sha256sum", vhd).split()[0]
    assert f["md5"] == tool("md5sum", vhd).split()[0]
    assert base64.b64decode(f["md5_base64"]).hex() == f["md5"]
    assert doc["container"]["footer"]["disk_type"] == "fixed"
    assert doc["container"]["virtual_size"] == vhd.stat().st_size - 512
    assert [p["index"] for p in doc["partitions"]["entries"]] == [1, 2, 3]
    assert doc["checks"]["passed"] and doc["upload"]["ready"], doc["upload"]["blockers"]
    assert doc["guest"]["distribution"] == "debian" and doc["guest"]["architecture"] == "x86_64"
    assert {p["name"] for p in doc["guest"]["provisioners"]} == {"cloud-init", "waagent"}
    assert "gallery.os-state" in doc["checks"]["results"]


def test_md5_only_on_request(vhd: Path) -> None:
    doc = manifest(vhd, md5=False)
    valid(doc)
    assert doc["file"]["md5"] is None and doc["file"]["md5_base64"] is None
    assert doc["file"]["sha256"]


def test_schema_rejects_what_it_must() -> None:
    for bad in ({"schema_version": 2}, {}):
        assert list(VALIDATOR.iter_errors(bad))


def parse(lines: list[str]) -> list[list[str]]:
    """The az/azcopy commands, including those captured as ``NAME="$(az ...)"``."""
    out = []
    for line in lines:
        m = re.match(r'^\w+="\$\((.*)\)"$', line)
        cmd = m.group(1) if m else line
        if cmd.startswith(("az ", "azcopy ")) and not cmd.startswith(("az disk show",
                                                                        "az snapshot show")):
            out.append(shlex.split(cmd))
    return out


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_commands_hybrid_disk(vhd: Path) -> None:
    doc = manifest(vhd, **NAMES)
    cmds = parse(doc["upload"]["commands"])
    verbs = [" ".join(c[:3]) for c in cmds]
    assert verbs == ["az disk create", "az disk grant-access", "azcopy copy $VHD",
                     "az disk revoke-access", "az sig image-definition",
                     "az sig image-version", "az snapshot create", "az sig image-definition",
                     "az sig image-version"]
    create = cmds[0]
    assert option(create, "--upload-type") == "Upload"
    assert int(option(create, "--upload-size-bytes")) == vhd.stat().st_size
    assert option(create, "--hyper-v-generation") == V2
    assert "--security-type" not in create       # its V1 snapshot could not be made otherwise
    assert option(cmds[2], "--blob-type") == "PageBlob"
    v2_def, v1_def = cmds[4], cmds[7]
    assert option(v2_def, "--hyper-v-generation") == V2
    assert option(v2_def, "--features") == ("SecurityType=TrustedLaunchSupported "
                                            "DiskControllerTypes=SCSI,NVMe "
                                            "IsAcceleratedNetworkSupported=True")
    assert option(v2_def, "--os-state") == "Generalized"
    assert option(v2_def, "--end-of-life-date") == "2999-12-31"
    assert option(cmds[6], "--hyper-v-generation") == V1
    assert option(v1_def, "--features").startswith("SecurityType=Standard DiskControllerTypes=SCSI ")
    assert option(v1_def, "--gallery-image-definition") == "$DEFINITION-gen1"
    assert option(cmds[8], "--os-snapshot") == "$SNAPSHOT_ID"
    text = script(doc)
    assert "DEFINITION=debian-12" in text and "NOT READY" not in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)   # valid bash


def test_arm_fragment_matches_the_definitions(vhd: Path) -> None:
    doc = manifest(vhd, **NAMES)
    arm = doc["upload"]["arm_template"]
    images = [r for r in arm["resources"] if r["type"] == "Microsoft.Compute/galleries/images"]
    assert [i["properties"]["hyperVGeneration"] for i in images] == [V2, V1]
    for img, reg in zip(images, doc["gallery"]["register"]):
        assert {f["name"]: f["value"] for f in img["properties"]["features"]} == reg["features"]
        assert img["properties"]["osState"] == "Generalized"
        assert img["properties"]["identifier"]["publisher"] == "myorg"
    versions = [r for r in arm["resources"] if r["type"].endswith("/versions")]
    assert [v["properties"]["storageProfile"]["osDiskImage"]["source"]["id"] for v in versions] \
        == ["[parameters('sourceDiskId')]", "[parameters('sourceSnapshotIdV1')]"]


def test_gen2_only_upload_disk_is_trusted_launch(vhd: Path) -> None:
    doc = manifest(vhd, Profile(generations=frozenset({V2})))
    assert [r["hyperVGeneration"] for r in doc["gallery"]["register"]] == [V2]
    create = parse(doc["upload"]["commands"])[0]
    assert option(create, "--hyper-v-generation") == V2
    assert option(create, "--security-type") == "TrustedLaunch"


def test_declared_generation_gives_one_definition(vhd: Path) -> None:
    doc = manifest(vhd, Profile(generations=frozenset({V1})))
    assert [r["hyperVGeneration"] for r in doc["gallery"]["register"]] == [V1]
    create = parse(doc["upload"]["commands"])[0]
    assert option(create, "--hyper-v-generation") == V1 and "--security-type" not in create


def test_declared_mismatch_blocks_the_upload(vhd: Path) -> None:
    doc = manifest(vhd, files=UNSIGNED, security_type="TrustedLaunchSupported")
    valid(doc)
    r = doc["checks"]["results"]["gallery.security-type"]
    assert r["verdict"] == "fail" and r["gate"]
    assert "no Authenticode signature" in r["findings"][0]["message"]
    assert not doc["upload"]["ready"]
    assert any("gallery.security-type" in b for b in doc["upload"]["blockers"])
    assert "# NOT READY: checks failed:" in script(doc)
    # the derived definition says what the disk does support, with the evidence
    v2 = next(d for d in doc["gallery"]["definitions"] if d["hyperVGeneration"] == V2)
    assert v2["features"]["SecurityType"]["value"] == "Standard"


def test_not_a_fixed_vhd_is_not_ready(tmp_path: Path) -> None:
    raw = gpt_hybrid(tmp_path / "d.raw", 32 * MiB)
    doc = manifest(raw)
    valid(doc)
    assert not doc["upload"]["ready"]
    assert any("vhdtool convert" in b for b in doc["upload"]["blockers"])


# -- the command line, without libguestfs -----------------------------------------------------------

def test_cli_manifest_no_guest(vhd: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    res = CliRunner().invoke(cli, ["manifest", str(vhd), "--no-guest", "--md5", "-o", str(out),
                                   "--commands", *sum(([f"--{k}", v] for k, v in {
                                       "publisher": "myorg", "offer": "debian", "sku": "12",
                                       "gallery": "my_gallery", "definition": "debian-12",
                                       "image-version": "1.0.0"}.items()), [])])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    valid(doc)
    assert doc["guest"]["opened"] is False and doc["gallery"]["osState"]["value"] is None
    assert doc["file"]["md5"] == tool("md5sum", vhd).split()[0]
    assert res.stdout.startswith("#!/bin/bash") and "az disk create" in res.stdout
    assert "not ready to upload" in res.stderr      # the OS state was not derived


def test_cli_commands_need_a_manifest_file(vhd: Path) -> None:
    res = CliRunner().invoke(cli, ["manifest", str(vhd), "--no-guest", "--commands"])
    assert res.exit_code == 2 and "-o FILE" in res.output


def test_cli_check_writes_the_manifest_of_the_same_run(vhd: Path, tmp_path: Path) -> None:
    m, rep = tmp_path / "m.json", tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["check", str(vhd), "--no-guest", "--manifest", str(m),
                                   "--format", f"json:{rep}", "--image-version", "v1"])
    assert res.exit_code == 1, res.output         # the version name is refused
    doc, report = json.loads(m.read_text()), json.loads(rep.read_text())
    valid(doc)
    assert doc["checks"]["results"]["gallery.version"]["verdict"] == "fail"
    assert {r["id"]: r["verdict"] for r in report["results"]} == \
        {cid: r["verdict"] for cid, r in doc["checks"]["results"].items()}
    assert doc["checks"]["passed"] is report["passed"] is False


def test_cli_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["manifest", str(tmp_path / "nope.vhd"), "--no-guest"])
    assert res.exit_code == 3 and "nope.vhd" in res.output and "Traceback" not in res.output


def test_cli_check_without_gallery_options_runs_no_gallery_check(vhd: Path, tmp_path: Path) -> None:
    rep = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["check", str(vhd), "--no-guest", "--accelerated-networking",
                                   "--format", f"json:{rep}"])
    assert res.exit_code == 0, res.output
    gallery = [r for r in json.loads(rep.read_text())["results"] if r["id"].startswith("gallery.")]
    assert gallery and all(r["verdict"] == "skip" for r in gallery)


def test_digests_from_convert_json_only_when_it_describes_the_file(tmp_path: Path) -> None:
    raw = gpt_hybrid(tmp_path / "d.raw", 32 * MiB)
    vhd, cj = tmp_path / "d.vhd", tmp_path / "convert.json"
    res = CliRunner().invoke(cli, ["convert", str(raw), str(vhd), "--digest", "sha256",
                                   "--digest", "md5", "--json"])
    assert res.exit_code == 0, res.output
    cj.write_text(res.stdout)
    sha, md5 = tool("sha256sum", vhd).split()[0], tool("md5sum", vhd).split()[0]

    def manifest_with(*extra: str) -> dict:
        out = tmp_path / "m.json"
        r = CliRunner().invoke(cli, ["manifest", str(vhd), "--no-guest", "-o", str(out),
                                     "--digests-from", str(cj), *extra])
        assert r.exit_code == 0, r.output
        doc = json.loads(out.read_text())
        valid(doc)
        assert doc["file"]["sha256"] == sha
        return doc["file"]

    f = manifest_with("--md5")
    assert f["digests_from"].startswith("vhdtool convert --json") and f["md5"] == md5
    assert base64.b64decode(f["md5_base64"]).hex() == md5
    time.sleep(0.01)
    with open(vhd, "r+b") as fh:          # the same bytes written again: modified after the JSON
        sector = fh.read(512)
        fh.seek(0)
        fh.write(sector)
    assert manifest_with()["digests_from"] == "computed"
    cj.write_text(res.stdout.replace(str(vhd), str(raw)))       # describes another file
    assert manifest_with()["digests_from"] == "computed"
