"""``vhdtool fix`` on the real fixture images (one appliance launch each; each flawed image is
fixed once per module and the result reused): the flawed images lose every finding that has a fix
(or its fix says why the guest is not fixable), the rebuilt initramfs holds the Hyper-V drivers,
both engines agree on the fixed images, the fixed Gen1 image boots under SeaBIOS and a fixed Gen2
image under OVMF and OVMF Secure Boot to a serial login prompt, the good image comes out with SRC's
data byte for byte (qemu-img compare), SRC is never modified (sha256 and mtime), and a fix that
fails or a signal leaves no DST and no temporary file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vhdtool import checks
from vhdtool import guestfs_engine as ge
from vhdtool.checks.fixes import Fix, RunProgram, Safety, WriteFile
from vhdtool.cli import cli
from vhdtool.exitcodes import Exit
from fixtures import boot
from fixtures.recipes import RECIPES
from tests.oracle import qemu_img

pytestmark = [pytest.mark.slow, pytest.mark.guestfs]

#: the images with a planted flaw (the recipes that declare failing checks); the flawless layouts
#: are represented by `good`, which fix leaves byte for byte unchanged
FLAWED = sorted(name for name, recipe in RECIPES.items() if recipe.fails)


def fingerprint(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest(), path.stat().st_mtime_ns


def vhdtool_fix(src: Path, dst: Path, *args: str) -> tuple[int, dict | None, str]:
    """`vhdtool fix SRC DST --format json:REPORT ARGS` in process: (exit, report, stderr); one
    appliance launch at most."""
    report = dst.with_suffix(".report.json")
    before = ge.LAUNCHES
    res = CliRunner().invoke(cli, ["fix", str(src), str(dst), "--format", f"json:{report}",
                                   "--no-progress", *args])
    assert ge.LAUNCHES - before <= 1, "one appliance launch per vhdtool fix"
    doc = json.loads(report.read_text()) if report.exists() else None
    return res.exit_code, doc, res.stderr


def leftovers(folder: Path, *keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p not in keep)


@dataclasses.dataclass(frozen=True)
class Fixed:
    """One `vhdtool fix --unsafe-fixes` of a flawed fixture image (made once per module)."""

    name: str
    src: Path
    src_before: tuple[str, int]
    dst: Path
    code: int
    doc: dict | None
    err: str
    leftovers: list[str]
    seconds: float


@pytest.fixture(scope="module")
def fixed(fixture_image, tmp_path_factory):
    """fixed(name) -> :class:`Fixed`: the fix is run once per image, its DST reused by the
    initramfs, differential and boot tests."""
    done: dict[str, Fixed] = {}

    def get(name: str) -> Fixed:
        if name not in done:
            src = fixture_image(name)
            before = fingerprint(src)
            folder = tmp_path_factory.mktemp(f"fixed-{name}")
            dst = folder / f"{name}.vhd"
            t0 = time.monotonic()
            # fixed as what it is meant to be (a specialized image is not generalized by fix)
            code, doc, err = vhdtool_fix(src, dst, "--unsafe-fixes",
                                         "--os-state", RECIPES[name].os_state)
            took = time.monotonic() - t0
            done[name] = Fixed(name, src, before, dst, code, doc, err,
                               leftovers(folder, dst, dst.with_suffix(".report.json")), took)
        return done[name]
    return get


#: the fixes that declare NotFixable on a fixture image, and why (the reason must say so)
NOT_FIXABLE: dict[str, dict[str, str]] = {
    # both packages purged: nothing to enable, the remediation is installing one
    "no-provisioner": {"guest.provisioner.present": "waagent is not installed",
                       "guest.waagent.enabled": "waagent is not installed"},
    # Debian's waagent conflicts with network-manager: purged, cloud-init provisions
    "networkmanager": {"guest.waagent.enabled": "waagent is not installed"},
    "networkmanager-an": {"guest.waagent.enabled": "waagent is not installed"},
}


@pytest.mark.parametrize("name", FLAWED)
def test_unsafe_fixes_leave_no_fixable_finding(name: str, fixed, record_property) -> None:
    f = fixed(name)
    record_property("fix_seconds", round(f.seconds, 1))
    assert f.code in (Exit.OK, Exit.FINDINGS), f.err
    doc = f.doc
    assert doc is not None and f.dst.exists()
    print(f"{name}: vhdtool fix --unsafe-fixes took {f.seconds:.0f} s, applied "
          f"{[a['id'] for a in doc['fix']['applied']]}")
    catalog = checks.load()
    outcomes = {o["id"]: o for o in doc["fix"]["findings"]}
    refused = {cid: outcomes[cid]["detail"] for cid in outcomes
               if outcomes[cid]["status"] == "not fixable" and catalog[cid].fix is not None}
    expected = NOT_FIXABLE.get(name, {})
    assert set(refused) == set(expected), refused
    for cid, why in expected.items():
        assert why in refused[cid], (cid, refused[cid])
    fixable_failing = [r["id"] for r in doc["results"] if r["verdict"] == "fail"
                       and catalog[r["id"]].fix is not None and r["id"] not in expected]
    assert fixable_failing == [], {cid: outcomes.get(cid) for cid in fixable_failing}
    assert not [o for o in outcomes.values() if o["status"] in ("new failure", "crashed")]
    assert [o for o in outcomes.values() if o["status"] == "still failing"] == []
    if name == "not-deprovisioned":
        assert {cid for cid, o in outcomes.items() if o["status"] == "fixed"} >= {
            "guest.deprovision.ssh-host-keys", "guest.deprovision.waagent-state",
            "guest.deprovision.cloudinit-state"}
    info = json.loads(qemu_img("info", "-f", "vpc", "--output=json", f.dst))
    assert info["virtual-size"] % (1 << 20) == 0
    assert fingerprint(f.src) == f.src_before, "SRC was modified"
    assert f.leftovers == []


def test_good_image_comes_out_unchanged(fixture_image, tmp_path: Path) -> None:
    src = fixture_image("good")
    before = fingerprint(src)
    dst = tmp_path / "good.vhd"
    code, doc, err = vhdtool_fix(src, dst)
    assert code == Exit.OK, err
    assert doc["fix"]["applied"] == []
    # DST's data equals SRC's (the good image is a whole number of MiB: no padding)
    qemu_img("compare", "-f", "raw", "-F", "vpc", src, dst)
    assert fingerprint(src) == before


HYPERV = ("hv_vmbus", "hv_storvsc", "hv_netvsc")


def initramfs_modules(image: Path, fmt: str) -> dict[str, frozenset[str]]:
    """{kernel version: modules of its initramfs} of `image`, read by the native engine and the
    project's initramfs reader (checks/initramfs.py)."""
    from vhdtool.checks.initramfs import read_initramfs
    from vhdtool.native_engine import open_guest

    with open_guest(str(image), fmt) as s:
        kernels = s.guest.facts.kernels
        assert kernels, f"{image}: no kernel found"
        return {k.version: read_initramfs(s.guest.read_file(k.initramfs, 1 << 30) or b"",
                                          k.initramfs).modules
                for k in kernels if k.initramfs} | {k.version: frozenset()
                                                      for k in kernels if not k.initramfs}


