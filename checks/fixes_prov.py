"""The fixes of the provisioner and sshd checks (:mod:`checks.guest_prov`,
``guest.deprovision.ssh-host-keys-shared``): waagent.conf keys, cloud-init's datasource and
enablement, systemd units, sshd's keep-alive.

References:
  - WALinuxAgent ``azurelinuxagent/pa/provision/factory.py``: a ``Provisioning.Agent`` that is
    not ``cloud-init`` and not ``auto`` with cloud-init enabled makes waagent provision, so an
    unknown value behaves as ``auto`` would (the fix writes ``auto``); README "Configuration".
  - cloud-init "How to disable cloud-init" (``/etc/cloud/cloud-init.disabled``,
    ``cloud-init=disabled``, ds-identify ``policy: disabled``); its drop-in merge
    (:mod:`checks.cloudinit`: a later ``*.cfg`` replaces a list wholesale).
  - systemctl(1) ``enable``: :func:`checks.fixlib.enable_unit`.
  - sshd_config(5): the first value obtained wins, so a line at the top of sshd_config wins over
    its Include files.
"""

from __future__ import annotations

from .catalog import Context, Result
from .cloudinit import cloud_config
from .fixes import Change, Delete, NotFixable, Safety, WriteFile
from .fixlib import (by_file, cloudcfg_dropin, cmdline_changes, comment_out, current_findings,
                     edit_file, enable_unit, fix, line_no, set_key, unit_file)
from .guestlib import WAAGENT_CONF, WAAGENT_UNITS, cmdlines, guest, line_of, units, waagent_conf

DISABLED = "/etc/cloud/cloud-init.disabled"
DS_IDENTIFY = "/etc/cloud/ds-identify.cfg"
CLOUDINIT_UNITS = ("cloud-init-local.service", "cloud-init-main.service",
                   "cloud-init-network.service", "cloud-init.service", "cloud-config.service",
                   "cloud-final.service")


def cloudinit_disabled(ctx: Context, _result: Result | None = None) -> bool:
    """cloud-init is installed but switched off (marker, ds-identify, command line, no unit)."""
    g = guest(ctx)
    return (g.exists(DISABLED) or bool(line_of(g, DS_IDENTIFY, r"^policy:\s*disabled"))
            or any("cloud-init=disabled" in c.args for c in cmdlines(ctx))
            or not any(u.startswith("cloud-init") for u in units(ctx)))


def _enable_cloudinit(ctx: Context) -> list[Change]:
    g = guest(ctx)
    out: list[Change] = [Delete(DISABLED)] if g.lstat(DISABLED) is not None else []
    no = line_of(g, DS_IDENTIFY, r"^policy:\s*disabled")
    if no:
        out += edit_file(g, DS_IDENTIFY, comment_out([no], "cloud-init re-enabled by vhdtool"))
    if any("cloud-init=disabled" in c.args for c in cmdlines(ctx)):
        out += cmdline_changes(g, remove=("cloud-init",))
    if not any(u.startswith("cloud-init") for u in units(ctx)):
        for unit in CLOUDINIT_UNITS:
            if unit_file(g, unit):
                out += enable_unit(g, unit)
    return out


def _azure_datasource(ctx: Context) -> list[Change]:
    cfg = cloud_config(ctx)
    if cfg is None:
        raise NotFixable("cloud-init is not installed")
    if cfg.errors:
        raise NotFixable("; ".join(f.message for f in cfg.errors))
    ds = cfg.merged.get("datasource_list")
    if ds is None or (isinstance(ds, list) and "Azure" in ds):
        return []
    path = cloudcfg_dropin(guest(ctx), cfg.origin.get("datasource_list"))
    return [WriteFile(path, b"datasource_list: [ Azure ]\n")]


DATASOURCE = fix(
    "writes a cloud.cfg.d drop-in that sorts last with 'datasource_list: [ Azure ]'; when "
    "cloud-init is switched off, also deletes cloud-init.disabled, comments out ds-identify's "
    "'policy: disabled', takes cloud-init=disabled off the kernel command lines and enables "
    "its units", Safety.SAFE,
    lambda ctx, _r: _azure_datasource(ctx) + _enable_cloudinit(ctx),
    unsafe_if=cloudinit_disabled, unsafe_when="cloud-init is switched off: enabling it changes "
                                               "what runs")


def _waagent_unit(ctx: Context) -> list[Change]:
    g = guest(ctx)
    if waagent_conf(ctx) is None:
        raise NotFixable("waagent is not installed: install walinuxagent/WALinuxAgent")
    unit = next((u for u in WAAGENT_UNITS if unit_file(g, u)), None)
    if unit is None:
        raise NotFixable(f"neither {' nor '.join(WAAGENT_UNITS)} is installed")
    return enable_unit(g, unit)


