"""The upload commands ``vhdtool manifest`` emits, met by the clients that will run them.

For every fixture image (fixtures/recipes.py, what ``python -m fixtures.build --list`` lists),
``vhdtool manifest IMG --commands -o m.json`` writes the script and the manifest; the script runs
under bash with recording stand-ins for ``az`` and ``azcopy`` on PATH (so bash itself expands the
quoting, variables and ``$(...)``), and every recorded ``az`` argv then goes through the real Azure
CLI (pinned in .venv-az by scripts/bootstrap) with no login, HOME and AZURE_CONFIG_DIR in a temp
folder, telemetry off and, as root, no network at all (``unshare -n``).  Each must pass az's
argument parsing and validators and stop only at "Please run 'az login'".  az never sees the
``--features`` values nor the ARM fragment before Azure does: those are checked against what az
and azure-mgmt-compute know (tests/vhdtool/az_client.py).  azcopy is on neither PyPI nor Debian:
its line is checked against its documented form only.  Deliberately broken commands must be
rejected, so these tests can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fixtures.recipes import RECIPES

pytestmark = [pytest.mark.slow, pytest.mark.guestfs]

ROOT = Path(__file__).resolve().parents[2]
AZ_PYTHON = ROOT / ".venv-az" / "bin" / "python"
CLIENT = Path(__file__).with_name("az_client.py")
LOGIN = "Please run 'az login'"
IMAGES = sorted(RECIPES)
SUB = "00000000-0000-0000-0000-000000000000"
SAS = ("https://md-impexp-0a1b2c3d4e5f.z1.blob.storage.azure.net/0a1b2c3d4e5f/abcd"
       "?sv=2018-03-28&sr=b&si=00000000-0000-0000-0000-000000000000&sig=c2ln")
#: what the script's unset variables are set to (names Azure accepts)
SCRIPT_ENV = {"RESOURCE_GROUP": "rg-vhdtool-test", "LOCATION": "westeurope",
              "GALLERY": "vhdtool_test_gallery", "DEFINITION": "debian-12", "VERSION": "1.0.0",
              "PUBLISHER": "vhdtool", "OFFER": "debian", "SKU": "12"}
#: azcopy copy's documented form (learn.microsoft.com storage-ref-azcopy-copy, azcopy v10):
#: ``azcopy copy [source] [destination] [flags]``; the flags vhdtool uses, with their values
AZCOPY_FLAGS = {"--blob-type": {"Detect", "BlockBlob", "PageBlob", "AppendBlob"}}

SHIM = textwrap.dedent(f"""\
    import json, os, sys
    args = sys.argv[1:]
    with open(os.environ["SHIM_LOG"], "a") as f:
        f.write(json.dumps([os.path.basename(sys.argv[0]), args]) + "\\n")
    def opt(name):
        return args[args.index(name) + 1]
    if args[:2] in (["disk", "show"], ["snapshot", "show"], ["image", "show"]):
        kind = {{"disk": "disks", "snapshot": "snapshots", "image": "images"}}[args[0]]
        print(f"/subscriptions/{SUB}/resourceGroups/{{opt('--resource-group')}}"
              f"/providers/Microsoft.Compute/{{kind}}/{{opt('--name')}}")
    elif args[:2] == ["disk", "grant-access"]:
        print({SAS!r})
    """)


def az_env(home: Path) -> dict[str, str]:
    """A fresh az configuration: no login, no telemetry, no survey, no upgrade check."""
    config = home / ".azure"
    config.mkdir(parents=True, exist_ok=True)
    (config / "config").write_text("[core]\ncollect_telemetry = no\nsurvey_message = no\n"
                                   "no_color = yes\n[auto-upgrade]\nenable = no\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    return {**env, "HOME": str(home), "AZURE_CONFIG_DIR": str(config)}


def offline() -> list[str]:
    """``unshare -n`` (a network namespace with no interface) where it works (root)."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"],
                                                  capture_output=True).returncode == 0:
        return ["unshare", "-n"]
    return []