@pytest.mark.parametrize("name", ["no-hv-drivers", "dracut-no-hv"])
def test_the_rebuilt_initramfs_has_the_hyperv_drivers(name: str, fixed) -> None:
    """no-hv-drivers (initramfs-tools) and dracut-no-hv (dracut): their initramfs lacks the
    drivers; the fix's update-initramfs or dracut, run inside the appliance, put them into every
    kernel's initramfs of DST."""
    pytest.importorskip("dissect.extfs")
    f = fixed(name)
    assert f.code in (Exit.OK, Exit.FINDINGS), f.err
    before = initramfs_modules(f.src, "raw")
    assert all(not set(HYPERV) & mods for mods in before.values()), before
    after = initramfs_modules(f.dst, "vpc")
    assert set(after) == set(before)
    for version, mods in after.items():
        assert set(HYPERV) <= mods, (version, sorted(m for m in mods if m.startswith("hv")))


#: the fixed images the engines are compared on: every kind of change the fixes make (deleted
#: files, fstab, grub.cfg and defaults, modprobe.d, a rebuilt initramfs, systemd links, config)
DIFFERENTIAL = ["fstab-devname", "no-hv-drivers", "not-deprovisioned", "swap-console",
                "udf-blacklisted"]


@pytest.mark.parametrize("name", DIFFERENTIAL)
def test_engines_agree_on_a_fixed_image(name: str, fixed) -> None:
    pytest.importorskip("dissect.extfs")
    from vhdtool.checks.catalog import Profile
    from vhdtool.native_engine import NativeEngine

    from .differential import differences, findings
    f = fixed(name)
    assert f.code in (Exit.OK, Exit.FINDINGS), f.err
    assert f.doc is not None and f.doc["fix"]["applied"], f"{name}: the fix changed nothing"
    native, native_facts = findings(str(f.dst), NativeEngine(), Profile())
    ref, ref_facts = findings(str(f.dst), ge.GuestfsEngine(progress=False), Profile())
    assert ref_facts is not None
    assert differences(native, ref) == {}
    assert native_facts == ref_facts


def _replace_fix(monkeypatch, cid: str, plan) -> None:
    catalog = checks.load()
    fix = Fix("test-only fault", Safety.SAFE, plan)
    monkeypatch.setitem(catalog, cid, dataclasses.replace(catalog[cid], fix=fix))


