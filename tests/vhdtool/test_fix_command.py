"""``vhdtool fix`` without an appliance: refusals before any work (usage, an existing DST, an
unreadable image), the writable view's errors and time-out, what a failure is attributed to, and
the before -> after outcomes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vhdtool import checks
from vhdtool.checks.catalog import Profile, Result, Severity, Verdict
from vhdtool.checks.fixes import (Applied, Delete, Fix, FixError, NotApplied, OverlayView, Plan,
                                  RunProgram, Safety, WriteFile)
from vhdtool.cli import cli
from vhdtool.exitcodes import Exit
from vhdtool.fixreport import FIXED, NEW, NOT_FIXABLE, STILL_FAILING, outcomes
from vhdtool.fixrun import FixRun, owners
from vhdtool.guestfs_view import GuestfsWritableView

from .images import MiB, raw_disk


def invoke(*args: str):
    return CliRunner().invoke(cli, ["fix", *args])


def test_generalize_and_specialized_is_a_usage_error(tmp_path: Path) -> None:
    src = raw_disk(tmp_path / "d.raw", MiB)
    r = invoke(str(src), str(tmp_path / "o.vhd"), "--generalize", "--os-state", "specialized")
    assert r.exit_code == Exit.USAGE and "--generalize" in r.stderr


def test_an_existing_dst_is_refused_before_anything(tmp_path: Path) -> None:
    src = raw_disk(tmp_path / "d.raw", MiB)
    dst = tmp_path / "o.vhd"
    dst.write_bytes(b"keep")
    r = invoke(str(src), str(dst))
    assert r.exit_code == Exit.CONVERT_FAILED and "--force" in r.stderr
    assert dst.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.raw", "o.vhd"]


def test_an_unreadable_image_is_exit_3_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "bad.vhd"
    src.write_bytes(b"conectix" + b"\0" * 1000)     # a footer cookie at offset 0, truncated
    r = invoke(str(src), str(tmp_path / "o.vhd"), "-f", "vpc")
    assert r.exit_code == Exit.BAD_IMAGE, r.stderr
    assert "bad.vhd" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.vhd"]


class FakeHandle:
    """The libguestfs calls the writable view makes; ``fail`` names one that raises."""

    def __init__(self, fail: str = "", sleep: float = 0.0) -> None:
        self.fail, self.sleep, self.calls = fail, sleep, []

    def __getattr__(self, name: str):
        def call(*args):
            self.calls.append((name, *args))
            if name == "lstatns":
                raise RuntimeError("lstatns: No such file or directory")
            if name == self.fail:
                time.sleep(self.sleep)
                raise RuntimeError(f"{name}: No space left on device\nmore")
            return ""
        return call


def test_view_write_of_a_new_file_sets_its_mode() -> None:
    g = FakeHandle()
    GuestfsWritableView(g).write_file("/etc/new", b"x", 0o600)
    assert g.calls[-2:] == [("write", "/etc/new", b"x"), ("chmod", 0o600, "/etc/new")]


def test_view_errors_are_fix_errors_naming_the_file() -> None:
    with pytest.raises(FixError, match=r"cannot write /etc/x: write: No space left on device$"):
        GuestfsWritableView(FakeHandle("write")).write_file("/etc/x", b"data")
    with pytest.raises(FixError, match="cannot delete /var/lib/waagent"):
        GuestfsWritableView(FakeHandle("rm_rf")).remove("/var/lib/waagent")


def test_view_run_is_bounded_by_the_guests_timeout_and_says_so() -> None:
    g = FakeHandle("command", sleep=1.05)
    with pytest.raises(FixError, match=r"update-initramfs -u: timed out after 1 s"):
        GuestfsWritableView(g).run(["update-initramfs", "-u"], 1)
    assert g.calls[-1][1] == ["timeout", "-s", "KILL", "1", "update-initramfs", "-u"]
    with pytest.raises(FixError, match=r"^false: failed in the guest"):
        GuestfsWritableView(FakeHandle("command")).run(["false"], 60)


def _fix(summary: str, safety: Safety = Safety.SAFE) -> Fix:
    return Fix(summary, safety, lambda ctx, r: [])


def test_a_failure_is_attributed_to_the_fix_that_touched_it() -> None:
    plan = Plan(OverlayView(None),  # type: ignore[arg-type]
                [Applied("a.logs", _fix("a"), (Delete("/var/log/waagent.log"),)),
                 Applied("b.keys", _fix("b"), (Delete("/etc/ssh"),)),
                 Applied("c.initramfs", _fix("c"), (RunProgram(("update-initramfs", "-u"), "x"),
                                                    WriteFile("/etc/x", b"")))])
    assert owners(plan, "/var/log/waagent.log") == ["a.logs"]
    assert owners(plan, "/etc/ssh/ssh_host_rsa_key") == ["b.keys"]
    assert owners(plan, "update-initramfs -u") == ["c.initramfs"]
    assert owners(plan, "/elsewhere") == ["a.logs", "b.keys", "c.initramfs"]


def _results(verdicts: dict[str, Verdict]) -> list[Result]:
    catalog = checks.load()
    return [Result(catalog[cid], v, Severity.WARNING) for cid, v in verdicts.items()]


def test_outcomes_before_and_after() -> None:
    from vhdtool.pipeline import CheckRun
    ids = sorted(checks.load())
    fixed, unfixable, still, new, ok, conv = (ids[i] for i in range(6))
    conv = "disk.convert.needed"
    before = _results({fixed: Verdict.FAIL, unfixable: Verdict.FAIL, still: Verdict.FAIL,
                       new: Verdict.PASS, ok: Verdict.PASS, conv: Verdict.FAIL})
    after = _results({fixed: Verdict.PASS, unfixable: Verdict.FAIL, still: Verdict.FAIL,
                      new: Verdict.FAIL, ok: Verdict.PASS, conv: Verdict.PASS})
    plan = Plan(OverlayView(None),  # type: ignore[arg-type]
                [Applied(fixed, _fix("f"), ()), Applied(still, _fix("s"), ())],
                [NotApplied(unfixable, "unsafe fix: pass --unsafe-fixes to apply it")])

    def run(results):
        return CheckRun("x", Profile(), None, frozenset(), frozenset(), results)  # type: ignore
    got = {o.check_id: (o.status, o.detail) for o in outcomes(FixRun(run(before), plan,
                                                                      after=run(after)))}
    assert got == {fixed: (FIXED, "by its fix (safe)"),
                   unfixable: (NOT_FIXABLE, "unsafe fix: pass --unsafe-fixes to apply it"),
                   still: (STILL_FAILING, "its fix was applied; the re-check still fails it"),
                   new: (NEW, "passed on the source, fails on the fixed image"),
                   conv: (FIXED, "by the conversion")}