def ask_clients(request: dict[str, Any], home: Path) -> dict[str, Any]:
    if not AZ_PYTHON.exists():
        pytest.fail(f"{AZ_PYTHON} missing: run ./scripts/bootstrap (it installs the Azure CLI)")
    p = subprocess.run([*offline(), str(AZ_PYTHON), str(CLIENT)], input=json.dumps(request),
                       capture_output=True, text=True, env=az_env(home), timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def emit(name: str, image: Path, work: Path) -> dict[str, Any]:
    """vhdtool manifest's script and manifest for one image, and the script run by bash."""
    work.mkdir()
    manifest = work / "m.json"
    p = subprocess.run([sys.executable, "-m", "vhdtool", "manifest", str(image), "--commands",
                        "-o", str(manifest)], capture_output=True, text=True, timeout=600)
    assert p.returncode in (0, 1), f"{name}: manifest exit {p.returncode}: {p.stderr}"
    script = work / "upload.sh"
    script.write_text(p.stdout)
    shims = work / "bin"
    shims.mkdir()
    for tool in ("az", "azcopy"):
        (shims / tool).write_text(f"#!{sys.executable}\n{SHIM}")
        (shims / tool).chmod(0o755)
    log = work / "calls.jsonl"
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **SCRIPT_ENV, "SHIM_LOG": str(log),
                              "PATH": f"{shims}:{os.environ['PATH']}"})
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {"doc": json.loads(manifest.read_text()), "script": p.stdout, "bash": run,
            "az": [args for tool, args in calls if tool == "az"],
            "azcopy": [args for tool, args in calls if tool == "azcopy"]}


@pytest.fixture(scope="module")
def emitted(fixture_image, tmp_path_factory) -> dict[str, dict[str, Any]]:
    work = tmp_path_factory.mktemp("az")
    images = {name: fixture_image(name) for name in IMAGES}
    with ThreadPoolExecutor(max_workers=2) as pool:   # the machine's two cores
        done = pool.map(lambda n: emit(n, images[n], work / n), IMAGES)
        return dict(zip(IMAGES, done))


@pytest.fixture(scope="module")
def verdict(emitted, tmp_path_factory) -> dict[str, Any]:
    """One run of the clients over every image's commands, features and ARM resources."""
    request: dict[str, list] = {"commands": [], "features": [], "arm": []}
    index: dict[str, dict[str, list[int]]] = {}
    for name, e in emitted.items():
        spans = index[name] = {"commands": [], "features": [], "arm": []}
        items = {"commands": e["az"],
                 "features": [list(d["features"].items()) for d in e["doc"]["gallery"]["register"]],
                 "arm": e["doc"]["upload"]["arm_template"]["resources"]}
        for key, values in items.items():
            for v in values:
                spans[key].append(len(request[key]))
                request[key].append(v)
    answer = ask_clients(request, tmp_path_factory.mktemp("az-home"))
    return {"answer": answer, "index": index}


def results(verdict: dict[str, Any], name: str, key: str) -> list[Any]:
    return [verdict["answer"][key][i] for i in verdict["index"][name][key]]


@pytest.mark.parametrize("name", IMAGES)
def test_the_script_runs_under_bash_and_is_the_manifest_commands(emitted, name: str) -> None:
    e = emitted[name]
    assert e["bash"].returncode == 0, e["bash"].stderr
    commands = e["doc"]["upload"]["commands"]
    assert commands and e["script"].splitlines()[-len(commands):] == commands
    # every az line of the script was run: the stand-in saw as many calls as there are lines
    az_lines = [c for c in commands if c.startswith("az ") or "$(az " in c]
    assert len(e["az"]) == len(az_lines) >= 6


@pytest.mark.parametrize("name", IMAGES)
def test_every_az_command_passes_az_and_stops_at_the_login(emitted, verdict, name: str) -> None:
    ran = results(verdict, name, "commands")
    assert [r["argv"] for r in ran] == emitted[name]["az"]
    rejected = [f"az {' '.join(r['argv'])}\n  -> exit {r['code']}: {r['stderr'].strip()}"
                for r in ran if not (r["code"] == 1 and LOGIN in r["stderr"])]
    assert not rejected, "\n".join(rejected)
    kinds = {tuple(r["argv"][:3]) if r["argv"][0] == "sig" else tuple(r["argv"][:2]) for r in ran}
    assert {("disk", "create"), ("sig", "image-definition", "create"),
            ("sig", "image-version", "create")} <= kinds


@pytest.mark.parametrize("name", IMAGES)
def test_features_are_what_az_and_the_sdk_know(emitted, verdict, name: str) -> None:
    found = results(verdict, name, "features")
    assert len(found) == len(emitted[name]["doc"]["gallery"]["register"]) >= 1
    assert all(p == [] for p in found), found


@pytest.mark.parametrize("name", IMAGES)
def test_arm_fragment_round_trips_through_the_sdk_models(emitted, verdict, name: str) -> None:
    resources = emitted[name]["doc"]["upload"]["arm_template"]["resources"]
    found = results(verdict, name, "arm")
    assert len(found) == len(resources) >= 2
    assert all(p == [] for p in found), found