def _assert_failed_cleanly(src: Path, before: tuple[str, int], tmp_path: Path, cid: str,
                           named: str) -> None:
    dst = tmp_path / "out.vhd"
    code, doc, err = vhdtool_fix(src, dst)
    assert code == Exit.FIX_FAILED, err
    assert cid in err and named in err
    assert doc is None and not dst.exists()
    assert leftovers(tmp_path, src) == []
    assert fingerprint(src) == before


def test_a_guest_program_that_fails_leaves_nothing(fixture_image, tmp_path: Path,
                                                    monkeypatch) -> None:
    src = fixture_image("not-deprovisioned")
    cid = "guest.deprovision.waagent-state"
    _replace_fix(monkeypatch, cid, lambda ctx, r: [RunProgram(("false",), "test fault")])
    _assert_failed_cleanly(src, fingerprint(src), tmp_path, cid, "false")


def test_a_full_disk_in_the_appliance_leaves_nothing(synthetic_image, tmp_path: Path,
                                                     monkeypatch) -> None:
    uuid = "6f1d0c2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f"
    src = synthetic_image({"etc/fstab": f"UUID={uuid} / ext4 defaults 0 1\n",
                           "etc/os-release": "ID=debian\nVERSION_ID=12\n",
                           "var/log/waagent.log": "provisioned\n"}, root_uuid=uuid, size_mib=32)
    cid = "guest.deprovision.logs"
    _replace_fix(monkeypatch, cid, lambda ctx, r: [      # 3 MiB files until the root is full
        WriteFile(f"/var/tmp/fill-{i}", os.urandom(1) * (3 << 20)) for i in range(16)])
    _assert_failed_cleanly(src, fingerprint(src), tmp_path, cid, "/var/tmp/fill-")


def test_sigterm_during_the_fix_leaves_nothing(fixture_image, tmp_path: Path) -> None:
    src = fixture_image("not-deprovisioned")
    before = fingerprint(src)
    dst = tmp_path / "out.vhd"
    proc = subprocess.Popen([sys.executable, "-m", "vhdtool", "fix", str(src), str(dst),
                             "--no-progress"], stderr=subprocess.PIPE, text=True)
    time.sleep(8)              # the overlay is made and the appliance is starting
    assert leftovers(tmp_path), "no temporary folder beside DST yet: nothing was tested"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == Exit.TERMINATED, err
    assert not dst.exists() and leftovers(tmp_path) == []
    assert fingerprint(src) == before


# -- the fixed images boot (qemu TCG, fixtures/boot.py; a throw-away overlay without rootdelay) ---

BOOTS = [("gen1-mbr", boot.SEABIOS), ("swap-console", boot.OVMF),
         ("swap-console", boot.OVMF_SECURE)]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 missing")
@pytest.mark.parametrize(("name", "firmware"), BOOTS, ids=lambda v: getattr(v, "name", v))
def test_the_fixed_image_boots_to_a_serial_login(name: str, firmware: boot.Firmware, fixed,
                                                 fixture_info, tmp_path: Path,
                                                 record_property) -> None:
    """The fixed image boots as fix left it (only rootdelay=300 taken off, on an overlay): the
    Gen1 MBR image under SeaBIOS, the Gen2 image whose fix edited the kernel command line
    (swap-console: no console=ttyS0 before) under OVMF and OVMF with Secure Boot enforced
    (Debian's signed shim -> grub -> kernel). The login prompt must come on the serial console."""
    if firmware.code is not None and not (firmware.code.exists() and firmware.vars.exists()):
        pytest.skip(f"{firmware.code} missing (Debian package ovmf)")
    f = fixed(name)
    assert f.code in (Exit.OK, Exit.FINDINGS), f.err
    overlay = tmp_path / "overlay.qcow2"
    root = fixture_info(name)["disk"]["filesystems"]["root"]["device"]
    boot.make_overlay(f.dst, root, overlay, fmt="vpc")
    result = boot.boot(overlay, firmware, tmp_path, timeout=420, ready_rx=boot.LOGIN)
    record_property("banner_seconds", result.banner_seconds)
    record_property("ready_seconds", result.ready_seconds)
    print(f"{name} {firmware.name}: banner {result.banner_seconds} s, ready {result.ready_seconds} s")
    log = result.log
    assert result.ok and "login: " in log, f"no serial login prompt:\n{log[-20000:]}"
    cmdline = re.search(r"Command line: (.*)", log)
    assert cmdline and "console=ttyS0" in cmdline.group(1), log[-5000:]
    if firmware.secure_boot:
        assert "Secure boot enabled" in log, log[-20000:]
