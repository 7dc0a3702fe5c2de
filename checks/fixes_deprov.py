"""The fixes of the deprovision checks (:mod:`checks.guest_deprov`): what ``waagent
-deprovision+user`` and ``cloud-init clean --logs --machine-id`` remove, done on the image.

Each plan works from the check's findings on the guest as the earlier fixes left it
(:func:`checks.fixlib.current_findings`).

References:
  - WALinuxAgent ``azurelinuxagent/pa/deprovision/default.py`` (WA-DP): deletes the host keys
    only with ``Provisioning.RegenerateSshHostKeyPair=y``, ``/root/.bash_history``, the leases,
    the last provisioned user (``userdel -r``) and the root password (osutil
    ``del_root_password`` writes ``root:*LOCK*:...`` into /etc/shadow).
  - machine-id(5): an *empty* /etc/machine-id gets a new id at boot without first-boot semantics
    (``uninitialized`` or a missing file would run ``systemctl preset-all``: units enabled or
    disabled, a change of what runs).
  - cloud-init ``cc_ssh``: it generates the missing host keys of ``ssh_genkeytypes`` on the first
    boot of an instance whatever ``ssh_deletekeys`` says; OpenSSH's ``sshd-keygen@.service``
    (Fedora/RHEL) does at every boot.
  - passwd(5), shadow(5), group(5), gshadow(5), subuid(5); userdel(8) (``-r``: home and mail
    spool, the user's private group).
"""

from __future__ import annotations

import posixpath

from .catalog import Context, Result
from .cloudinit import cloud_config
from .fixes import Change, Delete, NotFixable, Safety, WriteFile
from .fixlib import (by_file, cloudcfg_dropin, current_findings, drop_lines, edit_file, fix,
                     line_no, set_key, text_of)
from .guestlib import WAAGENT_CONF, guest, waagent_conf
from .provisioning import cloudinit_provisions, waagent_provisions

SSH_KEYGEN_UNITS = ("/usr/lib/systemd/system/sshd-keygen@.service",
                    "/lib/systemd/system/sshd-keygen@.service")


def _deleted(ctx: Context, result: Result) -> list[Change]:
    return [Delete(f.evidence) for f in current_findings(ctx, result) if f.evidence]


def _waagent_regenerates(ctx: Context) -> bool:
    s = (waagent_conf(ctx) or {}).get("Provisioning.RegenerateSshHostKeyPair")
    return bool(s and s.value.lower() == "y")


def _host_keys(ctx: Context, result: Result) -> list[Change]:
    g = guest(ctx)
    changes: list[Change] = []
    regenerated = cloudinit_provisions(ctx) or any(g.is_file(p) for p in SSH_KEYGEN_UNITS) or (
        waagent_provisions(ctx) and _waagent_regenerates(ctx))
    if not regenerated:
        if not waagent_provisions(ctx):
            raise NotFixable("no provisioner would make new host keys (sshd would not start): "
                             "enable cloud-init or waagent provisioning first")
        changes += edit_file(g, WAAGENT_CONF, set_key("Provisioning.RegenerateSshHostKeyPair",
                                                      "y"))
    return changes + _deleted(ctx, result)


HOST_KEYS = fix("deletes the SSH host keys; when waagent provisions without regenerating them, "
                "sets Provisioning.RegenerateSshHostKeyPair=y so the VM gets new ones (never "
                "applied when no provisioner would)", Safety.SAFE, _host_keys, deprovision=True)


def _regenerate(ctx: Context, _result: Result) -> list[Change]:
    g = guest(ctx)
    if cloudinit_provisions(ctx):
        cfg = cloud_config(ctx)
        origin = cfg.origin.get("ssh_deletekeys") if cfg else None
        return [WriteFile(cloudcfg_dropin(g, origin), b"ssh_deletekeys: true\n")]
    if waagent_provisions(ctx):
        return edit_file(g, WAAGENT_CONF, set_key("Provisioning.RegenerateSshHostKeyPair", "y"))
    raise NotFixable("neither cloud-init nor waagent provisions the image")


REGENERATE = fix("makes the provisioner replace the host keys on each VM: a cloud.cfg.d drop-in "
                 "with 'ssh_deletekeys: true' (cloud-init) or "
                 "Provisioning.RegenerateSshHostKeyPair=y (waagent)", Safety.SAFE, _regenerate)


MACHINE_ID = fix("empties /etc/machine-id (a new id at boot, no first-boot presets), as Debian's "
                 "cloud images ship it", Safety.SAFE,
                 lambda ctx, _r: [WriteFile("/etc/machine-id", b"")], deprovision=True)

HISTORY = fix("deletes the shell and tool histories of root and every home", Safety.SAFE,
              _deleted, deprovision=True)

KEYS = fix("deletes authorized_keys and private keys from root's and every user's ~/.ssh",
           Safety.SAFE, _deleted, deprovision=True)