def _present(ctx: Context, _result: Result) -> list[Change]:
    g = guest(ctx)
    if cloud_config(ctx) is not None:
        return _azure_datasource(ctx) + _enable_cloudinit(ctx)
    out = _waagent_unit(ctx) if not any(u in units(ctx) for u in WAAGENT_UNITS) else []
    agent = (waagent_conf(ctx) or {}).get("Provisioning.Agent")
    if agent and agent.value != "waagent":
        out += edit_file(g, WAAGENT_CONF, set_key("Provisioning.Agent", "auto"))
    return out


PRESENT = fix("enables cloud-init with the Azure datasource when it is installed (as "
              "guest.cloudinit.datasource's fix does), else enables the waagent service with "
              "Provisioning.Agent=auto", Safety.UNSAFE, _present)


def _conflict(ctx: Context, _result: Result) -> list[Change]:
    from .provisioning import cloudinit_provisions
    if not cloudinit_provisions(ctx):
        raise NotFixable("cloud-init is enabled without the Azure datasource: choose the "
                         "provisioner by hand")
    return edit_file(guest(ctx), WAAGENT_CONF, set_key("Provisioning.Agent", "cloud-init"))


CONFLICT = fix("sets Provisioning.Agent=cloud-init when cloud-init provisions with the Azure "
               "datasource (waagent refuses to provision then anyway)", Safety.UNSAFE, _conflict)

SPECIALIZED = fix("sets Provisioning.Agent=disabled in /etc/waagent.conf", Safety.UNSAFE,
                  lambda ctx, _r: edit_file(guest(ctx), WAAGENT_CONF,
                                            set_key("Provisioning.Agent", "disabled")))

#: waagent.conf key -> what its finding's line becomes (None: commented out, it is ignored)
WAAGENT_KEYS = {"Provisioning.Agent": "auto", "Provisioning.Enabled": None,
                "Provisioning.UseCloudInit": None, "ResourceDisk.Format": "n",
                "ResourceDisk.EnableSwap": "n"}


def _waagent_config(ctx: Context, result: Result) -> list[Change]:
    nos = set(by_file(current_findings(ctx, result)).get(WAAGENT_CONF, []))

    def edit(lines: list[str]) -> list[str]:
        out = []
        for i, ln in enumerate(lines, 1):
            key = ln.split("=", 1)[0].strip()
            if i in nos and key in WAAGENT_KEYS:
                value = WAAGENT_KEYS[key]
                ln = (f"# ignored since waagent 2.2.45: {ln}" if value is None
                      else f"{key}={value}\n")
            out.append(ln)
        return out
    return edit_file(guest(ctx), WAAGENT_CONF, edit)


WAAGENT_CONFIG = fix("rewrites the named waagent.conf lines: an unknown Provisioning.Agent "
                     "becomes auto (what waagent does with it), the removed Provisioning.Enabled"
                     "/UseCloudInit are commented out, ResourceDisk.Format/EnableSwap=n while "
                     "cloud-init provisions", Safety.SAFE, _waagent_config)

WAAGENT_ENABLED = fix("enables walinuxagent.service (waagent.service) as systemctl enable does",
                      Safety.UNSAFE, lambda ctx, _r: _waagent_unit(ctx))


def _sshd(ctx: Context, _result: Result, unit_names: tuple[str, ...]) -> list[Change]:
    g = guest(ctx)
    if not g.exists("/usr/sbin/sshd"):
        raise NotFixable("sshd is not installed: install openssh-server")
    unit = next((u for u in unit_names if unit_file(g, u)), None)
    if unit is None:
        raise NotFixable(f"no {' or '.join(unit_names)} unit file")
    return enable_unit(g, unit)


SSHD_PRESENT = fix("enables ssh.service (sshd.service) as systemctl enable does", Safety.UNSAFE,
                   lambda ctx, r: _sshd(ctx, r, ("ssh.service", "sshd.service")))

SSHD_CONFIG = "/etc/ssh/sshd_config"
ALIVE = "ClientAliveInterval 180"


def _client_alive(ctx: Context, result: Result) -> list[Change]:
    g = guest(ctx)
    out: list[Change] = []
    for f in current_findings(ctx, result):
        loc = line_no(f.evidence)
        if loc:
            out += edit_file(g, loc[0], lambda ls, n=loc[1]: [
                ln[:len(ln) - len(ln.lstrip())] + ALIVE + "\n" if i == n else ln
                for i, ln in enumerate(ls, 1)])
        else:
            out += edit_file(g, SSHD_CONFIG, lambda ls: [ALIVE + "\n"] + ls)
    return out


CLIENT_ALIVE = fix("sets ClientAliveInterval 180 where sshd reads its first value (the line "
                   "that sets it, else the top of sshd_config)", Safety.SAFE, _client_alive)
