"""Guest checks: the provisioner (waagent, cloud-init) and sshd.

References:
  - :mod:`checks.sources`: Azure "Prepare a Linux VHD" (GEN), "Azure Linux VM provisioning"
    (PROVE), the Marketplace certification tests (MKT), WALinuxAgent README configuration
    (WA-CONF) and ``azurelinuxagent/pa/provision`` (WA-PROV), cloud-init DataSourceAzure docs (CI).
  - Who provisions, and the agent's version: :mod:`checks.provisioning`.
  - WALinuxAgent ``azurelinuxagent/common/version.py`` (``AGENT_VERSION``).
  - sshd_config(5) (``Include``, first value wins, ``ClientAliveInterval``).
"""

from __future__ import annotations

import re

from .catalog import (GENERALIZED, SPECIALIZED, Applies, Context, Example, Finding, NotApplicable,
                      Severity, check)
from .examples import symlink
from .cloudinit import cloud_config, cloudinit_enabled
from .guestlib import (WAAGENT_CONF, cmdlines, guest, line_of, provisioning_agent, units,
                       waagent_conf, waagent_enabled, where)
from . import fixes_prov as fx
from .provisioning import (AGENT_VERSION_FILES, agent_version, cloudinit_provisions,
                           waagent_provisions)

GEN = Applies(os_states=frozenset({GENERALIZED}))
SPEC = Applies(os_states=frozenset({SPECIALIZED}))
MP = Applies(features=frozenset({"marketplace"}))
CI_WANTS = "/etc/systemd/system/cloud-init.target.wants"
WA_WANTS = "/etc/systemd/system/multi-user.target.wants/walinuxagent.service"
NO_CLOUDINIT = {"/etc/cloud": None, "/usr/bin/cloud-init": None, CI_WANTS: None}
WAAGENT_ONLY = {**NO_CLOUDINIT, WAAGENT_CONF: "Provisioning.Agent=waagent\n"
                "Provisioning.RegenerateSshHostKeyPair=y\nResourceDisk.Format=y\n"}
VALID_AGENTS = ("auto", "waagent", "cloud-init", "disabled")


@check(id="guest.provisioner.present", title="A provisioner handles the first boot",
       severity=Severity.ERROR, applies=GEN,
       rationale="A generalized image is provisioned on first boot (hostname, user, SSH key) and "
                 "must report ready to the Azure fabric; without waagent provisioning or cloud-init "
                 "with the Azure datasource, deployment times out after 20-40 minutes.",
       source=("GEN", "PROVE", "NOAG"),
       remediation="Install and enable cloud-init with the Azure datasource (or waagent with "
                   "Provisioning.Agent=auto/waagent).",
       passes=[Example("waagent provisions alone", files=WAAGENT_ONLY)],
       fails=[Example("no cloud-init and waagent not enabled",
                      files={**NO_CLOUDINIT, WA_WANTS: None}),
              Example("cloud-init disabled by marker, waagent defers to cloud-init",
                      files={"/etc/cloud/cloud-init.disabled": ""})],
       fix=fx.PRESENT)
def provisioner_present(ctx: Context) -> list[Finding]:
    if waagent_provisions(ctx) or cloudinit_provisions(ctx):
        return []
    g = guest(ctx)
    why = []
    if g.exists("/etc/cloud/cloud-init.disabled"):
        why.append("cloud-init is disabled by /etc/cloud/cloud-init.disabled")
    agent = provisioning_agent(ctx)
    if agent and agent.value in ("cloud-init", "disabled"):
        why.append(f"waagent defers provisioning (Provisioning.Agent={agent.value})")
    return [Finding("no provisioner: neither cloud-init with the Azure datasource nor waagent "
                    "provisioning is enabled" + (f" ({'; '.join(why)})" if why else ""),
                    agent.evidence if agent else "/etc/systemd/system")]


@check(id="guest.provisioner.conflict", title="waagent and cloud-init do not both provision",
       severity=Severity.ERROR, applies=GEN,
       rationale="With Provisioning.Agent=waagent and cloud-init enabled, the agent refuses to "
                 "provision ('cloud-init appears to be installed and enabled').",
       source=("WA-PROV",),
       remediation="Set Provisioning.Agent=cloud-init (or auto) when cloud-init provisions, or "
                   "disable cloud-init when waagent does.",
       passes=[Example("waagent alone", files=WAAGENT_ONLY)],
       fails=[Example("waagent provisioning with cloud-init enabled",
                      files={WAAGENT_CONF: "Provisioning.Agent=waagent\n"})],
       fix=fx.CONFLICT)
