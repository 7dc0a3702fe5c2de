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
