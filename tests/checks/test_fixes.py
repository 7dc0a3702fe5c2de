"""Every catalog fix on the fake guest: on each `fails` example of its check, the planned changes
make the check pass and change no other check's verdict (re-run of the whole catalog over the
overlay); safe fixes only without --unsafe-fixes; nothing planned where the check passes; the
grub fix's diff is a unified diff that patch(1) applies to the very result."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from vhdtool import checks
from vhdtool.checks.catalog import Example, Verdict, run_catalog
from vhdtool.checks.examples import context_for
from vhdtool.checks.fixes import (Plan, RunProgram, Safety, WriteFile, plan_fixes, refreshed,
                                  render_diff)
from vhdtool.checks.guest import Guest
from vhdtool.checks.guest_deprov import NO_CI_WAAGENT_KEEPS_KEYS

CATALOG = checks.load()
FIXABLE = sorted((c for c in CATALOG.values() if c.fix is not None), key=lambda c: c.id)
CASES = [(c, e) for c in FIXABLE for e in c.fails]
IDS = [f"{c.id}-{e.summary}" for c, e in CASES]

#: fixes that take effect only through a guest program (the initramfs rebuild) the fake guest
#: cannot run: their plan is checked for the config change and the program; the real-image test
#: of `vhdtool fix` boots the result
NEEDS_PROGRAM = {"guest.drivers.hyperv-initramfs", "guest.drivers.nvme"}
#: (check, example) no offline fix can put right: the reason the plan gives
NOT_FIXABLE = {
    ("guest.drivers.udf", "udf missing"): "install the kernel's modules",
    ("guest.drivers.nvme", "neither"): "install a kernel that has them",
    ("guest.waagent.enabled", "not installed"): "waagent is not installed",
    ("guest.sshd.present", "sshd not installed"): "sshd is not installed",
    ("guest.deprovision.net-rules", "netplan match: macaddress, cloud-init's network disabled"):
        "rewrite its match by hand",
    ("guest.deprovision.net-rules", "netplan match: macaddress, written by hand"):
        "rewrite its match by hand",
}
#: (check, example) -> the other checks that see the same defect, which the fix puts right too
ALSO_FIXES = {
    ("guest.provisioner.present", "no cloud-init and waagent not enabled"):
        {"guest.waagent.enabled"},
    ("guest.provisioner.present", "cloud-init disabled by marker, waagent defers to cloud-init"):
        {"guest.cloudinit.datasource", "guest.network.dhcp"},
    # cloud-init enabled again writes eth0's DHCP configuration at boot
    ("guest.cloudinit.datasource", "cloud-init disabled"): {"guest.provisioner.present",
                                                            "guest.network.dhcp"},
    ("guest.cloudinit.datasource", "NoCloud only"): {"guest.provisioner.present"},
}


def _plan(chk, ex, **opts) -> tuple[dict, Plan]:
    ctx = context_for(ex)
    before = {r.check.id: r for r in run_catalog(ctx)}
    assert before[chk.id].verdict is Verdict.FAIL
    return before, plan_fixes([before[chk.id]], ctx, **opts)


@pytest.mark.parametrize("chk,ex", CASES, ids=IDS)
def test_fix_puts_the_failure_right(chk, ex) -> None:
    before, plan = _plan(chk, ex, unsafe=True, generalize=True)
    key = (chk.id, ex.summary)
    if key in NOT_FIXABLE:
        assert not plan.applied and not plan.overlay.changed
        assert [n.check_id for n in plan.not_applied] == [chk.id]
        assert NOT_FIXABLE[key] in plan.not_applied[0].reason
        return
    assert [a.check_id for a in plan.applied] == [chk.id], plan.not_applied
    assert plan.overlay.operations
    if chk.id in NEEDS_PROGRAM:
        argv = [p.argv for p in plan.overlay.programs]
        assert argv and all(a[0] == "update-initramfs" for a in argv)
        written = {op.path: op.data.decode() for op in plan.overlay.operations
                   if isinstance(op, WriteFile)}
        wanted = chk.fix.summary.split("adds ", 1)[1].split(" to ", 1)[0].split(", ")
        assert all(m in written["/etc/initramfs-tools/modules"].split() for m in wanted)
        return
    after_ctx = context_for(ex)
    after_ctx.guest = refreshed(after_ctx.guest, plan.overlay)
    after = {r.check.id: r for r in run_catalog(after_ctx)}
    assert after[chk.id].verdict is Verdict.PASS, after[chk.id].findings
    changed = {k for k in after if k != chk.id and after[k].verdict != before[k].verdict}
    assert changed == ALSO_FIXES.get(key, set()), {k: after[k].findings for k in changed}
    assert all(before[k].verdict is Verdict.FAIL and after[k].verdict is Verdict.PASS
               for k in changed)


def test_declared_exceptions_are_used() -> None:
    keys = {(c.id, e.summary) for c, e in CASES}
    assert set(NOT_FIXABLE) <= keys and set(ALSO_FIXES) <= keys
    assert NEEDS_PROGRAM <= {c.id for c in FIXABLE}


@pytest.mark.parametrize("chk,ex", CASES, ids=IDS)
def test_safe_run_applies_only_safe_fixes(chk, ex) -> None:
    _, plan = _plan(chk, ex)
    if plan.applied:
        assert chk.fix.safety is Safety.SAFE
    elif chk.fix.safety is Safety.UNSAFE or "unsafe" in plan.not_applied[0].reason:
        assert "--unsafe-fixes" in plan.not_applied[0].reason
    _, gen = _plan(chk, ex, generalize=True)
    if chk.fix.deprovision and (chk.id, ex.summary) not in NOT_FIXABLE:
        assert [a.check_id for a in gen.applied] == [chk.id]


def test_escalated_safe_fix_waits_for_unsafe() -> None:
    chk = CATALOG["guest.cloudinit.datasource"]
    ex = next(e for e in chk.fails if e.summary == "cloud-init disabled")
    _, plan = _plan(chk, ex)
    assert not plan.applied and "cloud-init is switched off" in plan.not_applied[0].reason
    ex = next(e for e in chk.fails if e.summary == "NoCloud only")
    _, plan = _plan(chk, ex)
    assert [a.check_id for a in plan.applied] == [chk.id]


PASSING = [(c, e) for c in FIXABLE for e in (None, *c.passes)]


@pytest.mark.parametrize("chk,ex", PASSING,
                         ids=[f"{c.id}-{e.summary if e else 'baseline'}" for c, e in PASSING])
def test_nothing_planned_where_the_check_passes(chk, ex) -> None:
    ctx = context_for(ex)
    result = next(r for r in run_catalog(ctx, select=[chk.id]) if r.check.id == chk.id)
    assert result.verdict in (Verdict.PASS, Verdict.SKIP)
    if result.verdict is Verdict.PASS:
        assert chk.fix.plan(ctx, result) == []


def test_grub_diff_applies_with_patch(tmp_path: Path) -> None:
    chk = CATALOG["guest.cmdline.console"]
    ex = next(e for e in chk.fails if e.summary == "only tty0")
    _, plan = _plan(chk, ex, unsafe=True)
    base = Guest(plan.overlay.base)
    paths = [op.path for op in plan.overlay.operations]
    assert paths == ["/etc/default/grub", "/boot/grub/grub.cfg"]
    for p in paths:
        (tmp_path / p.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p.lstrip("/")).write_bytes(base.read_file(p))
    diff = render_diff(plan)
    assert diff.startswith("--- a/etc/default/grub\n+++ b/etc/default/grub\n@@ ")
    subprocess.run(["patch", "-p1", "--quiet", "--batch"], input=diff.encode(), cwd=tmp_path,
                   check=True)
    over = Guest(plan.overlay)
    for p in paths:
        assert (tmp_path / p.lstrip("/")).read_bytes() == over.read_file(p)
    assert 'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0"' in over.read_text(paths[0])
    assert over.read_text(paths[1]).splitlines()[1].endswith("ro console=tty0 console=ttyS0")


def test_initramfs_fix_creates_missing_initramfs() -> None:
    chk = CATALOG["guest.drivers.hyperv-initramfs"]
    ex = next(e for e in chk.fails if e.summary == "no initramfs")
    _, plan = _plan(chk, ex, unsafe=True)
    progs = [p for p in plan.overlay.programs if isinstance(p, RunProgram)]
    assert [p.argv[:3] for p in progs] == [("update-initramfs", "-c", "-k")]


def _one(check_id: str, files: dict, **opts) -> Plan:
    ctx = context_for(Example("case", files=files))
    result = next(r for r in run_catalog(ctx, select=[check_id]) if r.check.id == check_id)
    assert result.verdict is Verdict.FAIL
    return plan_fixes([result], ctx, **opts)


def test_host_keys_deleted_only_with_a_regenerator() -> None:
    keys = {"/etc/ssh/ssh_host_ed25519_key": "k", "/etc/ssh/ssh_host_ed25519_key.pub": "p"}
    waagent = {**NO_CI_WAAGENT_KEEPS_KEYS, **keys}
    plan = _one("guest.deprovision.ssh-host-keys", waagent)
    over = Guest(plan.overlay)
    assert "Provisioning.RegenerateSshHostKeyPair=y" in over.read_text("/etc/waagent.conf")
    assert not over.exists("/etc/ssh/ssh_host_ed25519_key")
    nobody = {**waagent, "/etc/systemd/system/multi-user.target.wants/walinuxagent.service": None}
    plan = _one("guest.deprovision.ssh-host-keys", nobody)
    assert not plan.applied and "no provisioner" in plan.not_applied[0].reason
    assert not plan.overlay.changed


def test_users_removed_as_userdel_does() -> None:
    files = {"/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"
                            "build:x:1000:1000:,,,:/home/build:/bin/bash\n",
             "/etc/shadow": "root:*:19700:0:99999:7:::\nbuild:$6$x$y:19700:0:99999:7:::\n",
             "/etc/group": "root:x:0:\nsudo:x:27:build\nadm:x:4:syslog,build\n"
                           "build:x:1000:\n",
             "/etc/gshadow": "root:*::\nsudo:*:build:build\nbuild:!::\n",
             "/etc/sudoers.d/waagent": "build ALL=(ALL) NOPASSWD: ALL\n",
             "/home/build/.profile": "", "/home/stale/.profile": ""}
    plan = _one("guest.deprovision.users", files, generalize=True)
    g = Guest(plan.overlay)
    assert g.read_text("/etc/passwd") == "root:x:0:0:root:/root:/bin/bash\n"
    assert g.read_text("/etc/shadow") == "root:*:19700:0:99999:7:::\n"
    assert g.read_text("/etc/group") == "root:x:0:\nsudo:x:27:\nadm:x:4:syslog\n"
    assert g.read_text("/etc/gshadow") == "root:*::\nsudo:*::\n"
    assert g.read_text("/etc/sudoers.d/waagent") == ""
    assert not g.exists("/home/build") and not g.exists("/home/stale")


def test_dracut_guest_gets_add_drivers_and_regenerate_all() -> None:
    chk = CATALOG["guest.drivers.hyperv-initramfs"]
    ex = next(e for e in chk.fails if e.summary.startswith("initramfs built"))
    files = {**ex.files, "/usr/sbin/update-initramfs": None, "/usr/bin/dracut": "#!/bin/sh\n"}
    plan = _one(chk.id, files, unsafe=True)
    ops = {op.path: op.data for op in plan.overlay.operations}
    assert ops == {"/etc/dracut.conf.d/90-vhdtool-hyperv.conf":
                   b'add_drivers+=" hv_vmbus hv_storvsc hv_netvsc "\n'}
    assert [p.argv for p in plan.overlay.programs] == [("dracut", "--force", "--regenerate-all")]


ENV = b"# GRUB Environment Block\nkernelopts=root=/dev/sda1 ro\n"


def test_cmdline_fix_covers_bls_and_kernel_cmdline() -> None:
    files = {"/boot/loader/entries/x.conf": "title x\noptions root=/dev/sda1 ro\n",
             "/etc/kernel/cmdline": "root=/dev/sda1 ro\n",
             "/etc/default/grub": 'GRUB_TIMEOUT=1\n', "/boot/grub/grub.cfg": None,
             "/boot/grub2/grubenv": ENV.ljust(1024, b"#")}
    plan = _one("guest.cmdline.console", files, unsafe=True)
    g = Guest(plan.overlay)
    env = g.read_file("/boot/grub2/grubenv")
    assert len(env) == 1024 and env.rstrip(b"#") == ENV.replace(b"ro\n", b"ro console=ttyS0\n")
    assert g.read_text("/boot/loader/entries/x.conf") == \
        "title x\noptions root=/dev/sda1 ro console=ttyS0\n"
    assert g.read_text("/etc/kernel/cmdline") == "root=/dev/sda1 ro console=ttyS0\n"
    assert g.read_text("/etc/default/grub") == \
        'GRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX="console=ttyS0"\n'


def test_docs_show_every_fix_or_say_none() -> None:
    from vhdtool.catalogdoc import show
    for c in CATALOG.values():
        line = next(ln for ln in show(c).splitlines() if ln.startswith("automatic fix: "))
        if c.fix is None:
            assert "no automatic fix" in line
        else:
            assert c.fix.summary in line and str(c.fix.safety) in line


def test_fixes_editing_one_file_compose() -> None:
    mp = frozenset({"marketplace"})
    ctx = context_for(Example("bare grub", profile={"features": mp}, files={
        "/etc/default/grub": 'GRUB_CMDLINE_LINUX="quiet"\n',
        "/boot/grub/grub.cfg": "menuentry 'x' {\n\tlinux\t/boot/vmlinuz ro quiet\n}\n"}))
    plan = plan_fixes(run_catalog(ctx, select=["guest.cmdline"]), ctx, unsafe=True)
    assert [a.check_id for a in plan.applied] == ["guest.cmdline.console",
                                                  "guest.cmdline.rootdelay"]
    g = Guest(plan.overlay)
    assert g.read_text("/etc/default/grub") == \
        'GRUB_CMDLINE_LINUX="quiet console=ttyS0 earlyprintk=ttyS0 rootdelay=300"\n'
    after = replace(ctx, guest=refreshed(ctx.guest, plan.overlay), memo={})
    assert all(r.verdict is not Verdict.FAIL
               for r in run_catalog(after, select=["guest.cmdline"]))
