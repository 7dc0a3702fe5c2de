"""The installed ``vhdtool`` works outside the source tree (what users run, not what pytest imports).

pytest puts the repository first on sys.path; these run the interpreter of the venv from an empty
folder, so a stale or broken installation (a package missing from the editable install, a module
left out of the wheel's package list) fails here instead of in a user's hands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vhdtool", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("pkg,folder", [("vhdtool.formats", "formats"),
                                        ("vhdtool.checks", "checks"), ("vhdtool", "vhdtool")])
def test_packages_import_from_the_installation(tmp_path: Path, pkg: str, folder: str) -> None:
    code = f"import {pkg}; print({pkg}.__file__)"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # a regular package, not a namespace package made of whatever folder happens to match
    assert p.stdout.strip().endswith(f"{folder}/__init__.py"), p.stdout


@pytest.mark.parametrize("name", ["formats", "checks"])
def test_no_top_level_name_but_vhdtool(tmp_path: Path, name: str) -> None:
    """The installation owns only names under vhdtool: another project's ``formats`` or
    ``checks`` package is not shadowed (outside the source tree nothing answers to them)."""
    p = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "No module named" in p.stderr, p.stdout + p.stderr


def test_wheel_package_list_is_the_tree() -> None:
    """pyproject.toml lists the packages (it must, to map formats/ and checks/ under vhdtool):
    every package folder of the tree is in it, and nothing else."""
    import tomllib
    root = Path(__file__).resolve().parents[2]
    conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {v: k for k, v in conf["package-dir"].items()}
    found = set()
    for top in ("vhdtool", "formats", "checks"):
        for init in (root / top).rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            name = mapping.get(rel.parts[0], rel.parts[0])
            found.add(".".join((name, *rel.parts[1:])))
    assert sorted(conf["packages"]) == sorted(found)


def test_check_and_catalog_run_outside_the_tree(tmp_path: Path) -> None:
    listed = run(tmp_path, "checks", "list")
    assert listed.returncode == 0, listed.stderr
    assert "disk." in listed.stdout
    image = tmp_path / "blank.raw"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    checked = run(tmp_path, "check", "--format", "json", str(image))
    assert "Traceback" not in checked.stderr, checked.stderr
    assert checked.returncode in (0, 1, 2), checked.stderr
    assert '"results"' in checked.stdout