def provisioner_conflict(ctx: Context) -> list[Finding]:
    agent = provisioning_agent(ctx)
    if agent and agent.value == "waagent" and cloudinit_enabled(ctx):
        return [Finding("Provisioning.Agent=waagent while cloud-init is enabled",
                        agent.evidence, fix=f"set Provisioning.Agent=cloud-init in {agent.path}")]
    return []


@check(id="guest.provisioner.specialized", title="A specialized image does not re-provision",
       severity=Severity.ERROR, applies=SPEC,
       rationale="A specialized disk keeps its identity: waagent must be Provisioning.Agent="
                 "disabled (it then only reports ready) or leave it to cloud-init; a generalized "
                 "provisioning setup on a specialized image times out.",
       source=("GEN", "WA-PROV", "PROVE"),
       remediation="Set Provisioning.Agent=disabled (or cloud-init) in /etc/waagent.conf.",
       passes=[Example("specialized with Provisioning.Agent=disabled",
                       files={WAAGENT_CONF: "Provisioning.Agent=disabled\n"},
                       profile={"os_state": SPECIALIZED})],
       fails=[Example("specialized image with waagent provisioning", files=WAAGENT_ONLY,
                      profile={"os_state": SPECIALIZED})],
       fix=fx.SPECIALIZED)
def provisioner_specialized(ctx: Context) -> list[Finding]:
    agent = provisioning_agent(ctx)
    if waagent_provisions(ctx):
        return [Finding(f"waagent will provision (Provisioning.Agent="
                        f"{agent.value if agent else 'auto (default)'})",
                        agent.evidence if agent else WAAGENT_CONF,
                        fix=f"set Provisioning.Agent=disabled in {WAAGENT_CONF}")]
    return []


@check(id="guest.waagent.config", title="waagent.conf is consistent", severity=Severity.WARNING,
       rationale="Provisioning.Agent accepts auto, waagent, cloud-init, disabled; "
                 "Provisioning.Enabled/UseCloudInit were removed in 2.2.45 and are ignored; when "
                 "cloud-init provisions, the agent must not format the resource disk nor make swap.",
       source=("WA-CONF", "GEN"),
       remediation="Fix the named lines of /etc/waagent.conf.",
       passes=[Example("waagent provisioning config", files=WAAGENT_ONLY)],
       fails=[Example("resource disk formatted while cloud-init provisions",
                      files={WAAGENT_CONF: "Provisioning.Agent=cloud-init\nResourceDisk.Format=y\n"
                             "ResourceDisk.EnableSwap=y\n"}),
              Example("unknown agent value", files={WAAGENT_CONF: "Provisioning.Agent=yes\n"}),
              Example("removed key", files={WAAGENT_CONF: "Provisioning.Agent=auto\n"
                                            "Provisioning.UseCloudInit=y\n"})],
       fix=fx.WAAGENT_CONFIG)
def waagent_config(ctx: Context) -> list[Finding]:
    conf = waagent_conf(ctx)
    if conf is None:
        raise NotApplicable("waagent is not installed (no /etc/waagent.conf)")
    out = []
    agent = conf.get("Provisioning.Agent")
    if agent and agent.value not in VALID_AGENTS:
        out.append(Finding(f"Provisioning.Agent={agent.value} is not one of "
                           f"{', '.join(VALID_AGENTS)}", agent.evidence))
    for key in ("Provisioning.Enabled", "Provisioning.UseCloudInit"):
        if key in conf:
            out.append(Finding(f"{key} was removed in waagent 2.2.45 and is ignored; use "
                               "Provisioning.Agent", conf[key].evidence))
    if cloudinit_provisions(ctx) and (agent is None or agent.value in ("auto", "cloud-init")):
        for key in ("ResourceDisk.Format", "ResourceDisk.EnableSwap"):
            s = conf.get(key)
            if s and s.value.lower() == "y":
                out.append(Finding(f"{key}=y while cloud-init provisions (cloud-init handles "
                                   "the resource disk)", s.evidence, fix=f"set {key}=n"))
    return out


MIN_WAAGENT = (2, 2, 41)


@check(id="guest.waagent.version", title="waagent is recent enough", severity=Severity.WARNING,
       error_when=("marketplace",),
       rationale="Marketplace requires WALinuxAgent 2.2.41 or later (since 2020-05-01).",
       source=("MKT",),
       remediation="Update the walinuxagent / WALinuxAgent package.",
       passes=[Example("exactly 2.2.41",
                       files={AGENT_VERSION_FILES[0]: "AGENT_VERSION = '2.2.41'\n"})],
       fails=[Example("waagent 2.2.40", files={AGENT_VERSION_FILES[0]: "AGENT_VERSION = '2.2.40'\n"})])
