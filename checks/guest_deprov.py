"""Guest checks: the generalized (deprovisioned) state.

A generalized image must not carry the identity or the secrets of the machine it was built on:
what ``waagent -deprovision+user`` and ``cloud-init clean --logs --machine-id`` remove.  The
checks that find any entry of some directories a leftover are one table (:data:`LEFTOVERS`).

References:
  - :mod:`checks.sources`: WALinuxAgent ``azurelinuxagent/pa/deprovision/default.py`` (WA-DP),
    cloud-init ``cmd/clean.py`` (CI-CLEAN), the Marketplace certification tests (MKT), Azure
    "Prepare a Linux VHD" (GEN).
  - shadow(5) (``!``/``*`` locked fields), login.defs(5) (``UID_MIN``), machine-id(5)
    (``uninitialized``).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, replace

from .catalog import (GENERALIZED, Applies, CheckFunc, Context, Example, Finding, NotApplicable,
                      Severity, check)
from . import fixes_deprov as fx
from .fixes import Change, Delete, Fix, Safety
from .guest import Guest
from .provisioning import cloudinit_provisions
from .cloudinit import cloud_config
from .examples import symlink
from .guestlib import guest, home_dirs, parse_keyvalue, waagent_conf, where
from .netconfig import nic_configs, rewritten_on_boot
from .tables import Row, declare

GEN = Applies(os_states=frozenset({GENERALIZED}))
SSH_DIR = "/etc/ssh"


def _entries(g: Guest, directory: str, pattern: str = r".+") -> list[Finding]:
    return [Finding(f"{p} is left from the build machine", p, fix=f"delete {p}")
            for p in g.glob(directory, pattern)]


def _leftovers(g: Guest, places: tuple[tuple[str, str], ...]) -> list[Finding]:
    return [f for directory, pattern in places for f in _entries(g, directory, pattern)]


HOST_KEYS = ((SSH_DIR, r"ssh_host_.*key.*"),)


@dataclass(frozen=True, kw_only=True)
class Leftovers(Row):
    """Files the build machine leaves that deprovisioning deletes: any entry is a finding."""

    #: (directory, regular expression of the entry names) where the leftovers lie
    places: tuple[tuple[str, str], ...]
    applies: Applies = GEN


LEFTOVERS = (
    Leftovers(
        id="guest.deprovision.ssh-host-keys", title="No SSH host keys",
        severity=Severity.WARNING, error_when=frozenset({"marketplace"}),
        rationale="Host keys baked into an image are those of the build machine; a generalized "
                  "image should not carry them even when the provisioner regenerates them.",
        source=("WA-DP", "CI-CLEAN"),
        remediation="rm -f /etc/ssh/ssh_host_*key* before capture (waagent -deprovision does "
                    "it).",
        passes=(Example("baseline"),),
        fails=(Example("keys left, cloud-init regenerates them",
                       files={"/etc/ssh/ssh_host_ed25519_key": "k"}),),
        places=HOST_KEYS, fix=fx.HOST_KEYS),
    Leftovers(
        id="guest.deprovision.waagent-state", title="No waagent state", severity=Severity.ERROR,
        rationale="/var/lib/waagent of a provisioned VM holds 'provisioned' (the agent then "
                  "skips provisioning: the deployment times out), ovf-env.xml (with the admin "
                  "password hash), the transport private key and goal state.",
        source=("WA-DP", "WA-PROV", "WA-706"),
        remediation="waagent -deprovision (or rm -rf /var/lib/waagent/*) before capture.",
        passes=(Example("absent", files={"/var/lib/waagent": None}),),
        fails=(Example("provisioned marker", files={"/var/lib/waagent/provisioned": ""}),
               Example("ovf-env.xml",
                       files={"/var/lib/waagent/ovf-env.xml": "<Environment/>"})),
        places=(("/var/lib/waagent", r".+"),)),
    Leftovers(
        id="guest.deprovision.cloudinit-state", title="No cloud-init instance state",
        severity=Severity.ERROR,
        rationale="With /var/lib/cloud/instance(s) present cloud-init believes it already ran "
                  "(per-instance modules are skipped); a seed/azure/ovf-env.xml is read before "
                  "the real provisioning media.",
        source=("CI-CLEAN", "CI: the seed directory is searched first"),
        remediation="cloud-init clean --logs --seed before capture.",
        passes=(Example("empty /var/lib/cloud", files={"/var/lib/cloud": None}),),
        fails=(Example("instance dir",
                       files={"/var/lib/cloud/instances/abc/boot-finished": "1"}),
               Example("seed ovf-env.xml",
                       files={"/var/lib/cloud/seed/azure/ovf-env.xml": "<Environment/>"})),
        places=(("/var/lib/cloud", r"instance|instances|data|sem|handlers|scripts"),
                ("/var/lib/cloud/seed/azure", r"ovf-env\.xml"))),
    Leftovers(
        id="guest.deprovision.dhcp-leases", title="No DHCP leases", severity=Severity.WARNING,
        rationale="A stale lease makes the client request the build machine's address first.",
        source=("WA-DP",),
        remediation="Delete the lease files before capture.",
        passes=(Example("baseline"),),
        fails=(Example("dhclient lease",
                       files={"/var/lib/dhcp/dhclient.eth0.leases": "lease {}"}),),
        places=(("/var/lib/dhcp", r".+\.leases?"), ("/var/lib/dhclient", r".+\.leases?"),
                ("/var/lib/dhcpcd", r".+\.lease6?"), ("/var/lib/NetworkManager", r".+\.lease"),
                ("/var/lib/systemd/network", r".+"))),
    Leftovers(
        id="guest.deprovision.logs", title="No provisioning logs", severity=Severity.WARNING,
        rationale="Agent and cloud-init logs of the build VM confuse support and leak its "
                  "details.",
        source=("WA-DP", "GEN", "CI-CLEAN: --logs"),
        remediation="cloud-init clean --logs; rm -rf /var/log/waagent.log /var/log/azure.",
        passes=(Example("baseline"),),
        fails=(Example("waagent.log", files={"/var/log/waagent.log": "x"}),
               Example("cloud-init log", files={"/var/log/cloud-init.log": "x"})),
        places=(("/var/log", r"waagent\.log.*|cloud-init.*\.log.*|azure"),)),
)


def _delete_leftovers(row: Leftovers) -> Fix:
    def plan(ctx: Context, _result: object) -> list[Change]:
        return [Delete(f.evidence) for f in _leftovers(guest(ctx), row.places) if f.evidence]
    return Fix(f"deletes {' and '.join(d for d, _ in row.places)} entries left from the build "
               "machine", Safety.SAFE, plan, deprovision=True)


def _leftovers_check(row: Leftovers) -> CheckFunc:
    def func(ctx: Context) -> list[Finding]:
        return _leftovers(guest(ctx), row.places)
    return func


declare([replace(row, fix=row.fix or _delete_leftovers(row)) for row in LEFTOVERS],
        _leftovers_check)


NO_CI_WAAGENT_KEEPS_KEYS = {
    "/etc/cloud": None, "/usr/bin/cloud-init": None,
    "/etc/systemd/system/cloud-init.target.wants": None,
    "/etc/waagent.conf": "Provisioning.Agent=waagent\nProvisioning.RegenerateSshHostKeyPair=n\n",
    "/etc/ssh/ssh_host_ed25519_key": "k", "/etc/ssh/ssh_host_ed25519_key.pub": "p"}


@check(id="guest.deprovision.ssh-host-keys-shared", title="SSH host keys are regenerated per VM",
       severity=Severity.ERROR, applies=GEN,
       rationale="Host keys in the image that no provisioner regenerates are shared by every VM "
                 "made from it (one can impersonate another). cloud-init (ssh_deletekeys, default "
                 "true) regenerates them; waagent only with "
                 "Provisioning.RegenerateSshHostKeyPair=y.",
       source=("WA-DP", "WA-CONF", "CI: ssh_deletekeys"),
       remediation="Delete /etc/ssh/ssh_host_*key*, or set "
                   "Provisioning.RegenerateSshHostKeyPair=y.",
       passes=[Example("keys present but cloud-init regenerates them",
                       files={"/etc/ssh/ssh_host_ed25519_key": "k"}),
               Example("waagent regenerates them", files={
                   **NO_CI_WAAGENT_KEEPS_KEYS, "/etc/waagent.conf":
                       "Provisioning.Agent=waagent\nProvisioning.RegenerateSshHostKeyPair=y\n"})],
       fails=[Example("waagent provisions without regenerating keys",
                      files=NO_CI_WAAGENT_KEEPS_KEYS)],
       fix=fx.REGENERATE)
def ssh_host_keys_shared(ctx: Context) -> list[Finding]:
    cfg = cloud_config(ctx)
    if cloudinit_provisions(ctx) and cfg and cfg.merged.get("ssh_deletekeys", True) is not False:
        return []
    conf = waagent_conf(ctx) or {}
    regen = conf.get("Provisioning.RegenerateSshHostKeyPair")
    if regen and regen.value.lower() == "y":
        return []
    return _leftovers(guest(ctx), HOST_KEYS)


@check(id="guest.deprovision.machine-id", title="machine-id is empty or uninitialized",
       severity=Severity.WARNING, applies=GEN,
       rationale="A baked machine-id is shared by every clone: DHCP client ids, journald and "
                 "systemd-networkd identities collide.",
       source=("CI-CLEAN: --machine-id",),
       remediation="truncate -s 0 /etc/machine-id (or write 'uninitialized').",
       passes=[Example("uninitialized", files={"/etc/machine-id": "uninitialized\n"}),
               Example("absent", files={"/etc/machine-id": None})],
       fails=[Example("a real id",
                      files={"/etc/machine-id": "4c4c4544004d3510804bb4c04f4e4d32\n"})],
       fix=fx.MACHINE_ID)
def machine_id(ctx: Context) -> list[Finding]:
    text = guest(ctx).read_text("/etc/machine-id", 4096)
    if text is None or text.strip() in ("", "uninitialized"):
        return []
    return [Finding(f"machine-id is set ({text.strip()[:32]})", "/etc/machine-id:1",
                    fix="truncate -s 0 /etc/machine-id")]


HISTORIES = (".bash_history", ".zsh_history", ".python_history", ".mysql_history",
             ".psql_history", ".lesshst", ".viminfo")


@check(id="guest.deprovision.history", title="No shell histories", severity=Severity.WARNING,
       applies=GEN, error_when=("marketplace",),
       rationale="Shell histories leak the build commands and sometimes secrets; Marketplace "
                 "fails when a history is over 1 KB.",
       source=("MKT: test 48", "WA-DP"),
       remediation="Delete the files and run 'export HISTSIZE=0' before capture.",
       passes=[Example("baseline")],
       fails=[Example("root history", files={"/root/.bash_history": "apt install x\n"}),
              Example("user history", files={"/home/build/.bash_history": "ls\n"})],
       fix=fx.HISTORY)
def history(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    out = []
    for home in home_dirs(g):
        for name in HISTORIES:
            p = f"{home}/{name}"
            st = g.stat(p)
            if st and st.is_reg:
                out.append(Finding(f"{p} ({st.size} bytes)", p, fix=f"delete {p}"))
    return out


@check(id="guest.deprovision.authorized-keys", title="No authorized_keys nor private keys",
       severity=Severity.ERROR, applies=GEN,
       rationale="A baked authorized_keys lets whoever built the image log into every VM made from "
                 "it; private keys in a home directory are secrets.",
       source=("GEN", "MKT"),
       remediation="Delete ~/.ssh/authorized_keys and ~/.ssh/id_* of root and every user.",
       passes=[Example("public key only", files={"/root/.ssh/known_hosts": "h"})],
       fails=[Example("root authorized_keys",
                      files={"/root/.ssh/authorized_keys": "ssh-ed25519 A"}),
              Example("user private key", files={"/home/build/.ssh/id_ed25519": "-----BEGIN"})],
       fix=fx.KEYS)
def authorized_keys(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    out = []
    for home in home_dirs(g):
        out += _entries(g, f"{home}/.ssh", r"authorized_keys2?|id_[a-z0-9]+")
    return [f for f in out if not f.evidence or not f.evidence.endswith(".pub")]


def _login_defs(g: Guest) -> tuple[int, int]:
    vals = parse_keyvalue(g, "/etc/login.defs", sep=" ")
    lo = vals.get("UID_MIN")
    hi = vals.get("UID_MAX")
    return (int(lo.value) if lo and lo.value.isdigit() else 1000,
            int(hi.value) if hi and hi.value.isdigit() else 60000)


@check(id="guest.deprovision.users", title="No leftover users", severity=Severity.WARNING,
       applies=GEN, error_when=("marketplace",),
       rationale="Build users (UID_MIN..UID_MAX) and their homes survive into every VM; waagent "
                 "-deprovision+user removes only the provisioned user.",
       source=("WA-DP", "GEN"),
       remediation="userdel -r <user> before capture.",
       passes=[Example("system users only")],
       fails=[Example("build user", files={
           "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"
                          "build:x:1000:1000:,,,:/home/build:/bin/bash\n",
           "/home/build/.profile": ""})],
       fix=fx.USERS)
def users(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    lo, hi = _login_defs(g)
    out = []
    known = set()
    for no, line in g.lines("/etc/passwd"):
        f = line.split(":")
        if len(f) >= 6 and f[2].isdigit() and lo <= int(f[2]) <= hi:
            known.add(f[5])
            out.append(Finding(f"user {f[0]} (uid {f[2]})", where("/etc/passwd", no),
                               fix=f"userdel -r {f[0]}"))
    for home in g.list_dir("/home"):
        p = posixpath.join("/home", home)
        if p not in known and g.is_dir(p):
            out.append(Finding(f"home directory {p} of no user", p, fix=f"rm -rf {p}"))
    return out


def _usable_hash(field: str) -> bool:
    return bool(field) and not field.startswith(("!", "*")) and field not in ("x", "LK")


@check(id="guest.deprovision.root-password", title="No usable passwords", severity=Severity.WARNING,
       applies=GEN, error_when=("marketplace",),
       rationale="A root password or any usable password hash in the image is a default credential "
                 "on every VM made from it.",
       source=("WA-DP: DeleteRootPassword", "MKT"),
       remediation="passwd -l root (and every account); Azure sets the admin credentials.",
       passes=[Example("root locked with the waagent marker",
                       files={"/etc/shadow": "root:*LOCK*:14600::::::\n"})],
       fails=[Example("root password",
                      files={"/etc/shadow": "root:$6$salt$hash:19700:0:99999:7:::\n"}),
              Example("empty password",
                      files={"/etc/shadow": "root:*:1::::::\nguest::19700::::::\n"})],
       fix=fx.ROOT_PASSWORD)
def root_password(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    if not g.exists("/etc/shadow"):
        raise NotApplicable("no /etc/shadow")
    out = []
    for no, line in g.lines("/etc/shadow"):
        f = line.split(":")
        if len(f) >= 2 and (f[1] == "" or _usable_hash(f[1])):
            what = "an empty password" if f[1] == "" else "a usable password hash"
            out.append(Finding(f"{f[0]} has {what}", where("/etc/shadow", no),
                               fix=f"passwd -l {f[0]}"))
    return out


NET_RULES = r"70-persistent-net\.rules|75-persistent-net-generator\.rules"
#: a udev rule naming an interface after its MAC address (what 70-persistent-net.rules holds)
MAC_NAME_RULE = re.compile(r'ATTR\{address\}\s*==\s*"[0-9a-fA-F:?*]+".*\bNAME\s*:?=')
NM_ETH0 = "/etc/NetworkManager/system-connections/eth0.nmconnection"
#: what cloud-init renders on Ubuntu for the build VM's NIC (bound to its MAC)
CI_NETPLAN = ("# This file is generated from information provided by the datasource.  Changes\n"
              "# to it will not persist across an instance reboot.\n"
              "network:\n  ethernets:\n    eth0:\n      dhcp4: true\n      match:\n"
              "        macaddress: 00:0d:3a:12:34:56\n      set-name: eth0\n  version: 2\n")


def _mac_links(g: Guest) -> list[Finding]:
    """systemd .link files renaming the interface of one MAC (systemd.link(5) [Match])."""
    out = []
    for p in g.glob("/etc/systemd/network", r".+\.link"):
        for no, line in g.lines(p):
            if re.match(r"(Permanent)?MACAddress\s*=\s*\S", line):
                out.append(Finding(f"systemd link file matches '{line}'", where(p, no)))
    return out


@check(id="guest.deprovision.net-rules", title="No network configuration bound to a MAC",
       severity=Severity.WARNING,
       rationale="Rules or configurations bound to the build machine's MAC address leave the new "
                 "VM's NIC unconfigured or misnamed (it gets another MAC): udev persistent-net "
                 "rules, netplan 'match: macaddress', NetworkManager 'mac-address=', "
                 "systemd-networkd/link 'MACAddress=', ifcfg 'HWADDR='. A specialized disk "
                 "attached to a new VM gets a new MAC too.",
       source=("WA-PROV", "PROVE", "LISA: verify_udev_rules_moved",
               "GCE-TR: 70-persistent-net.rules deleted"),
       remediation="Delete 70-persistent-net.rules and the HWADDR=/macaddress/mac-address lines "
                   "(match by name, or by driver hv_netvsc).",
       passes=[Example("baseline"),
               Example("cloud-init's netplan file, rendered again on boot",
                       files={"/etc/netplan/50-cloud-init.yaml": CI_NETPLAN}),
               Example("NetworkManager keyfile bound to eth0 by name", files={
                   NM_ETH0: "[connection]\nid=eth0\ntype=ethernet\ninterface-name=eth0\n"
                            "[ipv4]\nmethod=auto\n"})],
       fails=[Example("udev persistent rules", files={
           "/etc/udev/rules.d/70-persistent-net.rules": 'SUBSYSTEM=="net", NAME="eth0"\n'}),
           Example("a MAC-naming rule in another rules file", files={
               "/etc/udev/rules.d/60-net.rules": 'SUBSYSTEM=="net", ACTION=="add", '
                                                 'ATTR{address}=="00:15:5d:00:00:01", '
                                                 'NAME="eth0"\n'}),
           Example("ifcfg HWADDR", files={
               "/etc/sysconfig/network-scripts/ifcfg-eth0":
                   "DEVICE=eth0\nHWADDR=00:15:5d:00:00:01\n"}),
           Example("netplan match: macaddress, cloud-init's network disabled", files={
               "/etc/cloud/cloud.cfg.d/99-disable-network-config.cfg":
                   "network: {config: disabled}\n",
               "/etc/netplan/50-cloud-init.yaml": CI_NETPLAN}),
           Example("netplan match: macaddress, written by hand", files={
               "/etc/netplan/01-eth0.yaml":
                   "network:\n  ethernets:\n    eth0:\n      match:\n"
                   "        macaddress: '00:15:5d:00:00:01'\n      set-name: eth0\n"
                   "      dhcp4: true\n"}),
           Example("NetworkManager mac-address=", files={
               NM_ETH0: "[connection]\nid=eth0\ntype=ethernet\n[ethernet]\n"
                        "mac-address=00:15:5D:00:00:01\n[ipv4]\nmethod=auto\n"}),
           Example("systemd .link by MACAddress", files={
               "/etc/systemd/network/10-eth0.link": "[Match]\nMACAddress=00:15:5d:00:00:01\n"
                                                    "[Link]\nName=eth0\n"})],
       fix=fx.NET_RULES)
def net_rules(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    out = _entries(g, "/etc/udev/rules.d", NET_RULES)
    for p in g.glob("/etc/udev/rules.d", r".+\.rules"):
        if not re.fullmatch(NET_RULES, posixpath.basename(p)):
            out += [Finding(f"udev rule names an interface by MAC: {line[:80]}", where(p, no))
                    for no, line in g.lines(p) if MAC_NAME_RULE.search(line)]
    for p in g.glob("/etc/sysconfig/network-scripts", r"ifcfg-.+"):
        for no, line in g.lines(p):
            if line.upper().startswith(("HWADDR=", "MACADDR=")):
                out.append(Finding(f"{line} binds the NIC to a MAC", where(p, no)))
    for p in g.glob("/etc/netplan", r".+\.ya?ml"):
        if rewritten_on_boot(ctx, p):
            continue
        for no, line in g.lines(p):
            if line.startswith("macaddress:"):
                out.append(Finding(f"netplan '{line}' binds the NIC to a MAC", where(p, no)))
    out += [Finding(f"{c.stack} profile bound to MAC {c.mac}", c.evidence)
            for c in nic_configs(ctx) if c.mac and c.stack in ("NetworkManager", "networkd")
            and not rewritten_on_boot(ctx, c.path)]
    return out + _mac_links(g)


RESOLV = "/etc/resolv.conf"


@check(id="guest.deprovision.resolv-conf", title="No static resolv.conf of the build network",
       severity=Severity.WARNING, applies=GEN,
       rationale="A regular /etc/resolv.conf with nameserver lines holds the build network's DNS "
                 "servers; waagent -deprovision deletes it so the VM's DHCP client or resolver "
                 "writes Azure's (168.63.129.16). Whether it is also immutable (chattr +i, which "
                 "migration tools clear) cannot be seen offline: the guest view does not expose "
                 "inode attributes.",
       source=("WA-DP: del_resolv", "GCE-TR: ClearEtcResolv"),
       remediation="Delete /etc/resolv.conf (or link it to the resolver's file, e.g. "
                   "/run/systemd/resolve/stub-resolv.conf) before capture; chattr -i it first "
                   "if it is immutable.",
       passes=[Example("absent (baseline)"),
               Example("link to systemd-resolved's stub", files={
                   RESOLV: symlink("../run/systemd/resolve/stub-resolv.conf")})],
       fails=[Example("build network's nameserver", files={
           RESOLV: "# Generated by NetworkManager\nsearch corp.example\nnameserver 10.0.0.2\n"})])
def resolv_conf(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    st = g.lstat(RESOLV)
    if st is None or not st.is_reg:
        return []
    servers = [(no, line) for no, line in g.lines(RESOLV) if line.split()[0] == "nameserver"]
    return [Finding(f"{RESOLV} is a static file with '{line}'", where(RESOLV, no),
                    fix=f"delete {RESOLV} before capture") for no, line in servers[:1]]
