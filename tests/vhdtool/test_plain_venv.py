"""``pip install 'vhdtool[native]'`` into a plain venv (no system site-packages, so no Debian
python3-guestfs) runs the whole catalog, guest checks included, with the native engine (slow:
creates a venv and installs from PyPI)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_plain_venv_runs_the_full_catalog_natively(tmp_path: Path, fixture_image) -> None:
    image = fixture_image("good")
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    probe = subprocess.run([str(py), "-c", "import guestfs"], capture_output=True)
    assert probe.returncode != 0, "the plain venv must not see python3-guestfs"
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"{REPO}[native]"], check=True,
                   capture_output=True)
    report = tmp_path / "report.json"
    res = subprocess.run([str(venv / "bin" / "vhdtool"), "check", "--guest", str(image),
                          "--format", f"json:{report}"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 1, res.stderr           # raw, not a fixed VHD: disk findings only
    data = json.loads(report.read_text())
    assert data["guest_engine"]["name"] == "native", data["guest_engine"]
    verdicts = {r["id"]: r["verdict"] for r in data["results"]}
    assert len(verdicts) == len(__import__("checks").load())
    assert not [cid for cid, v in verdicts.items() if v == "error"]
    guest = {cid: v for cid, v in verdicts.items() if cid.startswith("guest.")}
    assert sum(v == "pass" for v in guest.values()) >= 20, guest
    assert not [cid for cid, v in guest.items() if v == "fail"]      # the good image
    # --engine guestfs in that venv: exit 4 (missing tool) with the reason
    res = subprocess.run([str(venv / "bin" / "vhdtool"), "check", "--guest", "--engine",
                          "guestfs", str(image)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 4 and "libguestfs" in res.stderr