def waagent_version(ctx: Context) -> list[Finding]:
    found = agent_version(ctx)
    if found is None or not re.fullmatch(r"[0-9.]+", found.version):
        if waagent_conf(ctx) is None:
            raise NotApplicable("waagent is not installed")
        return [Finding("waagent.conf exists but the agent's version.py was not found",
                        WAAGENT_CONF)]
    version, evidence = found.version, found.evidence
    if tuple(int(p) for p in version.split(".")[:3]) < MIN_WAAGENT:
        return [Finding(f"waagent {version} is older than 2.2.41", evidence)]
    return []


@check(id="guest.waagent.enabled", title="The Azure Linux agent is installed and enabled",
       severity=Severity.ERROR, applies=GEN,
       rationale="waagent (walinuxagent.service on Debian/Ubuntu) runs VM extensions, reports "
                 "health and, with Provisioning.Agent=auto/waagent, provisions; a generalized "
                 "image needs it enabled.",
       source=("GEN", "IMGL"),
       remediation="Install walinuxagent/WALinuxAgent and enable its service.",
       passes=[Example("waagent.service name (RHEL)", files={
           WA_WANTS: None, "/etc/systemd/system/multi-user.target.wants/waagent.service":
               symlink("/usr/lib/systemd/system/waagent.service")})],
       fails=[Example("installed, not enabled", files={WA_WANTS: None}),
              Example("not installed", files={WAAGENT_CONF: None, WA_WANTS: None})],
       fix=fx.WAAGENT_ENABLED)
def waagent_is_enabled(ctx: Context) -> list[Finding]:
    if waagent_conf(ctx) is None:
        return [Finding("waagent is not installed (no /etc/waagent.conf)", WAAGENT_CONF)]
    if not waagent_enabled(ctx):
        return [Finding("neither walinuxagent.service nor waagent.service is enabled",
                        "/etc/systemd/system/multi-user.target.wants",
                        fix="systemctl enable walinuxagent (in the image)")]
    return []


DS_IDENTIFY = "/etc/cloud/ds-identify.cfg"


@check(id="guest.cloudinit.datasource", title="cloud-init will use the Azure datasource",
       severity=Severity.ERROR, applies=GEN,
       rationale="cloud-init provisions on Azure only with the Azure datasource: datasource_list "
                 "(merged from cloud.cfg and cloud.cfg.d/*.cfg in lexical order) must contain "
                 "Azure, ds-identify must not exclude it, and cloud-init must not be disabled.",
       source=("GEN", "UBU", "CI"),
       remediation="Write /etc/cloud/cloud.cfg.d/90-azure.cfg with 'datasource_list: [ Azure ]', "
                   "remove /etc/cloud/cloud-init.disabled and restrictive ds-identify.cfg.",
       passes=[Example("a later file narrows the list to Azure",
                       files={"/etc/cloud/cloud.cfg.d/99-azure.cfg": "datasource_list: [ Azure, None ]\n"}),
               Example("no datasource_list (cloud-init's default list includes Azure)",
                       files={"/etc/cloud/cloud.cfg.d/90_dpkg.cfg": None})],
       fails=[Example("NoCloud only", files={"/etc/cloud/cloud.cfg.d/99-nocloud.cfg":
                                             "datasource_list: [ NoCloud, None ]\n"}),
              Example("cloud-init disabled", files={"/etc/cloud/cloud-init.disabled": ""}),
              Example("ds-identify policy disabled",
                      files={DS_IDENTIFY: "policy: disabled\n"})],
       fix=fx.DATASOURCE)
def cloudinit_datasource(ctx: Context) -> list[Finding]:
    cfg = cloud_config(ctx)
    if cfg is None:
        raise NotApplicable("cloud-init is not installed")
    g = guest(ctx)
    out = list(cfg.errors)
    ds = cfg.merged.get("datasource_list")
    if ds is not None and not (isinstance(ds, list) and "Azure" in ds):
        path = cfg.origin["datasource_list"]
        out.append(Finding(f"datasource_list {ds} has no Azure",
                           where(path, line_of(g, path, r"^datasource_list"))))
    if g.exists("/etc/cloud/cloud-init.disabled"):
        out.append(Finding("cloud-init is disabled", "/etc/cloud/cloud-init.disabled",
                           fix="remove /etc/cloud/cloud-init.disabled"))
    for c in cmdlines(ctx):
        if "cloud-init=disabled" in c.args:
            out.append(Finding("cloud-init=disabled on the kernel command line", c.evidence))
    no = line_of(g, DS_IDENTIFY, r"^policy:\s*disabled")
    if no:
        out.append(Finding("ds-identify policy disables cloud-init", where(DS_IDENTIFY, no)))
    return out


