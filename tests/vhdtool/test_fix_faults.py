"""``vhdtool fix`` faults, without an appliance: the temporary folder of a SIGKILLed run removed by
later runs (never a live run's), Ctrl-C and SIGTERM raised deterministically from inside the commit
of the fixes and the conversion (no DST, no temporary file, SRC unchanged, 130/143), a signal
after DST got its name (DST complete, and said so), and the exit codes of ``--diff``.

The runs select ``disk.convert.needed`` alone, so no guest is opened; the commit phase is reached
by handing ``fix`` a one-change plan."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vhdtool import atomicfile, fixrun, signals
from vhdtool.checks.fixes import Applied, Delete, Fix, OverlayView, Plan, Safety
from vhdtool.cli import cli
from vhdtool.exitcodes import Exit

from .images import MiB, raw_disk

DISK_ONLY = ("--select", "disk.convert.needed", "--no-progress")


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def fix_folders(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.vhdtool-*.fix"))


def invoke(*args: str):
    return CliRunner().invoke(cli, ["fix", *args])


def one_change_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fix`` plans one deletion whatever the run found (the before run opens no guest)."""
    def plan(results, ctx, **_kw):
        overlay = OverlayView(ctx.guest.view)
        overlay.operations.append(Delete("/root/.bash_history"))  # as if the file were there
        return Plan(overlay, [Applied("guest.deprovision.history",
                                      Fix("deletes histories", Safety.SAFE, lambda c, r: []),
                                      (Delete("/root/.bash_history"),))])
    monkeypatch.setattr(fixrun, "plan_fixes", plan)


