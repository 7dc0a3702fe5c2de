"""Guest checks: the network configuration a new VM boots with.

The static configuration of every stack is read by :mod:`checks.netconfig`; the MAC-bound
configurations (udev persistent-net rules, netplan ``match: macaddress``, NetworkManager
``mac-address=``, networkd ``MACAddress=``, ifcfg ``HWADDR``) are judged by
``guest.deprovision.net-rules`` in :mod:`checks.guest_deprov`.

References:
  - :mod:`checks.sources`: LISA ``verify_ifcfg_eth0``/``verify_network_file_configuration`` and
    ``verify_udev_rules_moved`` (LISA), AWS VM Import's static-IP rule (AWS-VMIE), Google's
    image translation (``ClearEtcResolv``, DHCP on eth0; GCE-TR), WALinuxAgent's
    ``68-azure-sriov-nm-unmanaged.rules`` (WA-SRIOV), azure-vm-utils'
    ``10-azure-unmanaged-sriov.rules`` (AVU), Azure "How Accelerated Networking works" (AN).
  - cloud-init: with the network configuration not ``disabled`` it writes the NIC configuration
    on every boot (DHCP on the first NIC when the datasource gives none; cloud-init docs
    "Network configuration", "Fallback network configuration").
  - udev(7) (``ENV{NM_UNMANAGED}``), NetworkManager.conf(5) (``unmanaged-devices``).
"""

from __future__ import annotations

import re

from .catalog import Context, Example, Finding, Severity, check
from .cloudinit import cloud_config, cloudinit_enabled
from .examples import symlink
from .guestlib import dir_files, guest, where
from .netconfig import (FIRST_NIC, NM_CONF, NM_CONF_DIRS, cloudinit_renders_network, nic_configs,
                        nm_auto_default, nm_enabled, read_ini, rewritten_on_boot)

CI_NET_OFF = "/etc/cloud/cloud.cfg.d/99-disable-network-config.cfg"
NO_CI_NET = {CI_NET_OFF: "network: {config: disabled}\n"}
IFUPDOWN = "/etc/network/interfaces"
NM_WANTS = "/etc/systemd/system/multi-user.target.wants/NetworkManager.service"
NM_ON = {"/usr/sbin/NetworkManager": "\x7fELF", NM_WANTS: symlink(
    "/lib/systemd/system/NetworkManager.service")}
NM_KEYFILE = "/etc/NetworkManager/system-connections/eth0.nmconnection"


