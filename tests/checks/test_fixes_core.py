"""The fix machinery on the fake guest: plans compose in the overlay, nothing is written before
commit, commit replays exactly the overlay's operations, the diff shows them."""

from __future__ import annotations

from vhdtool import checks
from vhdtool.checks.catalog import Example, Verdict, run_catalog
from vhdtool.checks.examples import context_for
from vhdtool.checks.fixes import (Delete, OverlayView, Symlink, WriteFile, commit, plan_fixes,
                                  refreshed, render_diff)
from vhdtool.checks.guest import Guest

checks.load()


def test_overlay_reads_through_and_layers_changes() -> None:
    ctx = context_for(Example("keys", files={"/etc/ssh/ssh_host_rsa_key": "k"}))
    base = ctx.guest.view
    ov = OverlayView(base)
    ov.apply(WriteFile("/etc/new/dir/file", b"x\n"))
    ov.apply(Delete("/etc/ssh/ssh_host_rsa_key"))
    ov.apply(Symlink("/etc/link", "/etc/new/dir/file"))
    g = Guest(ov)
    assert g.read_text("/etc/link") == "x\n"
    assert "ssh_host_rsa_key" not in g.list_dir("/etc/ssh")
    assert "new" in g.list_dir("/etc")
    assert base.lstat("/etc/new/dir/file") is None          # the base is untouched
    assert Guest(base).read_text("/etc/ssh/ssh_host_rsa_key") == "k"


def test_deprovision_leftovers_fixed_on_overlay_and_recheck_passes() -> None:
    ex = Example("leftovers", files={"/var/lib/waagent/provisioned": "",
                                     "/var/log/waagent.log": "x"})
    ctx = context_for(ex)
    before = {r.check.id: r.verdict for r in run_catalog(ctx)}
    assert before["guest.deprovision.waagent-state"] is Verdict.FAIL
    plan = plan_fixes(run_catalog(ctx), ctx)
    assert {a.check_id for a in plan.applied} == {"guest.deprovision.waagent-state",
                                                   "guest.deprovision.logs"}
    after_ctx = context_for(ex)
    after_ctx.guest = refreshed(after_ctx.guest, plan.overlay)
    after = {r.check.id: r.verdict for r in run_catalog(after_ctx)}
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"guest.deprovision.waagent-state", "guest.deprovision.logs"}
    assert all(after[k] is Verdict.PASS for k in changed)
    diff = render_diff(plan)
    assert "delete /var/lib/waagent/provisioned" in diff
    assert "delete /var/log/waagent.log" in diff


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def write_file(self, path, data, mode=0o644):
        self.calls.append(("write", path, data))

    def remove(self, path):
        self.calls.append(("rm", path))

    def symlink(self, target, path):
        self.calls.append(("ln", target, path))

    def make_dir(self, path):
        self.calls.append(("mkdir", path))

    def run(self, argv, timeout):
        self.calls.append(("run", tuple(argv)))
        return ""


def test_commit_replays_operations_in_order() -> None:
    ctx = context_for(Example("log", files={"/var/log/waagent.log": "x"}))
    plan = plan_fixes(run_catalog(ctx), ctx)
    rec = Recorder()
    commit(plan, rec)
    assert rec.calls == [("rm", "/var/log/waagent.log")]