@pytest.mark.parametrize("name", IMAGES)
def test_azcopy_line_has_its_documented_form(emitted, name: str) -> None:
    e = emitted[name]
    (args,) = e["azcopy"]
    assert args[0] == "copy"
    positional, flags, i = [], {}, 1
    while i < len(args):
        if args[i].startswith("--"):
            flag, _, value = args[i].partition("=")
            if not value:
                i += 1
                value = args[i]
            flags[flag] = value
        else:
            positional.append(args[i])
        i += 1
    source, destination = positional
    assert source == e["doc"]["file"]["path"] and destination == SAS
    assert set(flags) <= set(AZCOPY_FLAGS), flags
    assert all(v in AZCOPY_FLAGS[f] for f, v in flags.items()), flags
    assert flags["--blob-type"] == "PageBlob"         # a managed disk upload is a page blob
    # the disk is created for exactly the bytes azcopy will send
    (create,) = [a for a in e["az"] if a[:2] == ["disk", "create"]]
    size = int(create[create.index("--upload-size-bytes") + 1])
    assert size == os.path.getsize(source) == e["doc"]["file"]["upload_size_bytes"]


# -- the checks can fail ---------------------------------------------------------------------------

def _with(argv: list[str], flag: str, value: str | None = None, rename: str | None = None
          ) -> list[str]:
    out = list(argv)
    i = out.index(flag)
    if rename is not None:
        out[i] = rename
    if value is not None:
        out[i + 1] = value
    return out


def test_broken_commands_are_rejected(emitted, tmp_path: Path) -> None:
    e = emitted["good"]
    (create,) = [a for a in e["az"] if a[:2] == ["disk", "create"]]
    definition = [a for a in e["az"] if a[:3] == ["sig", "image-definition", "create"]][0]
    broken = {
        "misspelled flag": (_with(create, "--upload-size-bytes", rename="--upload-size-btyes"),
                            "unrecognized arguments: --upload-size-btyes"),
        "abbreviated flag": (_with(create, "--upload-size-bytes", rename="--upload-size-byte"),
                             "unrecognized arguments: --upload-size-byte"),
        "value outside choices": (_with(create, "--hyper-v-generation", "V3"),
                                  "'V3' is not a valid value for '--hyper-v-generation'"),
        "os-state outside choices": (_with(definition, "--os-state", "Generalised"),
                                     "'Generalised' is not a valid value for '--os-state'"),
        "features not KEY=VALUE": (_with(definition, "--features", "SecurityType TrustedLaunch"),
                                   "usage error: --features KEY=VALUE"),
    }
    features = [[["SecurityType", "TrustedLaunchSupport"]], [["DiskControllerTypes", "SCSI,NVME"]],
                [["IsAcceleratedNetworkSupported", "yes"]], [["IsNvmeSupported", "True"]],
                [["DiskControllerTypes", "SCSI,SCSI"]]]
    resource = json.loads(json.dumps(e["doc"]["upload"]["arm_template"]["resources"][0]))
    resource["properties"]["osState"] = "Generalised"
    unknown = json.loads(json.dumps(e["doc"]["upload"]["arm_template"]["resources"][0]))
    unknown["properties"]["hyperVGen"] = "V2"
    missing = json.loads(json.dumps(e["doc"]["upload"]["arm_template"]["resources"][0]))
    del missing["properties"]["identifier"]["publisher"]
    answer = ask_clients({"commands": [argv for argv, _ in broken.values()],
                          "features": features, "arm": [resource, unknown, missing]}, tmp_path)
    for (what, (argv, message)), r in zip(broken.items(), answer["commands"]):
        assert LOGIN not in r["stderr"] and r["code"] != 0, (what, r)
        assert message in r["stderr"], (what, r["stderr"])
    for feature, problems in zip(features, answer["features"]):
        assert len(problems) == 1, (feature, problems)
    osstate, extra, required = answer["arm"]
    assert any("osState=Generalised: not one of OperatingSystemStateTypes" in p for p in osstate)
    assert any("round trip" in p and "hyperVGen" in p for p in extra), extra
    assert any("identifier.publisher: required" in p for p in required), required


def test_the_real_az_entry_point_rejects_them_too(emitted, tmp_path: Path) -> None:
    """The same misspelling and bad choice through ``az`` itself, not the in-process runner."""
    (create,) = [a for a in emitted["good"]["az"] if a[:2] == ["disk", "create"]]
    az = AZ_PYTHON.parent / "az"
    for argv, message in ((_with(create, "--sku", rename="--skew"), "unrecognized arguments"),
                          (_with(create, "--os-type", "Linus"), "is not a valid value")):
        p = subprocess.run([*offline(), str(az), *argv], capture_output=True, text=True,
                           env=az_env(tmp_path), timeout=120)
        assert p.returncode == 2 and message in p.stderr and LOGIN not in p.stderr, p.stderr
    p = subprocess.run([*offline(), str(az), *create], capture_output=True, text=True,
                       env=az_env(tmp_path), timeout=120)
    assert p.returncode == 1 and LOGIN in p.stderr, p.stderr