@check(id="guest.network.dhcp", title="The first NIC is configured by DHCP",
       severity=Severity.WARNING,
       rationale="Azure gives each NIC its address by DHCP; a VM whose first NIC (eth0, the "
                 "synthetic VMBus NIC) has a static address of the build network, is not brought "
                 "up, or has no configuration at all is unreachable and cannot report ready. "
                 "cloud-init, when its network configuration is not disabled, writes a DHCP "
                 "configuration on boot; otherwise the image must carry one (ifupdown, netplan, "
                 "NetworkManager, systemd-networkd or ifcfg).",
       source=("GEN", "LISA: verify_ifcfg_eth0, verify_network_file_configuration",
               "AWS-VMIE: DHCP instead of a static IP", "GCE-TR: ifcfg-eth0 BOOTPROTO=dhcp"),
       remediation="Let cloud-init write the network configuration, or configure eth0 with DHCP "
                   "(ifupdown 'auto eth0' + 'iface eth0 inet dhcp', netplan 'dhcp4: true', "
                   "ifcfg BOOTPROTO=dhcp ONBOOT=yes, NetworkManager method=auto).",
       passes=[Example("cloud-init writes the configuration (baseline)"),
               Example("ifupdown DHCP, cloud-init's network disabled", files={
                   **NO_CI_NET, IFUPDOWN: "auto lo\niface lo inet loopback\n"
                                          "source /etc/network/interfaces.d/*\n",
                   "/etc/network/interfaces.d/eth0": "allow-hotplug eth0\n"
                                                     "iface eth0 inet dhcp\n"}),
               Example("netplan matching e* by name", files={
                   **NO_CI_NET, "/etc/netplan/50-cloud.yaml":
                       "network:\n  version: 2\n  ethernets:\n    all:\n      match:\n"
                       "        name: \"e*\"\n      dhcp4: true\n"}),
               Example("NetworkManager's automatic wired connection", files={**NO_CI_NET,
                                                                            **NM_ON}),
               Example("systemd-networkd Name=eth*", files={
                   **NO_CI_NET, "/etc/systemd/system/multi-user.target.wants/"
                                "systemd-networkd.service":
                       symlink("/lib/systemd/system/systemd-networkd.service"),
                   "/etc/systemd/network/10-eth.network": "[Match]\nName=eth*\n\n[Network]\n"
                                                          "DHCP=ipv4\n"}),
               Example("RHEL ifcfg-eth0", files={
                   **NO_CI_NET, "/etc/sysconfig/network-scripts/ifcfg-eth0":
                       "DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=yes\n"})],
       fails=[Example("static address in ifupdown", files={
                  "/etc/network/interfaces.d/eth0": "auto eth0\niface eth0 inet static\n"
                                                     "  address 10.1.0.4/24\n",
                  IFUPDOWN: "source /etc/network/interfaces.d/*\n"}),
              Example("cloud-init network disabled, nothing else", files=NO_CI_NET),
              Example("no cloud-init, ifcfg ONBOOT=no", files={
                  "/etc/cloud": None, "/usr/bin/cloud-init": None,
                  "/etc/sysconfig/network-scripts/ifcfg-eth0":
                      "DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=no\n"}),
              Example("NetworkManager keyfile with a manual address", files={
                  **NM_ON, NM_KEYFILE: "[connection]\nid=eth0\ntype=ethernet\n"
                                       "interface-name=eth0\n[ipv4]\nmethod=manual\n"
                                       "address1=10.1.0.4/24\n"}),
              Example("netplan static address", files={
                  "/etc/netplan/01-eth0.yaml": "network:\n  ethernets:\n    eth0:\n"
                                               "      addresses: [10.1.0.4/24]\n"})])
def network_dhcp(ctx: Context) -> list[Finding]:
    g = guest(ctx)
    confs = [c for c in nic_configs(ctx)
             if c.applies_to(FIRST_NIC) and not rewritten_on_boot(ctx, c.path)]
    out = [Finding(f"{c.stack} gives {FIRST_NIC} a static address", c.evidence,
                   fix=f"configure {FIRST_NIC} with DHCP in {c.path}")
           for c in confs if c.method == "static"]
    out += [Finding(f"{c.stack} configures {FIRST_NIC} with DHCP but does not bring it up at "
                    "boot", c.evidence, fix=f"'auto {FIRST_NIC}' / ONBOOT=yes in {c.path}")
            for c in confs if c.method == "dhcp" and not c.onboot]
    if out or cloudinit_renders_network(ctx):
        return out
    if any(c.method == "dhcp" and c.onboot for c in confs):
        return []
    nm = nm_enabled(ctx)
    if nm and nm_auto_default(g):
        return []
    cfg = cloud_config(ctx)
    if cfg is None:
        why, evidence = "cloud-init is not installed", IFUPDOWN
    elif not cloudinit_enabled(ctx):
        why, evidence = "cloud-init is not enabled", "/etc/cloud"
    else:
        why = "cloud-init's network configuration is disabled"
        evidence = cfg.origin.get("network.config", cfg.origin.get("network", "/etc/cloud"))
    return [Finding(f"nothing configures {FIRST_NIC} with DHCP at boot ({why}, and no ifupdown, "
                    "netplan, NetworkManager, systemd-networkd or ifcfg configuration does)",
                    evidence)]


UDEV_RULES_DIRS = ("/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d",
                   "/lib/udev/rules.d")
