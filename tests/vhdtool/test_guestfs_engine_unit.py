"""The libguestfs engine's failure paths, without launching an appliance."""

from __future__ import annotations

import builtins

import pytest

from checks.catalog import Profile
from vhdtool import guestfs_engine as ge
from vhdtool.exitcodes import Exit


def test_missing_bindings_is_exit_4(monkeypatch, tmp_path) -> None:
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "guestfs":
            raise ImportError("no guestfs")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    img = tmp_path / "x.raw"
    img.write_bytes(b"\0" * 1024)
    with pytest.raises(ge.GuestEngineUnavailable, match="python3-guestfs") as e:
        ge.run_guest_checks(str(img), "raw", Profile(), progress=False)
    assert e.value.exit_code == Exit.MISSING_TOOL == 4


def test_format_is_named_never_probed(tmp_path) -> None:
    img = tmp_path / "x.img"
    img.write_bytes(b"\0" * 1024)
    with pytest.raises(ge.GuestEngineError, match="cannot open format 'auto'"):
        ge.run_guest_checks(str(img), "auto", Profile(), progress=False)
    assert ge.QEMU_FORMATS["vhd"] == "vpc"


def test_missing_appliance_is_exit_4(monkeypatch, tmp_path) -> None:
    """No appliance on LIBGUESTFS_PATH: every backend fails at once -> GuestEngineUnavailable."""
    monkeypatch.setenv("LIBGUESTFS_PATH", str(tmp_path))
    img = tmp_path / "x.raw"
    img.write_bytes(b"\0" * (1 << 20))
    with pytest.raises(ge.GuestEngineUnavailable, match="appliance could not start.*supermin"):
        ge.run_guest_checks(str(img), "raw", Profile(), progress=False, timeout=60)


# -- `vhdtool check`: the guest engine is on by default ---------------------------------------------

@pytest.fixture
def no_appliance(monkeypatch, tmp_path):
    """libguestfs finds no appliance: any launch attempt fails at once."""
    monkeypatch.setenv("LIBGUESTFS_PATH", str(tmp_path))


@pytest.fixture(scope="module")
def hybrid_vhd(tmp_path_factory):
    from tests.vhdtool.images import MiB, gpt_hybrid, wrap_fixed
    d = tmp_path_factory.mktemp("g")
    return str(wrap_fixed(gpt_hybrid(d / "h.raw", 40 * MiB), d / "h.vhd"))


def test_check_without_appliance_is_exit_4_naming_no_guest(no_appliance, hybrid_vhd) -> None:
    from click.testing import CliRunner

    from vhdtool.cli import cli
    res = CliRunner().invoke(cli, ["check", hybrid_vhd])
    assert res.exit_code == Exit.MISSING_TOOL, res.output
    assert "appliance could not start" in res.output
    assert f"vhdtool check --no-guest {hybrid_vhd}" in res.output
    disk_only = CliRunner().invoke(cli, ["check", "--no-guest", hybrid_vhd])
    assert disk_only.exit_code == Exit.OK, disk_only.output
    assert "disk-only run (--no-guest)" in disk_only.output      # the guest checks' skip reason


@pytest.mark.parametrize("args", [["--select", "disk"], ["--role", "data"],
                                  ["--ignore", "guest"]])
def test_no_launch_when_no_guest_check_applies(no_appliance, hybrid_vhd, args) -> None:
    """With no selected guest check applying to the profile, the appliance is never started
    (here it could not start: a launch attempt would exit 4)."""
    from click.testing import CliRunner

    from vhdtool.cli import cli
    before = ge.LAUNCHES
    res = CliRunner().invoke(cli, ["check", hybrid_vhd, *args])
    assert res.exit_code == Exit.OK, res.output
    assert ge.LAUNCHES == before and "appliance" not in res.output