SSHD_CONFIG = "/etc/ssh/sshd_config"
SSH_UNITS = ("ssh.service", "sshd.service")


@check(id="guest.sshd.present", title="sshd is installed and enabled", severity=Severity.ERROR,
       applies=GEN,
       rationale="Azure Linux VMs are reached over SSH; a generalized image without an enabled "
                 "sshd cannot be logged into.",
       source=("GEN",),
       remediation="Install openssh-server and enable ssh.service.",
       passes=[Example("unit enabled under its alias sshd.service",
                       files={"/etc/systemd/system/multi-user.target.wants/ssh.service": None,
                              "/etc/systemd/system/multi-user.target.wants/sshd.service":
                                  symlink("/lib/systemd/system/ssh.service")})],
       fails=[Example("sshd not installed", files={"/usr/sbin/sshd": None}),
              Example("ssh.service not enabled",
                      files={"/etc/systemd/system/multi-user.target.wants/ssh.service": None})],
       fix=fx.SSHD_PRESENT)
def sshd_present(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    if not g.exists("/usr/sbin/sshd"):
        return [Finding("sshd is not installed", "/usr/sbin/sshd")]
    u = units(ctx)
    if not any(n in u for n in SSH_UNITS):
        return [Finding("ssh.service is not enabled", "/etc/systemd/system/multi-user.target.wants",
                        fix="systemctl enable ssh (in the image)")]
    return []


def _sshd_setting(ctx: Context, key: str) -> tuple[str, str] | None:
    """First value of ``key`` (sshd: first obtained value wins), following Include in place."""
    return _sshd_search(ctx, SSHD_CONFIG, key.lower(), set())


def _sshd_search(ctx: Context, path: str, key: str, seen: set[str]) -> tuple[str, str] | None:
    if path in seen or len(seen) > 64:
        return None
    seen.add(path)
    for no, line in guest(ctx).lines(path):
        parts = line.split(None, 1)
        word = parts[0].lower()
        if word == "match":
            return None
        if word == "include" and len(parts) > 1:
            for inc in _expand_include(ctx, parts[1]):
                found = _sshd_search(ctx, inc, key, seen)
                if found:
                    return found
        elif word == key and len(parts) > 1:
            return parts[1].strip(), where(path, no)
    return None


def _expand_include(ctx: Context, spec: str) -> list[str]:
    g = guest(ctx)
    out = []
    for pat in spec.split():
        pat = pat if pat.startswith("/") else f"/etc/ssh/{pat}"
        d, _, base = pat.rpartition("/")
        rx = re.escape(base).replace(r"\*", ".*").replace(r"\?", ".")
        out += g.glob(d, rx)
    return out


@check(id="guest.sshd.client-alive", title="sshd ClientAliveInterval is 30-235 s",
       severity=Severity.WARNING, applies=MP, error_when=("marketplace",),
       rationale="Marketplace certification requires ClientAliveInterval between 30 and 235 "
                 "seconds (180 recommended) so idle sessions survive the Azure load balancer.",
       source=("MKT: test 46", "RHEL"),
       remediation="Set 'ClientAliveInterval 180' in /etc/ssh/sshd_config.",
       passes=[Example("180 s", profile={"features": frozenset({"marketplace"})})],
       fails=[Example("not set", files={SSHD_CONFIG: "PasswordAuthentication no\n"},
                      profile={"features": frozenset({"marketplace"})}),
              Example("an earlier drop-in sets 600",
                      files={"/etc/ssh/sshd_config.d/10-alive.conf": "ClientAliveInterval 600\n"},
                      profile={"features": frozenset({"marketplace"})})],
       fix=fx.CLIENT_ALIVE)
def sshd_client_alive(ctx: Context) -> list[Finding]:
    if not guest(ctx).exists(SSHD_CONFIG):
        raise NotApplicable("no /etc/ssh/sshd_config")
    found = _sshd_setting(ctx, "ClientAliveInterval")
    if found is None:
        return [Finding("ClientAliveInterval is not set (default 0)", SSHD_CONFIG,
                        fix="add 'ClientAliveInterval 180' to /etc/ssh/sshd_config")]
    value, evidence = found
    if not value.isdigit() or not 30 <= int(value) <= 235:
        return [Finding(f"ClientAliveInterval {value} is outside 30-235", evidence)]
    return []
