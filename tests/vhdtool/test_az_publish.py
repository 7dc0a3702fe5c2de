"""Every combination of declared gallery values the tests declare (COMBINATIONS): the script
``vhdtool manifest`` writes runs under bash with recording stand-ins for az and azcopy, every
recorded az command passes the real Azure CLI's parser and validators (stopping only at the
login), and every ARM resource round-trips through azure-mgmt-compute's models with nothing lost
or unknown (tests/vhdtool/az_client.py, in .venv-az).  The disk is a real small fixed VHD with the
fake guest plugged in (tests/vhdtool/test_manifest.py), so no appliance is launched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vhdtool.checks.catalog import V1, V2, Profile, SPECIALIZED
from tests.vhdtool.test_az_commands import AZ_PYTHON, LOGIN, SCRIPT_ENV, SHIM, ask_clients
from tests.vhdtool.images import MiB, raw_disk, wrap_fixed
from tests.vhdtool.test_manifest import NAMES, manifest, vhd  # noqa: F401 (fixture)
from vhdtool.datadisks import DataDisk
from vhdtool.manifest import script

PUBLISHING = dict(description="Debian 12 for Azure", eula="MIT licence",
                  privacy_statement_uri="https://example.org/privacy",
                  release_note_uri="https://example.org/notes/1.0.0",
                  tags=(("team", "images"), ("cost centre", "42")), vcpus=(2, 16),
                  memory=(2048, 65536), disallowed_disk_types=("Standard_LRS",),
                  location="westeurope", target_regions=(("westeurope", 2), ("northeurope", None)),
                  replica_count=1, storage_account_type="Standard_ZRS", exclude_from_latest=True,
                  replication_mode="Full")
COMMUNITY = dict(sharing="community", publisher_uri="https://example.org",
                 publisher_email="images@example.org", community_eula="https://example.org/eula",
                 public_name_prefix="myorg")
#: name -> (declared values, profile, the LUNs of its data disks)
COMBINATIONS = {
    "names only, managed disk": ({}, Profile(), ()),
    "every property, private, managed disk, data disks at LUNs 0 and 5": (
        dict(PUBLISHING, sharing="private"), Profile(), (0, 5)),
    "purchase plan, direct sharing": (dict(plan_publisher="canonical", plan_name="server",
                                           plan_product="ubuntu", sharing="direct"), Profile(),
                                      ()),
    "community (variables), shallow, memory max only": (
        dict(sharing="community", replication_mode="Shallow", memory=(None, 8192),
             vcpus=(4, None), exclude_from_latest=False), Profile(), ()),
    "community information declared, a data disk at LUN 63": (COMMUNITY, Profile(), (63,)),
    "managed image, hybrid (V1 and V2), data disks at LUNs 0 and 1": (
        dict(PUBLISHING, source="managed-image"), Profile(generations=frozenset({V1, V2})),
        (0, 1)),
    "storage VHD, specialized, a data disk at LUN 2": (
        dict(source="storage-vhd", location="westeurope", end_of_life="2999-12-31T12:30:00Z"),
        Profile(os_state=SPECIALIZED), (2,)),
}
ENV = {**SCRIPT_ENV, "SHARE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
       "PUBLISHER_URI": "https://example.org", "PUBLISHER_EMAIL": "images@example.org",
       "PUBLIC_NAME_PREFIX": "myorg", "COMMUNITY_EULA": "https://example.org/eula",
       "STORAGE_ACCOUNT": "vhdtoolstore"}
EVERY = "every property, private, managed disk, data disks at LUNs 0 and 5"
IMAGE = "managed image, hybrid (V1 and V2), data disks at LUNs 0 and 1"
STORAGE = "storage VHD, specialized, a data disk at LUN 2"


def run_script(text: str, work: Path) -> list[list[str]]:
    shims = work / "bin"
    shims.mkdir(parents=True)
    for tool in ("az", "azcopy"):
        (shims / tool).write_text(f"#!{os.sys.executable}\n{SHIM}")
        (shims / tool).chmod(0o755)
    (work / "upload.sh").write_text(text)
    log = work / "calls.jsonl"
    p = subprocess.run(["bash", str(work / "upload.sh")], capture_output=True, text=True,
                       timeout=60, env={**os.environ, **ENV, "SHIM_LOG": str(log),
                                        "PATH": f"{shims}:{os.environ['PATH']}"})
    assert p.returncode == 0, p.stderr
    return [args for tool, args in map(json.loads, log.read_text().splitlines()) if tool == "az"]


@pytest.fixture(scope="module")
def data_vhd(tmp_path_factory) -> Path:
    """A 32 MiB fixed VHD: a data disk (no partition table needed)."""
    d = tmp_path_factory.mktemp("data")
    return wrap_fixed(raw_disk(d / "data.raw", 32 * MiB), d / "data.vhd")


@pytest.fixture(scope="module")
def emitted(vhd, data_vhd, tmp_path_factory) -> dict[str, dict]:
    out = {}
    for i, (name, (decl, profile, luns)) in enumerate(COMBINATIONS.items()):
        files = {"/etc/waagent.conf": "Provisioning.Agent=disabled\n",
                 "/etc/cloud/cloud-init.disabled": "", "/etc/ssh/ssh_host_ed25519_key": "k",
                 "/etc/machine-id": "4c7a\n"} if profile.os_state == SPECIALIZED else None
        doc = manifest(vhd, profile, files=files, md5=False,
                       data_disks=tuple(DataDisk(n, str(data_vhd)) for n in luns),
                       **{**NAMES, **decl})
        # the community information missing is a gallery.community-info failure, nothing else
        assert doc["upload"]["ready"] or name.startswith("community (variables)"), \
            (name, doc["upload"]["blockers"])
        out[name] = {"doc": doc, "az": run_script(script(doc), tmp_path_factory.mktemp(f"c{i}"))}
    return out


@pytest.fixture(scope="module")
def verdict(emitted, tmp_path_factory) -> dict:
    if not AZ_PYTHON.exists():
        pytest.fail(f"{AZ_PYTHON} missing: run ./scripts/bootstrap (it installs the Azure CLI)")
    names = list(emitted)
    request = {"commands": [a for n in names for a in emitted[n]["az"]],
               "arm": [r for n in names for r in emitted[n]["doc"]["upload"]["arm_template"]
                       ["resources"]]}
    return ask_clients(request, tmp_path_factory.mktemp("home"))


def test_every_command_of_every_combination_passes_az(emitted, verdict) -> None:
    rejected = [f"az {' '.join(r['argv'])}\n  -> exit {r['code']}: {r['stderr'].strip()[-400:]}"
                for r in verdict["commands"] if not (r["code"] == 1 and LOGIN in r["stderr"])]
    assert not rejected, "\n".join(rejected)
    seen = {" ".join(a[:3]) for e in emitted.values() for a in e["az"]}
    for kind in ("sig image-definition create", "sig image-version create", "image create "
                 "--resource-group", "sig share add", "sig share enable-community",
                 "storage blob upload", "sig update --resource-group", "disk create"):
        assert any(s.startswith(kind.split(" --")[0]) for s in seen), (kind, seen)


def test_every_arm_resource_round_trips_through_the_sdk(verdict) -> None:
    problems = [p for found in verdict["arm"] for p in found]
    assert not problems, problems


def _flags(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    key = None
    for a in argv:
        if a.startswith("--"):
            key = a
            out[key] = []
        elif key:
            out[key].append(a)
    return out


def test_every_declared_value_reaches_the_commands_and_the_fragment(emitted) -> None:
    e = emitted[EVERY]
    # the disk is hybrid: one definition and version per generation, the uploaded one (V2) first
    definition = [_flags(a) for a in e["az"] if a[:3] == ["sig", "image-definition", "create"]][0]
    version = [_flags(a) for a in e["az"] if a[:3] == ["sig", "image-version", "create"]][0]
    assert definition["--description"] == ["Debian 12 for Azure"]
    assert definition["--minimum-cpu-core"] == ["2"] and definition["--maximum-memory"] == ["65536"]
    assert definition["--disallowed-disk-types"] == ["Standard_LRS"]
    assert definition["--tags"] == ["team=images", "cost centre=42"]
    assert version["--target-regions"] == ["westeurope=2", "northeurope"]
    assert version["--replica-count"] == ["1"] and version["--exclude-from-latest"] == ["true"]
    assert version["--storage-account-type"] == ["Standard_ZRS"]
    assert version["--replication-mode"] == ["Full"] and version["--location"] == ["westeurope"]
    image, ver = e["doc"]["upload"]["arm_template"]["resources"][1:3]
    assert image["properties"]["recommended"] == {"vCPUs": {"min": 2, "max": 16},
                                                  "memory": {"min": 2048, "max": 65536}}
    assert ver["properties"]["publishingProfile"]["targetRegions"] == [
        {"name": "westeurope", "regionalReplicaCount": 2}, {"name": "northeurope"}]
    assert e["doc"]["gallery"]["updatable"]["targetRegions"] == {"resource": "version",
                                                                  "updatable": True}
    assert e["doc"]["gallery"]["updatable"]["replicationMode"]["updatable"] is False
    vhd_route = emitted[STORAGE]
    v = [_flags(a) for a in vhd_route["az"] if a[:3] == ["sig", "image-version", "create"]][0]
    assert v["--os-vhd-uri"] == ["https://vhdtoolstore.blob.core.windows.net/vhds/disk.vhd"]
    assert v["--os-vhd-storage-account"] == ["vhdtoolstore"] and "--os-snapshot" not in v
    assert "listKeys" in vhd_route["doc"]["gallery"]["source"]["permission"]


def test_broken_publishing_values_are_rejected(emitted, tmp_path: Path) -> None:
    """The parser and the models do refuse what is wrong: these tests can fail."""
    e = emitted[EVERY]
    version = [a for a in e["az"] if a[:3] == ["sig", "image-version", "create"]][0]
    bad_mode = list(version)
    bad_mode[bad_mode.index("--replication-mode") + 1] = "Deep"
    bad_type = list(version)
    bad_type[bad_type.index("--storage-account-type") + 1] = "Premium_ZRS"
    bad_lun = list(version)
    bad_lun[bad_lun.index("--data-snapshot-luns") + 1] = "first"
    resource = json.loads(json.dumps(e["doc"]["upload"]["arm_template"]["resources"][2]))
    resource["properties"]["publishingProfile"]["replicaCounts"] = 2
    data = json.loads(json.dumps(e["doc"]["upload"]["arm_template"]["resources"][2]))
    data["properties"]["storageProfile"]["dataDiskImages"][0]["logicalUnit"] = 0
    answer = ask_clients({"commands": [bad_mode, bad_type, bad_lun], "arm": [resource, data]},
                         tmp_path)
    for r in answer["commands"]:
        assert r["code"] != 0 and LOGIN not in r["stderr"], r
    assert any("replicaCounts" in p for p in answer["arm"][0]), answer["arm"]
    assert any("logicalUnit" in p for p in answer["arm"][1]), answer["arm"]


def _versions(e: dict) -> list[dict[str, list[str]]]:
    return [_flags(a) for a in e["az"] if a[:3] == ["sig", "image-version", "create"]]


def test_data_disks_reach_the_commands_and_the_fragment(emitted, data_vhd) -> None:
    e = emitted[EVERY]
    assert [d["lun"] for d in e["doc"]["data_disks"]] == [0, 5]
    assert all(d["file"]["upload_size_bytes"] == data_vhd.stat().st_size
               for d in e["doc"]["data_disks"])
    uploads = [_flags(a) for a in e["az"] if a[:2] == ["disk", "create"]]
    assert [u["--upload-size-bytes"] for u in uploads] == [
        [str(e["doc"]["file"]["upload_size_bytes"])], *[[str(data_vhd.stat().st_size)]] * 2]
    assert "--os-type" not in uploads[1] and "--hyper-v-generation" not in uploads[1]
    for v in _versions(e):          # both generations' versions carry the data disks
        assert v["--data-snapshot-luns"] == ["0", "5"]
        assert [x.rsplit("/", 1)[1] for x in v["--data-snapshots"]] == ["disk-lun0",
                                                                          "disk-lun5"]
    version = e["doc"]["upload"]["arm_template"]["resources"][2]
    assert version["properties"]["storageProfile"]["dataDiskImages"] == [
        {"lun": 0, "source": {"id": "[parameters('dataDiskId0')]"}},
        {"lun": 5, "source": {"id": "[parameters('dataDiskId5')]"}}]
    image = emitted[IMAGE]
    created = [_flags(a) for a in image["az"] if a[:2] == ["image", "create"]]
    assert len(created) == 2 and all(len(c["--data-disk-sources"]) == 2 for c in created)
    assert all("--data-snapshots" not in v for v in _versions(image))
    storage = _versions(emitted[STORAGE])[0]
    assert storage["--data-vhds-luns"] == ["2"]
    assert storage["--data-vhds-uris"] == [
        "https://vhdtoolstore.blob.core.windows.net/vhds/disk-lun2.vhd"]
    assert storage["--data-vhds-storage-accounts"] == ["vhdtoolstore"]


def test_community_information_reaches_az_and_the_gallery_resource(emitted) -> None:
    e = emitted["community information declared, a data disk at LUN 63"]
    update = [_flags(a) for a in e["az"] if a[:2] == ["sig", "update"]][0]
    assert update["--permissions"] == ["Community"]
    assert update["--publisher-uri"] == ["https://example.org"]
    assert update["--publisher-email"] == ["images@example.org"]
    assert update["--eula"] == ["https://example.org/eula"]
    assert update["--public-name-prefix"] == ["myorg"]
    gallery = e["doc"]["upload"]["arm_template"]["resources"][0]
    assert gallery["properties"]["sharingProfile"] == {
        "permissions": "Community", "communityGalleryInfo": {
            "publisherUri": "https://example.org", "publisherContact": "images@example.org",
            "eula": "https://example.org/eula", "publicNamePrefix": "myorg"}}
    assert e["doc"]["checks"]["results"]["gallery.community-info"]["verdict"] == "pass"
    loose = emitted["community (variables), shallow, memory max only"]
    assert loose["doc"]["checks"]["results"]["gallery.community-info"]["verdict"] == "fail"
