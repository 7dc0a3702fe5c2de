"""The documented Packer example (docs/examples/packer/azure-debian.pkr.hcl) end to end on fixture
images: the qemu builder, then the shell-local post-processor running vhdtool fix (convert and check) and
manifest; a failing check fails the build.

Packer comes from Debian (bookworm: 1.6.6, installed by scripts/bootstrap). Where it is missing,
the test runs the post-processor's commands itself, in the same order, with ``sh -e`` as
shell-local does -- so the example's commands are exercised either way.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from vhdtool import schemas

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "packer" / "azure-debian.pkr.hcl"
SCHEMA = schemas.load("manifest")
VHDTOOL = str(Path(sys.executable).parent / "vhdtool")     # the one of this environment


def post_processor_lines(hcl: str, variables: dict[str, str]) -> list[str]:
    """The inline commands of the example's shell-local post-processor, variables substituted."""
    block = re.search(r'post-processor "shell-local" \{\s*inline = \[(.*?)\n\s*\]', hcl, re.S)
    assert block, "no shell-local post-processor in the example"
    lines = [json.loads(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', block.group(1))]
    defaults = dict(re.findall(r'variable "(\w+)" \{[^}]*?default\s*=\s*"([^"]*)"', hcl, re.S))
    values = {**defaults, **variables}
    return [re.sub(r"\$\{var\.(\w+)\}", lambda m: values[m.group(1)], line) for line in lines]


def test_example_runs_fix_then_manifest() -> None:
    lines = post_processor_lines(EXAMPLE.read_text(), {"output_dir": "out", "vhdtool": "vhdtool"})
    assert [line.split()[1] for line in lines] == ["fix", "manifest"]
    assert "--generalize out/disk.raw out/disk.vhd" in lines[0]
    assert "--format text " in lines[0] and "sarif:out/check.sarif" in lines[0] and "junit:out/check.junit.xml" in lines[0]
    assert "-o out/manifest.json --commands" in lines[1]


def build(image: Path, out: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``packer build`` of the example (or its post-processor's commands when Packer is absent)."""
    variables = {"source_image": str(image), "output_dir": str(out), "accelerator": "tcg",
                 "vhdtool": VHDTOOL}
    if shutil.which("packer"):
        argv = ["packer", "build", "-color=false"]
        for k, v in variables.items():
            argv += ["-var", f"{k}={v}"]
        return subprocess.run(argv + [str(EXAMPLE)], capture_output=True, text=True, cwd=tmp,
                              timeout=900)
    out.mkdir()
    subprocess.run(["cp", "--sparse=always", str(image), str(out / "disk.raw")], check=True)
    script = "\n".join(post_processor_lines(EXAMPLE.read_text(), variables))
    return subprocess.run(["sh", "-e", "-c", script], capture_output=True, text=True,
                          timeout=900)



@pytest.mark.slow
@pytest.mark.guestfs
def test_packer_example_end_to_end(fixture_image, tmp_path: Path) -> None:
    image = fixture_image("good")
    out = tmp_path / "out"
    res = build(image, out, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert subprocess.run(["cmp", str(image), str(out / "disk.raw")]).returncode == 0, \
        "the builder must not have booted (changed) the prepared image"
    vhd = out / "disk.vhd"
    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, SCHEMA)
    assert manifest["file"]["upload_size_bytes"] == vhd.stat().st_size
    sha = subprocess.run(["sha256sum", str(vhd)], capture_output=True, text=True).stdout.split()[0]
    assert manifest["file"]["sha256"] == sha
    assert manifest["upload"]["ready"] and manifest["gallery"]["osState"]["value"] == "Generalized"
    assert manifest["file"]["digests_from"] == "computed"     # of the fixed VHD, by manifest
    md5 = subprocess.run(["md5sum", str(vhd)], capture_output=True, text=True).stdout.split()[0]
    assert manifest["file"]["md5"] == md5
    sarif = json.loads((out / "check.sarif").read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"] is not None
    assert (out / "check.junit.xml").read_text().startswith("<?xml")
    upload = (out / "upload.sh").read_text()
    assert f"--upload-size-bytes {vhd.stat().st_size}" in upload
    subprocess.run(["bash", "-n", str(out / "upload.sh")], check=True)


@pytest.mark.slow
@pytest.mark.guestfs
def test_packer_example_fails_the_build_on_a_failing_check(fixture_image, tmp_path: Path) -> None:
    """udf-blacklisted fails guest.drivers.udf (an error): check exits 1, the build fails there."""
    out = tmp_path / "out"
    res = build(fixture_image("udf-blacklisted"), out, tmp_path)
    log = res.stdout + res.stderr
    assert res.returncode != 0
    assert "guest.drivers.udf" in log and "install udf /bin/true" in log   # the text report
    # the step after the failing check never ran: one guest opened (check's, by whichever engine
    # --engine auto chose), no manifest
    assert log.count("vhdtool: guest engine: ") == 1, log[-3000:]
    assert not (out / "manifest.json").exists()