# -- a dead run's temporary folder ---------------------------------------------------------------
KILLED = """
import os, signal, sys
from vhdtool import atomicfile
fd, folder = atomicfile.create_work_folder(sys.argv[1])
with open(os.path.join(folder, "overlay.qcow2"), "wb") as f:
    f.write(b"q" * 65536)
print(folder, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_fix_folder(dst: Path) -> Path:
    """The temporary folder of a writer SIGKILLed while it held it (its lock died with it)."""
    proc = subprocess.run([sys.executable, "-c", KILLED, str(dst)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = Path(proc.stdout.strip())
    assert folder.is_dir() and (folder / "overlay.qcow2").exists()
    return folder


def test_a_killed_fix_folder_is_removed_by_a_later_convert_never_a_live_one(tmp_path: Path) -> None:
    dead = killed_fix_folder(tmp_path / "out.vhd")
    fd, live = atomicfile.create_work_folder(str(tmp_path / "other.vhd"))
    try:
        small = raw_disk(tmp_path / "small.raw", MiB)
        res = subprocess.run([sys.executable, "-m", "vhdtool", "convert", "--json", str(small),
                              str(tmp_path / "small.vhd")], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        removed = [w for w in json.loads(res.stdout)["warnings"] if "temporary folder" in w]
        assert len(removed) == 1 and removed[0].startswith(
            f"removed {dead}, a temporary folder of out.vhd left by vhdtool process ")
        assert "which is gone (" in removed[0] and "bytes allocated)" in removed[0]
        assert not dead.exists() and Path(live).is_dir()
    finally:
        atomicfile.remove_work_folder(fd, live)
    assert names(tmp_path) == ["small.raw", "small.vhd"]


def test_a_killed_fix_folder_is_removed_by_a_later_fix(tmp_path: Path) -> None:
    dead = killed_fix_folder(tmp_path / "out.vhd")
    fd, live = atomicfile.create_work_folder(str(tmp_path / "other.vhd"))
    try:
        src = raw_disk(tmp_path / "d.raw", 4 * MiB)
        r = invoke(str(src), str(tmp_path / "out.vhd"), *DISK_ONLY)
        assert r.exit_code == Exit.OK, r.output
        assert not dead.exists() and Path(live).is_dir()
    finally:
        atomicfile.remove_work_folder(fd, live)
    assert names(tmp_path) == ["d.raw", "out.vhd"]


def test_a_live_work_folder_is_locked_and_removed_with_its_contents(tmp_path: Path) -> None:
    fd, folder = atomicfile.create_work_folder(str(tmp_path / "x.vhd"))
    (Path(folder) / "sub").mkdir()
    (Path(folder) / "sub" / "f").write_bytes(b"x")
    assert atomicfile.remove_stale(str(tmp_path)) == [] and Path(folder).is_dir()
    atomicfile.remove_work_folder(fd, folder)
    assert names(tmp_path) == []


def test_a_symlink_named_like_a_work_folder_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep").write_bytes(b"k")
    link = tmp_path / ".x.vhd.vhdtool-999999.abcdefgh.fix"
    link.symlink_to(target)
    assert atomicfile.remove_stale(str(tmp_path)) == []
    assert link.is_symlink() and (target / "keep").read_bytes() == b"k"


# -- signals inside the run ----------------------------------------------------------------------
SIGNALS = [pytest.param(KeyboardInterrupt, Exit.INTERRUPTED, id="ctrl-c"),
           pytest.param(lambda: signals.Terminated(signal.SIGTERM), Exit.TERMINATED,
                        id="sigterm")]


def assert_clean(tmp_path: Path, src: Path, before: tuple[str, int], r, code: int) -> None:
    assert r.exit_code == code, r.output
    assert "vhdtool: interrupted (" in r.stderr and "complete" not in r.stderr
    assert names(tmp_path) == [src.name]         # no DST, no overlay, no partial file
    assert fingerprint(src) == before


@pytest.mark.parametrize("raise_it,code", SIGNALS)
def test_a_signal_while_the_fixes_are_committed(tmp_path: Path, monkeypatch, raise_it,
                                                code: int) -> None:
    src = raw_disk(tmp_path / "d.raw", 4 * MiB)
    before = fingerprint(src)
    one_change_plan(monkeypatch)
    seen = []

    class View:
        def remove(self, path: str) -> None:
            [folder] = fix_folders(tmp_path)
            (folder / "overlay.qcow2").write_bytes(b"half-written overlay")
            seen.append(path)
            raise raise_it()
    monkeypatch.setattr(fixrun.OverlayEngine, "view", lambda self: View())
    r = invoke(str(src), str(tmp_path / "out.vhd"), *DISK_ONLY)
    assert seen == ["/root/.bash_history"], "the commit was not reached: nothing was tested"
    assert_clean(tmp_path, src, before, r, code)


@pytest.mark.parametrize("raise_it,code", SIGNALS)
def test_a_signal_during_the_conversion(tmp_path: Path, monkeypatch, raise_it, code: int) -> None:
    from vhdtool.convert import run as convert_run
    src = raw_disk(tmp_path / "d.raw", 4 * MiB)
    before = fingerprint(src)
    seen = []

    def verify_footer(*_a):         # called once every byte is copied, before the rename
        [folder] = fix_folders(tmp_path)
        seen.extend(p.name for p in folder.iterdir())
        raise raise_it()
    monkeypatch.setattr(convert_run, "verify_footer", verify_footer)
    r = invoke(str(src), str(tmp_path / "out.vhd"), *DISK_ONLY)
    assert [n for n in seen if n.endswith(".part")], "no partial file yet: nothing was tested"
    assert_clean(tmp_path, src, before, r, code)


def sigterm_after_naming(tmp_path: Path, monkeypatch, which: str):
    """Run ``fix`` with SIGTERM sent once a file got its name: DST (``which="dst"``) or the
    conversion's output in the temporary folder (``"tmp"``).  Sent while the name is given, the
    signal is held back and raised when that block ends, as a real one would be."""
    src = raw_disk(tmp_path / "d.raw", 4 * MiB)
    dst = tmp_path / "out.vhd"
    real = atomicfile.publish

    def publish(tmp: str, final: str, replace: bool) -> None:
        real(tmp, final, replace)
        if (final == str(dst)) == (which == "dst"):
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(atomicfile, "publish", publish)
    old = signal.signal(signal.SIGTERM, signals._raise)
    try:
        before = fingerprint(src)
        return src, dst, before, invoke(str(src), str(dst), *DISK_ONLY)
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_signal_after_dst_got_its_name_says_dst_is_complete(tmp_path: Path,
                                                               monkeypatch) -> None:
    src, dst, before, r = sigterm_after_naming(tmp_path, monkeypatch, "dst")
    assert r.exit_code == Exit.TERMINATED, r.output
    assert f"interrupted (SIGTERM) after {dst} was complete" in r.stderr
    assert names(tmp_path) == ["d.raw", "out.vhd"]
    assert dst.stat().st_size == 4 * MiB + 512
    assert dst.read_bytes()[-512:].startswith(b"conectix")
    assert fingerprint(src) == before


def test_a_signal_once_the_conversion_is_complete_in_the_temporary_folder(tmp_path: Path,
                                                                          monkeypatch) -> None:
    """The conversion names its output in the temporary folder: a signal then is before DST."""
    src, _dst, before, r = sigterm_after_naming(tmp_path, monkeypatch, "tmp")
    assert_clean(tmp_path, src, before, r, Exit.TERMINATED)


# -- --diff --------------------------------------------------------------------------------------
def test_diff_exits_0_when_nothing_would_change(tmp_path: Path) -> None:
    src = raw_disk(tmp_path / "d.raw", 4 * MiB)
    r = invoke(str(src), str(tmp_path / "out.vhd"), "--diff", *DISK_ONLY)
    assert r.exit_code == Exit.OK, r.output
    assert r.stdout == "(nothing to change)\n"
    assert names(tmp_path) == ["d.raw"]


def test_diff_exits_1_when_a_fix_would_change_the_image(tmp_path: Path, monkeypatch) -> None:
    src = raw_disk(tmp_path / "d.raw", 4 * MiB)
    one_change_plan(monkeypatch)
    r = invoke(str(src), str(tmp_path / "out.vhd"), "--diff", *DISK_ONLY)
    assert r.exit_code == Exit.CHANGES == 1, r.output
    assert r.stdout == "delete /root/.bash_history\n"
    assert names(tmp_path) == ["d.raw"]
