"""The libguestfs engine's failure paths, without launching an appliance."""

from __future__ import annotations

import builtins

import pytest

from vhdtool.checks.catalog import Profile
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


# -- `vhdtool check`: the guest engine is on by default -----------------------------------------

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
    disk_only = CliRunner().invoke(cli, ["check", "--no-guest", "--show-skipped", hybrid_vhd])
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


def test_pipeline_engine_protocol(hybrid_vhd) -> None:
    """The pipeline calls the engine once, closes it once, passes its skip reason on (no Linux
    root) and fills the timing's checks seconds."""
    from vhdtool.checks.catalog import Verdict
    from vhdtool.pipeline import run

    class Engine:
        def __init__(self) -> None:
            self.calls, self.closed = [], 0
            self.skip_reason = None
            self.timing = ge.Timing(launch=9.0, inspect=1.0, backend="TCG")

        def __call__(self, path, facts):
            self.calls.append((path, facts.format))
            self.skip_reason = f"{path}: no Linux root filesystem found on the disk"
            return None

        def close(self) -> None:
            self.closed += 1

    eng = Engine()
    r = run(hybrid_vhd, Profile(), guest_engine=eng)
    assert eng.calls == [(hybrid_vhd, "vpc")] and eng.closed == 1
    guest = [x for x in r.results if x.check.needs == "guest"
             and x.check.applies.why_not(r.profile, r.generations) is None]
    assert guest and all(x.verdict is Verdict.SKIP and "no Linux root" in x.reason for x in guest)
    opened = next(x for x in r.results if x.check.id == "guest.opened")
    assert opened.verdict is Verdict.FAIL and "no Linux root" in opened.findings[0].message
    assert r.extra["guest_timing"] is eng.timing
    assert eng.timing.checks == r.extra["checks_seconds"] > 0
    assert "appliance launch 9.0 s (TCG)" in eng.timing.describe()


def test_image_qemu_cannot_open_is_a_clear_error(tmp_path) -> None:
    """qemu-img refuses the drive when libguestfs adds it (before any launch): a GuestEngineError
    naming the file and the format, never a bare RuntimeError."""
    img = tmp_path / "zero.qcow2"
    img.write_bytes(b"\0" * (1 << 20))
    with pytest.raises(ge.GuestEngineError, match=r"zero\.qcow2: qemu cannot open the image as "
                                                  r"qcow2"):
        ge.run_guest_checks(str(img), "qcow2", Profile(), progress=False, timeout=60)


@pytest.mark.parametrize("exc, skipped", [
    (ge.NoLinuxRoot("d.raw: no Linux root filesystem found on the disk"), "no Linux root"),
    (RuntimeError("guestfsd: appliance died\ndetails"), "libguestfs failed: guestfsd: appliance"),
    (ge.GuestEngineUnavailable("no appliance"), None)])
def test_engine_failures_skip_or_exit_4(monkeypatch, exc, skipped) -> None:
    def fail(*a, **kw):
        raise exc
    monkeypatch.setattr(ge, "open_guest", fail)
    eng = ge.GuestfsEngine(progress=False)
    if skipped is None:
        with pytest.raises(ge.GuestEngineUnavailable):
            eng("d.raw", None)
        return
    assert eng("d.raw", None) is None and skipped in eng.skip_reason


class _Handle:
    """The few libguestfs calls ``filesystems`` makes, recorded."""

    def __init__(self, blkids: dict[str, dict[str, str]], lvs: list[str]) -> None:
        self.blkids, self._lvs, self.calls = blkids, lvs, []

    def list_partitions(self) -> list[str]:
        return [d for d in self.blkids if d.startswith("/dev/sda")]

    def lvs(self) -> list[str]:
        self.calls.append("lvs")
        return self._lvs

    def blkid(self, dev: str) -> dict[str, str]:
        if dev not in self.blkids:
            raise RuntimeError(f"blkid: {dev}: no such device")
        return self.blkids[dev]


@pytest.mark.parametrize("blkids, lvs, scanned, devices", [
    ({"/dev/sda1": {}, "/dev/sda2": {"TYPE": "vfat"}, "/dev/sda3": {"TYPE": "ext4"}},
     [], False, ["/dev/sda2", "/dev/sda3"]),
    ({"/dev/sda1": {"TYPE": "vfat"}, "/dev/sda2": {"TYPE": "LVM2_member"},
      "/dev/vg/root": {"TYPE": "xfs"}}, ["/dev/vg/root"], True,
     ["/dev/sda1", "/dev/sda2", "/dev/vg/root"]),
    ({"/dev/vg/root": {"TYPE": "ext4"}}, ["/dev/vg/root"], True, ["/dev/vg/root"]),
])
def test_lvm_scanned_only_where_a_pv_can_be(blkids, lvs, scanned, devices) -> None:
    g = _Handle(blkids, lvs)
    assert [fs.device for fs in ge.filesystems(g, {})] == devices
    assert (g.calls == ["lvs"]) is scanned