UNMANAGED_RULE = re.compile(r'ENV\{NM_UNMANAGED\}\s*=\s*"1"')
VF_MATCH = re.compile(r'DRIVERS?=="[^"]*(hv_pci|mana|mlx4_core|mlx5_core)')
VF_DRIVERS = ("mlx4_core", "mlx5_core", "mana")
WA_RULE = "/usr/lib/udev/rules.d/68-azure-sriov-nm-unmanaged.rules"


def _unmanaged_rule(ctx: Context) -> str | None:
    g = guest(ctx)
    for path in dir_files(g, UDEV_RULES_DIRS, r".+\.rules"):
        for no, line in g.lines(path):
            if UNMANAGED_RULE.search(line) and VF_MATCH.search(line):
                return where(path, no)
    return None


def _unmanaged_conf(ctx: Context) -> str | None:
    g = guest(ctx)
    for path in [NM_CONF] + [p for d in NM_CONF_DIRS for p in g.glob(d, r".+\.conf")]:
        cp = read_ini(g, path)
        value = cp.get("keyfile", "unmanaged-devices", fallback="") if cp else ""
        if value and all(f"driver:{d}" in value for d in VF_DRIVERS):
            return path
    return None


@check(id="guest.network.an-nm-unmanaged",
       title="NetworkManager leaves the Accelerated Networking VFs alone",
       severity=Severity.WARNING, error_when=("accelerated_networking",),
       rationale="With Accelerated Networking the VM gets an SR-IOV virtual function (mlx4, mlx5 "
                 "or MANA) bonded transparently to the synthetic NIC; NetworkManager must not "
                 "manage it (it would run DHCP on it and break the bond). Azure ships a udev rule "
                 "marking it NM_UNMANAGED (WALinuxAgent's 68-azure-sriov-nm-unmanaged.rules, "
                 "azure-vm-utils' 10-azure-unmanaged-sriov.rules).",
       source=("WA-SRIOV", "RHEL: /etc/udev/rules.d/68-azure-sriov-nm-unmanaged.rules",
               "AVU: udev/10-azure-unmanaged-sriov.rules", "AN",
               "CIV: test_68_azure_sriov_nm_unmanaged_rules_file_content"),
       remediation="Install /etc/udev/rules.d/68-azure-sriov-nm-unmanaged.rules: "
                   'SUBSYSTEM=="net", DRIVERS=="hv_pci", ACTION=="add", ENV{NM_UNMANAGED}="1" '
                   "(or the azure-vm-utils package).",
       passes=[Example("NetworkManager not enabled (baseline)"),
               Example("WALinuxAgent's rule", files={
                   **NM_ON, WA_RULE: '# Accelerated Networking\nSUBSYSTEM=="net", '
                                     'DRIVERS=="hv_pci", ACTION=="add", '
                                     'ENV{NM_UNMANAGED}="1"\n'}),
               Example("azure-vm-utils' rule", files={
                   **NM_ON, "/usr/lib/udev/rules.d/10-azure-unmanaged-sriov.rules":
                       'SUBSYSTEM=="net", ACTION!="remove", DRIVERS=="mana|mlx4_core|mlx5_core",'
                       ' ATTR{flags}=="0x?[89ABCDEF]??", ENV{NM_UNMANAGED}="1", '
                       'ENV{AZURE_UNMANAGED_SRIOV}="1"\n'}),
               Example("unmanaged-devices by driver in NetworkManager.conf", files={
                   **NM_ON, NM_CONF: "[keyfile]\nunmanaged-devices=driver:mlx4_core;"
                                     "driver:mlx5_core;driver:mana\n"})],
       fails=[Example("NetworkManager enabled, no rule", files=NM_ON)])
def an_nm_unmanaged(ctx: Context) -> list[Finding]:
    nm = nm_enabled(ctx)
    if nm is None or _unmanaged_rule(ctx) or _unmanaged_conf(ctx):
        return []
    return [Finding("NetworkManager is enabled and no udev rule marks the Accelerated "
                    "Networking VFs NM_UNMANAGED", nm,
                    fix="add /etc/udev/rules.d/68-azure-sriov-nm-unmanaged.rules")]

