"""``pip install 'vhdtool[native]'`` into a plain venv (no system site-packages, so no Debian
python3-guestfs) runs the whole catalog, guest checks included, with the native engine (slow:
creates a venv and installs from PyPI)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def build_wheel(out: Path) -> Path:
    """The wheel of this tree; it must hold nothing but vhdtool/ (formats and checks inside it,
    the schemas too) and its .dist-info."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(REPO)], check=True, capture_output=True)
    [wheel] = out.glob("vhdtool-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"vhdtool", wheel.name.split("-py3")[0]
                                                 + ".dist-info"}, sorted(names)[:20]
    for needed in ("vhdtool/formats/vhdx.py", "vhdtool/checks/gallery/rules.py",
                   "vhdtool/schemas/check-report.schema.json",
                   "vhdtool/schemas/manifest.schema.json", "vhdtool/convert/engine.py"):
        assert needed in names, needed
    return wheel


def test_plain_venv_runs_the_full_catalog_natively(tmp_path: Path, fixture_image,
                                                   sample) -> None:
    image = fixture_image("good")
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    probe = subprocess.run([str(py), "-c", "import guestfs"], capture_output=True)
    assert probe.returncode != 0, "the plain venv must not see python3-guestfs"
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"{wheel}[native]"], check=True,
                   capture_output=True)
    vhdtool = str(venv / "bin" / "vhdtool")
    version = subprocess.run([vhdtool, "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("vhdtool, version ")
    listed = subprocess.run([vhdtool, "checks", "list"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert listed.returncode == 0 and "disk.structure" in listed.stdout
    hyperv = sample("hyperv2012r2-dynamic.vhd")
    res = subprocess.run([vhdtool, "check", "--no-guest", "--format", "json", str(hyperv)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1, res.stderr          # a dynamic VHD: disk.convert.needed
    assert {r["id"]: r["verdict"] for r in json.loads(res.stdout)["results"]}[
        "disk.convert.needed"] == "fail"
    report = tmp_path / "report.json"
    res = subprocess.run([vhdtool, "check", "--guest", str(image),
                          "--format", f"json:{report}"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 1, res.stderr           # raw, not a fixed VHD: disk findings only
    data = json.loads(report.read_text())
    assert data["guest_engine"]["name"] == "native", data["guest_engine"]
    verdicts = {r["id"]: r["verdict"] for r in data["results"]}
    assert len(verdicts) == len(__import__("vhdtool.checks").checks.load())
    assert not [cid for cid, v in verdicts.items() if v == "error"]
    guest = {cid: v for cid, v in verdicts.items() if cid.startswith("guest.")}
    assert sum(v == "pass" for v in guest.values()) >= 20, guest
    assert not [cid for cid, v in guest.items() if v == "fail"]      # the good image
    # --engine guestfs in that venv: exit 4 (missing tool) with the reason
    res = subprocess.run([str(venv / "bin" / "vhdtool"), "check", "--guest", "--engine",
                          "guestfs", str(image)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 4 and "libguestfs" in res.stderr
