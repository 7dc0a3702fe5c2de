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
from tests.vhdtool.test_manifest import NAMES, manifest, vhd  # noqa: F401 (fixture)
from vhdtool.manifest import script

PUBLISHING = dict(description="Debian 12 for Azure", eula="MIT licence",
                  privacy_statement_uri="https://example.org/privacy",
                  release_note_uri="https://example.org/notes/1.0.0",
                  tags=(("team", "images"), ("cost centre", "42")), vcpus=(2, 16),
                  memory=(2048, 65536), disallowed_disk_types=("Standard_LRS",),
                  location="westeurope", target_regions=(("westeurope", 2), ("northeurope", None)),
                  replica_count=1, storage_account_type="Standard_ZRS", exclude_from_latest=True,
                  replication_mode="Full")
COMBINATIONS = {
    "names only, managed disk": ({}, Profile()),
    "every property, private, managed disk": (dict(PUBLISHING, sharing="private"), Profile()),
    "purchase plan, direct sharing": (dict(plan_publisher="canonical", plan_name="server",
                                           plan_product="ubuntu", sharing="direct"), Profile()),
    "community, shallow, memory max only": (dict(sharing="community", replication_mode="Shallow",
                                                 memory=(None, 8192), vcpus=(4, None),
                                                 exclude_from_latest=False), Profile()),
    "managed image, hybrid (V1 and V2)": (dict(PUBLISHING, source="managed-image"),
                                          Profile(generations=frozenset({V1, V2}))),
    "storage VHD, specialized": (dict(source="storage-vhd", location="westeurope",
                                      end_of_life="2999-12-31T12:30:00Z"),
                                 Profile(os_state=SPECIALIZED)),
}
ENV = {**SCRIPT_ENV, "SHARE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
       "PUBLISHER_URI": "https://example.org", "PUBLISHER_EMAIL": "images@example.org",
       "PUBLIC_NAME_PREFIX": "myorg", "EULA": "MIT", "STORAGE_ACCOUNT": "vhdtoolstore"}


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
def emitted(vhd, tmp_path_factory) -> dict[str, dict]:
    out = {}
    for i, (name, (decl, profile)) in enumerate(COMBINATIONS.items()):
        files = {"/etc/waagent.conf": "Provisioning.Agent=disabled\n",
                 "/etc/cloud/cloud-init.disabled": "", "/etc/ssh/ssh_host_ed25519_key": "k",
                 "/etc/machine-id": "4c7a\n"} if profile.os_state == SPECIALIZED else None
        doc = manifest(vhd, profile, files=files, md5=False, **{**NAMES, **decl})
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
                 "storage blob upload", "sig update --resource-group"):
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
    e = emitted["every property, private, managed disk"]
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
    vhd_route = emitted["storage VHD, specialized"]
    v = [_flags(a) for a in vhd_route["az"] if a[:3] == ["sig", "image-version", "create"]][0]
    assert v["--os-vhd-uri"] == ["https://vhdtoolstore.blob.core.windows.net/vhds/disk.vhd"]
    assert v["--os-vhd-storage-account"] == ["vhdtoolstore"] and "--os-snapshot" not in v
    assert "listKeys" in vhd_route["doc"]["gallery"]["source"]["permission"]


def test_broken_publishing_values_are_rejected(emitted, tmp_path: Path) -> None:
    """The parser and the models do refuse what is wrong: these tests can fail."""
    e = emitted["every property, private, managed disk"]
    version = [a for a in e["az"] if a[:3] == ["sig", "image-version", "create"]][0]
    bad_mode = list(version)
    bad_mode[bad_mode.index("--replication-mode") + 1] = "Deep"
    bad_type = list(version)
    bad_type[bad_type.index("--storage-account-type") + 1] = "Premium_ZRS"
    resource = json.loads(json.dumps(e["doc"]["upload"]["arm_template"]["resources"][2]))
    resource["properties"]["publishingProfile"]["replicaCounts"] = 2
    answer = ask_clients({"commands": [bad_mode, bad_type], "arm": [resource]}, tmp_path)
    for r in answer["commands"]:
        assert r["code"] != 0 and LOGIN not in r["stderr"], r
    assert any("replicaCounts" in p for p in answer["arm"][0]), answer["arm"]