def _net_rules(ctx: Context, result: Result) -> list[Change]:
    g = guest(ctx)
    found = current_findings(ctx, result)
    if any(line_no(f.evidence) and "/netplan/" in (f.evidence or "") for f in found):
        raise NotFixable("a netplan configuration matches on macaddress: rewrite its match "
                         "by hand")
    # a systemd .link file matching one MAC renames that NIC: its Match without the MAC would
    # rename every NIC, so the whole file goes
    links = {p for p in by_file(found) if p.endswith(".link")}
    out: list[Change] = [Delete(p) for p in sorted(links)]
    out += [Delete(f.evidence) for f in found if f.evidence and not line_no(f.evidence)
            and f.evidence not in links]
    for path, nos in by_file(found).items():
        if path in links:
            continue
        out += edit_file(g, path, lambda ls, nos=set(nos): [
            ln for i, ln in enumerate(ls, 1) if i not in nos])
    return out


NET_RULES = fix("deletes 70-persistent-net.rules and systemd .link files matching a MAC, and the "
                "lines binding a NIC to a MAC (udev rules, ifcfg HWADDR=/MACADDR=, NetworkManager "
                "mac-address=, networkd MACAddress=); a netplan match on macaddress is left to "
                "the author",
                Safety.SAFE, _net_rules)


def _users(ctx: Context, result: Result) -> list[Change]:
    g = guest(ctx)
    passwd = text_of(g, "/etc/passwd").splitlines()
    users, out = {}, []
    for f in current_findings(ctx, result):
        loc = line_no(f.evidence)
        if loc and loc[0] == "/etc/passwd":
            fields = passwd[loc[1] - 1].split(":")
            users[fields[0]] = fields
        elif f.evidence:
            out.append(Delete(f.evidence))
    if not users:
        return out
    kept = [ln.split(":") for ln in passwd if ln.split(":")[0] not in users]
    kept_gids = {f[3] for f in kept if len(f) > 3}
    out += edit_file(g, "/etc/passwd", drop_lines(lambda ln: ln.split(":")[0] in users))
    for path in ("/etc/shadow", "/etc/subuid", "/etc/subgid"):
        if g.is_file(path):
            out += edit_file(g, path, drop_lines(lambda ln: ln.split(":")[0] in users))
    groups = [ln.split(":") for ln in (g.read_text("/etc/group") or "").splitlines()]
    private = {gr[0] for gr in groups if len(gr) == 4 and gr[0] in users
               and gr[2] == users[gr[0]][3] and gr[2] not in kept_gids}
    for path, fields in (("/etc/group", (3,)), ("/etc/gshadow", (2, 3))):
        if g.is_file(path):
            out += edit_file(g, path, lambda ls, fields=fields: _groups(ls, set(users), private,
                                                                         fields))
    for name, f in users.items():
        home = posixpath.normpath(f[5]) if len(f) > 5 and f[5] else ""
        shared = any(len(k) > 5 and posixpath.normpath(k[5]) == home for k in kept)
        if home.startswith("/home/") and not shared and g.lstat(home) is not None:
            out.append(Delete(home))
        out += [Delete(p) for p in (f"/var/mail/{name}", f"/var/spool/mail/{name}")
                if g.lstat(p) is not None]
    for path in g.glob("/etc/sudoers.d", r"[^.~]+"):
        out += edit_file(g, path, drop_lines(lambda ln: ln.split(None, 1)[:1] and
                                             ln.split(None, 1)[0] in users))
    return out


def _groups(lines: list[str], users: set[str], private: set[str],
            member_fields: tuple[int, ...]) -> list[str]:
    """group/gshadow lines without the users' private groups, the users out of member lists."""
    out = []
    for ln in lines:
        body = ln.rstrip("\n")
        f = body.split(":")
        if len(f) == 4 and f[0] in private:
            continue
        if len(f) == 4:
            for i in member_fields:
                f[i] = ",".join(m for m in f[i].split(",") if m and m not in users)
            ln = ":".join(f) + ln[len(body):]
        out.append(ln)
    return out


USERS = fix("deletes the users of UID_MIN..UID_MAX as userdel -r does (passwd, shadow, group, "
            "gshadow, subuid/subgid and sudoers.d lines, home under /home, mail spool) and home "
            "directories of no user", Safety.UNSAFE, _users, deprovision=True)


def _lock(ctx: Context, result: Result) -> list[Change]:
    nos = set(by_file(current_findings(ctx, result)).get("/etc/shadow", []))

    def edit(lines: list[str]) -> list[str]:
        out = []
        for i, ln in enumerate(lines, 1):
            f = ln.split(":")
            if i in nos and len(f) >= 2:
                f[1] = "*LOCK*" if f[0] == "root" else "!"
                ln = ":".join(f)
            out.append(ln)
        return out
    return edit_file(guest(ctx), "/etc/shadow", edit)


ROOT_PASSWORD = fix("removes every usable password hash from /etc/shadow: root's becomes "
                    "'*LOCK*' as waagent -deprovision writes it, other accounts' '!' (locked)",
                    Safety.UNSAFE, _lock, deprovision=True)
