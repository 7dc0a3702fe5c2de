"""Guest checks: services and settings the Azure VM relies on after boot (time, Hyper-V daemons,
sudo, Python for extensions, other clouds' agents, fstab, SELinux relabel).

References:
  - :mod:`checks.sources`: Azure "Time sync for Linux VMs" (TIME), LISA's image-standard and
    time-sync test suites (LISA, LISA-TS), WALinuxAgent/extension issues on a missing Python
    (WA-2921, EXT-361), Google's image translation (GCE-TR), AWS VM Import (AWS-VMIE), Azure
    "Troubleshoot Linux VM device name changes" (DEVN), Red Hat "Using SELinux" (SELINUX).
  - chrony.conf(5): ``refclock PHC``, ``confdir`` (``*.conf`` of each directory), ``include``.
  - sudoers(5): ``Defaults`` option lists (``!`` negates, the last setting wins), ``@include``,
    ``@includedir`` (also spelled ``#include``/``#includedir``; files of the directory ending in
    ``~`` or holding a ``.`` are skipped).
  - fstab(5) and systemd.mount(5) (``nofail``, ``noauto``, ``x-systemd.automount``, ``_netdev``).
  - selinux_config(5) (``SELINUX=``), ``/.autorelabel`` (fixfiles relabels on the next boot).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

from .catalog import Context, Example, Finding, NotApplicable, Severity, check
from .examples import symlink
from .guest import fs_index
from .guestlib import glob_files, guest, units, where, with_includes

WANTS = "/etc/systemd/system/multi-user.target.wants"


def _enabled(unit: str) -> dict[str, str]:
    return {f"{WANTS}/{unit}": symlink(f"/lib/systemd/system/{unit}"),
            f"/lib/systemd/system/{unit}": "[Unit]\n"}


# -- time ----------------------------------------------------------------------------------------------
CHRONY_CONFS = ("/etc/chrony/chrony.conf", "/etc/chrony.conf")
PTP_HYPERV = "/dev/ptp_hyperv"
DEB_CHRONY = "/etc/chrony/chrony.conf"
AZURE_REFCLOCK = f"refclock PHC {PTP_HYPERV} poll 3 dpoll -2 offset 0 stratum 2\n"


def _chrony_lines(ctx: Context) -> tuple[str, list[tuple[str, int, list[str]]]]:
    """(the main file, [(path, line, words)] of it and the files it pulls in)."""
    g = guest(ctx)
    main = next((p for p in CHRONY_CONFS if g.is_file(p)), None)
    if main is None:
        raise NotApplicable("chrony is not installed (no chrony.conf)")

    def included(line: str) -> list[str]:
        words = line.split("#", 1)[0].split()
        if words and words[0] == "confdir":
            return [p for d in words[1:] for p in g.glob(d, r".+\.conf")]
        if words and words[0] == "include" and len(words) > 1:
            return glob_files(g, words[1])
        return []

    out = [(path, no, words) for path, no, line in with_includes(main, g.lines, included)
           if (words := line.split("#", 1)[0].split())]
    return main, out


@check(id="guest.time.ptp", title="chrony syncs from the Hyper-V PTP clock",
       severity=Severity.WARNING,
       rationale="Azure hosts expose their clock as the PTP device /dev/ptp_hyperv; chrony should "
                 "use it as a reference clock (NTP servers may be unreachable, and the host's "
                 "clock is accurate after host maintenance). /dev/ptp0 may be the mlx5 NIC's "
                 "PTP clock under Accelerated Networking.",
       source=("TIME: chrony with the PTP clock source", "LISA-TS: verify_timesync_ptp"),
       remediation=f"Add '{AZURE_REFCLOCK.strip()}' to chrony's configuration "
                   "(e.g. /etc/chrony/conf.d/azure.conf).",
       passes=[Example("refclock in a conf.d file (baseline)"),
               Example("refclock in chrony.conf itself", files={
                   "/etc/chrony/conf.d/azure.conf": None,
                   DEB_CHRONY: "pool 2.debian.pool.ntp.org iburst\n" + AZURE_REFCLOCK})],
       fails=[Example("Debian's stock chrony.conf", files={"/etc/chrony/conf.d/azure.conf": None}),
              Example("/dev/ptp0", files={"/etc/chrony/conf.d/azure.conf":
                                          "refclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0\n"})])
def time_ptp(ctx: Context) -> list[Finding]:
    main, lines = _chrony_lines(ctx)
    clocks = [(p, no, w) for p, no, w in lines if w[0] == "refclock" and len(w) > 2
              and w[1] == "PHC"]
    if any(w[2] == PTP_HYPERV for _, _, w in clocks):
        return []
    out = [Finding(f"chrony uses the PTP device {w[2]}, not {PTP_HYPERV}", where(p, no),
                   fix=f"use {PTP_HYPERV}") for p, no, w in clocks]
    return out or [Finding(f"chrony has no 'refclock PHC {PTP_HYPERV}'", main,
                           fix=f"add '{AZURE_REFCLOCK.strip()}'")]


TIME_DAEMONS = {"chrony.service": "chrony", "chronyd.service": "chrony", "ntp.service": "ntpd",
                "ntpd.service": "ntpd", "ntpsec.service": "ntpsec",
                "systemd-timesyncd.service": "systemd-timesyncd", "openntpd.service": "openntpd"}
TIMESYNCD = "/etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service"


@check(id="guest.time.one-daemon", title="One time-sync daemon is enabled",
       severity=Severity.WARNING,
       rationale="Two time-sync daemons (chrony with ntpd or systemd-timesyncd) fight over the "
                 "clock: each steers it towards its own sources.",
       source=("TIME: chrony or systemd-timesyncd, one of them",
               "LISA-TS: verify_timesync_chrony, verify_timesync_ntp"),
       remediation="Disable all but one (systemctl disable systemd-timesyncd, or remove ntp).",
       passes=[Example("chrony only (baseline)"),
               Example("systemd-timesyncd only", files={
                   f"{WANTS}/chrony.service": None,
                   TIMESYNCD: symlink("/lib/systemd/system/systemd-timesyncd.service")})],
       fails=[Example("chrony and systemd-timesyncd", files={
                  TIMESYNCD: symlink("/lib/systemd/system/systemd-timesyncd.service")}),
              Example("chrony and ntpd", files=_enabled("ntp.service"))])
def time_one_daemon(ctx: Context) -> list[Finding]:
    found: dict[str, str] = {}
    for unit, evidence in units(ctx).items():
        if unit in TIME_DAEMONS:
            found.setdefault(TIME_DAEMONS[unit], evidence)
    if len(found) < 2:
        return []
    names = ", ".join(sorted(found))
    return [Finding(f"{name} is enabled with {len(found) - 1} other time-sync daemon(s) "
                    f"({names})", evidence) for name, evidence in sorted(found.items())]


# -- Hyper-V KVP daemon ---------------------------------------------------------------------------------
KVP_BINARIES = ("/usr/sbin/hv_kvp_daemon", "/usr/sbin/hypervkvpd", "/usr/libexec/hypervkvpd")
#: distributions (os-release ID) whose Azure images must run the daemon (LISA asserts it)
KVP_REQUIRED = ("mariner", "azurelinux")
#: Debian's hyperv-daemons unit (WantedBy=multi-user.target); RHEL's hypervkvpd is started by udev
DEBIAN_KVP_UNIT = "hv-kvp-daemon.service"
MARINER = {"/usr/lib/os-release": 'NAME="Common Base Linux Mariner"\nID=mariner\n'
                                  'VERSION_ID="2.0"\n'}


@check(id="guest.hyperv.kvp-daemon", title="The Hyper-V KVP daemon runs",
       severity=Severity.WARNING,
       rationale="The KVP daemon (hv_kvp_daemon, Debian's hyperv-daemons, RHEL's hypervkvpd) "
                 "exchanges key-value pairs with the host (the guest's addresses, the OS "
                 "identity). LISA requires it on Azure Linux (CBL-Mariner) and treats it as "
                 "optional on Debian-based images; when installed it should be enabled.",
       source=("LISA: verify_hv_kvp_daemon_installed", "GEN: hyperv-daemons"),
       remediation="Install hyperv-daemons (Debian/Ubuntu) or hypervkvpd and enable "
                   "hv-kvp-daemon.service.",
       passes=[Example("installed and enabled (baseline)"),
               Example("Azure Linux with hypervkvpd", files={**MARINER,
                                                            "/usr/sbin/hypervkvpd": "\x7fELF"})],
       fails=[Example("Azure Linux without the daemon", files={
                  **MARINER, "/usr/sbin/hv_kvp_daemon": None}),
              Example("installed, unit not enabled", files={f"{WANTS}/{DEBIAN_KVP_UNIT}": None})])
def kvp_daemon(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    binary = next((p for p in KVP_BINARIES if g.exists(p)), None)
    distro = g.facts.distro or ""
    if binary is None:
        if distro in KVP_REQUIRED:
            return [Finding(f"no KVP daemon ({', '.join(KVP_BINARIES)}) on {distro}",
                            "/etc/os-release", fix="install hypervkvpd")]
        raise NotApplicable(f"no KVP daemon installed (optional on {distro or 'this distro'})")
    unit = next((f"{d}/{DEBIAN_KVP_UNIT}" for d in ("/lib/systemd/system", "/usr/lib/systemd/system")
                 if g.exists(f"{d}/{DEBIAN_KVP_UNIT}")), None)
    if unit and DEBIAN_KVP_UNIT not in units(ctx):
        return [Finding(f"{binary} is installed but {DEBIAN_KVP_UNIT} is not enabled", unit,
                        fix=f"systemctl enable {DEBIAN_KVP_UNIT} (in the image)")]
    return []


# -- sudoers ---------------------------------------------------------------------------------------------
SUDOERS = "/etc/sudoers"
INCLUDE = re.compile(r"^[@#](include|includedir)\s+(\S+)")
DEFAULTS = re.compile(r"^Defaults([@:!>]\S+)?\s+(.*)$")
DEB_SUDOERS = ("Defaults\tenv_reset\nDefaults\tmail_badpass\nroot\tALL=(ALL:ALL) ALL\n"
               "%sudo\tALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n")


def _sudoers_lines(ctx: Context) -> list[tuple[str, int, str]]:
    g = guest(ctx)

    def read(path: str) -> list[tuple[int, str]]:    # '#include' is a directive, not a comment
        text = g.read_text(path) or ""
        return [(no, s) for no, raw in enumerate(text.splitlines(), 1) if (s := raw.strip())]

    def included(line: str) -> list[str]:
        m = INCLUDE.match(line)
        if m is None:
            return []
        if m.group(1) == "include":
            return [m.group(2)]
        return [posixpath.join(m.group(2), n) for n in g.list_dir(m.group(2))
                if not n.endswith("~") and "." not in n]

    return [(p, no, line) for p, no, line in with_includes(SUDOERS, read, included)
            if not line.startswith("#")]


@check(id="guest.sudo.targetpw", title="sudo does not ask for the target user's password",
       severity=Severity.WARNING,
       rationale="With 'Defaults targetpw' sudo asks for root's password, which a generalized "
                 "Azure image locks: the admin user Azure creates then cannot use sudo.",
       source=("LISA: verify_default_targetpw",),
       remediation="Remove 'Defaults targetpw' (and the 'ALL ALL=(ALL) ALL' line that goes with "
                   "it) from /etc/sudoers.",
       passes=[Example("Debian's sudoers (baseline)"),
               Example("set then negated", files={
                   "/etc/sudoers.d/azure": "Defaults !targetpw\n",
                   SUDOERS: "Defaults targetpw\n" + DEB_SUDOERS})],
       fails=[Example("SUSE's default", files={SUDOERS: "Defaults targetpw   # ask for the "
                                                          "password of the target user\n"
                                                          "ALL   ALL=(ALL) ALL\n"}),
              Example("in sudoers.d among other options", files={
                  "/etc/sudoers.d/90-build": "Defaults env_keep += \"LANG\", targetpw\n"})])
def sudo_targetpw(ctx: Context) -> list[Finding]:
    last: tuple[str, int] | None = None
    for path, no, line in _sudoers_lines(ctx):
        m = DEFAULTS.match(line)
        if not m:
            continue
        opts = [o.strip() for o in m.group(2).split("#", 1)[0].split(",")]
        if "targetpw" in opts:
            last = (path, no)
        elif "!targetpw" in opts:
            last = None
    if last is None:
        return []
    return [Finding("'Defaults targetpw': sudo asks for root's (locked) password",
                    where(*last), fix=f"remove line {last[1]} of {last[0]}")]


# -- Python for extensions ----------------------------------------------------------------------------
PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")


@check(id="guest.python3", title="Python 3 is installed for VM extensions",
       severity=Severity.WARNING,
       rationale="Most Azure VM extensions (and waagent itself) are Python programs run with "
                 "'python3'; without it they fail with 'No Python interpreter found' or "
                 "'/usr/bin/env: python: No such file or directory'.",
       source=("WA-2921", "EXT-361", "GEN: Python 2.6+ for the Linux agent"),
       remediation="Install python3 (a 'python' alias helps older extensions).",
       passes=[Example("python3 link to python3.11 (baseline)"),
               Example("a local build", files={"/usr/bin/python3": None,
                                               "/usr/local/bin/python3": "\x7fELF"})],
       fails=[Example("no python3", files={"/usr/bin/python3": None}),
              Example("dangling python3 link", files={"/usr/bin/python3.11": None})])
def python3(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    if any(g.is_file(p) for p in PYTHONS):
        return []
    return [Finding("no python3 interpreter (" + ", ".join(PYTHONS) + ")", PYTHONS[0],
                    fix="install python3")]


# -- agents of other clouds ----------------------------------------------------------------------------
#: (agent, paths that show it installed)
OTHER_AGENTS = (
    ("Google guest agent", ("/usr/bin/google_guest_agent", "/usr/bin/google_metadata_script_runner",
                            "/lib/systemd/system/google-guest-agent.service",
                            "/usr/lib/systemd/system/google-guest-agent.service")),
    ("Google OS Config agent", ("/usr/bin/google_osconfig_agent",)),
    ("Amazon SSM agent", ("/usr/bin/amazon-ssm-agent", "/snap/amazon-ssm-agent",
                          "/etc/amazon/ssm")),
    ("EC2 Instance Connect", ("/usr/share/ec2-instance-connect", "/opt/aws/bin/eic_run_authorized_keys",
                              "/lib/systemd/system/ssh.service.d/ec2-instance-connect.conf",
                              "/usr/lib/systemd/system/sshd.service.d/ec2-instance-connect.conf")),
)


@check(id="guest.other-cloud-agents", title="No agents of another cloud",
       severity=Severity.WARNING,
       rationale="An image migrated from another cloud keeps that cloud's agents: they poll "
                 "their metadata service (169.254.169.254 is also Azure's IMDS address), retry "
                 "forever, and some manage users and SSH keys. Migration tools remove the "
                 "departed cloud's agents (Google's import removes waagent and Azure's cloud-init "
                 "settings); a cloud-init datasource list without Azure is "
                 "guest.cloudinit.datasource's finding.",
       source=("GCE-TR: the translate scripts remove the other cloud's agents",
               "AWS-VMIE: the import installs the SSM agent"),
       remediation="Purge google-guest-agent, google-osconfig-agent, amazon-ssm-agent and "
                   "ec2-instance-connect before capture.",
       passes=[Example("none (baseline)")],
       fails=[Example("google guest agent", files={"/usr/bin/google_guest_agent": "\x7fELF"}),
              Example("amazon-ssm-agent snap", files={"/snap/amazon-ssm-agent/current":
                                                      symlink("9565")}),
              Example("ec2-instance-connect", files={
                  "/usr/share/ec2-instance-connect/eic_run_authorized_keys": "#!/bin/sh\n"})])
def other_cloud_agents(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    out = []
    for agent, paths in OTHER_AGENTS:
        hit = next((p for p in paths if g.lstat(p) is not None), None)
        if hit:
            out.append(Finding(f"{agent} is installed", hit, fix=f"purge the {agent}"))
    return out


# -- fstab: nofail ---------------------------------------------------------------------------------------
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "sshfs", "fuse.sshfs", "glusterfs",
                        "ceph", "fuse.ceph", "davfs", "9p", "vboxsf", "virtiofs", "lustre",
                        "fuse.s3fs", "fuse.gcsfuse", "fuse.blobfuse", "fuse.blobfuse2"})
OPTIONAL = frozenset({"nofail", "nobootwait", "noauto", "x-systemd.automount"})
#: kernel names of another disk than the OS disk (sda, vda, xvda, nvme0n1 is the OS disk)
OTHER_DISK = re.compile(r"^/dev/(sd[b-z][a-z]*|vd[b-z][a-z]*|xvd[b-z][a-z]*|nvme\d+n([2-9]|\d\d+)"
                        r"|nvme[1-9]\d*n\d+)(p?\d+)?$|^/dev/disk/azure/(scsi1|data)/")
BY = re.compile(r"^/dev/disk/by-(uuid|label|partuuid|partlabel)/(.+)$")
ROOT_LINE = "UUID=6f0e3d1c-2a4b-4c5d-8e9f-0a1b2c3d4e5f / ext4 defaults 0 1\n"


def _other_disk(spec: str, idx: Mapping[str, set[str]]) -> bool:
    """``spec`` names a device of another disk: by kernel name or Azure LUN link, or by a
    /dev/disk/by-* link to no filesystem of the image (when the engine reported them)."""
    m = BY.match(spec)
    if m:
        key, val = m.group(1).upper(), m.group(2)
        return bool(idx[key]) and (val.lower() if key.endswith("UUID") else val) not in idx[key]
    return bool(OTHER_DISK.match(spec))


@check(id="guest.fstab.nofail", title="Network and data-disk mounts are nofail",
       severity=Severity.WARNING,
       rationale="A mount the first boot cannot satisfy (a network share not reachable from the "
                 "new VNet, a data disk not attached to the new VM) without nofail makes systemd "
                 "wait for it and drop to emergency mode, unreachable over SSH. (fstab UUIDs of "
                 "no filesystem of the image are guest.fstab.uuids-exist's finding.)",
       source=("DEVN: the nofail option", "AWS-VMIE: nofail, and non-standard filesystem types "
               "disabled"),
       remediation="Add nofail (and _netdev for network filesystems) to the entry's options, or "
                   "mount it after provisioning.",
       passes=[Example("image filesystems only (baseline)"),
               Example("NFS with nofail and a data disk by LUN with nofail", files={
                   "/etc/fstab": ROOT_LINE + "nas:/export /srv nfs4 _netdev,nofail 0 0\n"
                                 "/dev/disk/azure/scsi1/lun0-part1 /data ext4 defaults,nofail "
                                 "0 2\n"})],
       fails=[Example("NFS share", files={"/etc/fstab": ROOT_LINE + "nas:/export /srv nfs4 "
                                                                    "_netdev 0 0\n"}),
              Example("cifs share", files={"/etc/fstab": ROOT_LINE + "//files/share /mnt/share "
                                                                     "cifs credentials=/root/c 0 "
                                                                     "0\n"}),
              Example("second disk by kernel name", files={"/etc/fstab": ROOT_LINE +
                                                           "/dev/sdc1 /data xfs defaults 0 2\n"})])
def fstab_nofail(ctx: Context) -> list[Finding]:
    facts = guest(ctx).facts
    idx = fs_index(facts.filesystems)
    out = []
    for e in facts.fstab:
        if e.mountpoint in ("/", "none") or e.fstype == "swap":
            continue
        if OPTIONAL & set(e.options.split(",")):
            continue
        if e.fstype in NETWORK_FS:
            what = f"{e.fstype} share"
        elif _other_disk(e.spec, idx):
            what = "filesystem on another disk"
        else:
            continue
        out.append(Finding(f"{e.mountpoint}: {what} {e.spec} without nofail",
                           f"/etc/fstab:{e.line}", fix=f"add nofail to line {e.line} of /etc/fstab"))
    return out


# -- SELinux relabel -------------------------------------------------------------------------------------
SELINUX_CONFIG = "/etc/selinux/config"


@check(id="guest.selinux.relabel", title="No SELinux relabel pending",
       severity=Severity.WARNING,
       rationale="/.autorelabel with SELinux enforcing or permissive makes the first boot relabel "
                 "every file and reboot: on a large disk that takes minutes, during which the VM "
                 "neither provisions nor reports ready (Azure's provisioning timeout counts).",
       source=("SELINUX: relabeling on the next boot", "GCE-TR: virt-customize --selinux-relabel "
               "at import instead", "PROVE: the provisioning timeout"),
       remediation="Relabel offline (virt-customize --selinux-relabel, or setfiles in a chroot) "
                   "and delete /.autorelabel before capture.",
       passes=[Example("no /.autorelabel (baseline)"),
               Example("SELinux disabled", files={"/.autorelabel": "",
                                                  SELINUX_CONFIG: "SELINUX=disabled\n"})],
       fails=[Example("enforcing with /.autorelabel", files={
           "/.autorelabel": "", SELINUX_CONFIG: "SELINUX=enforcing\nSELINUXTYPE=targeted\n"})])
def selinux_relabel(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    if g.lstat("/.autorelabel") is None:
        return []
    mode = None
    for no, line in g.lines(SELINUX_CONFIG):
        if line.startswith("SELINUX="):
            mode = (line.split("=", 1)[1].strip().strip("\"'").lower(), no)
    if mode is None or mode[0] not in ("enforcing", "permissive"):
        return []
    return [Finding(f"/.autorelabel is present and SELinux is {mode[0]} "
                    f"({where(SELINUX_CONFIG, mode[1])}): the first boot relabels and reboots",
                    "/.autorelabel", fix="relabel offline and delete /.autorelabel")]
