"""The network configuration readers (checks/netconfig.py) on the layouts of the distributions:
what each stack says about eth0, and the cases the catalog examples do not show."""

from __future__ import annotations

from vhdtool import checks
from vhdtool.checks.catalog import Verdict, run_check
from vhdtool.checks.examples import Example, context_for, symlink
from vhdtool.checks.netconfig import nic_configs, nm_auto_default

CATALOG = checks.load()
NO_CI_NET = {"/etc/cloud/cloud.cfg.d/99-disable-network-config.cfg":
             "network: {config: disabled}\n"}
NM_ON = {"/etc/systemd/system/multi-user.target.wants/NetworkManager.service":
         symlink("/lib/systemd/system/NetworkManager.service")}
NETWORKD_ON = {"/etc/systemd/system/multi-user.target.wants/systemd-networkd.service":
               symlink("/lib/systemd/system/systemd-networkd.service")}


def _confs(files: dict) -> list:
    return nic_configs(context_for(Example("t", files=files)))


def _dhcp(files: dict) -> Verdict:
    return run_check(CATALOG["guest.network.dhcp"], context_for(Example("t", files=files))).verdict


def test_ifupdown_source_directory_and_hotplug() -> None:
    confs = _confs({"/etc/network/interfaces": "source-directory interfaces.d\n",
                    "/etc/network/interfaces.d/eth0": "allow-hotplug eth0\niface eth0 inet dhcp\n",
                    "/etc/network/interfaces.d/skip.cfg": "iface eth9 inet static\n"})
    assert [(c.stack, c.name, c.method, c.onboot, c.line) for c in confs] == [
        ("ifupdown", "eth0", "dhcp", True, 2)]      # source-directory skips names with a dot


def test_netplan_etc_replaces_lib_and_mac_match_applies_to_no_new_nic() -> None:
    confs = _confs({"/lib/netplan/50-x.yaml": "network:\n  ethernets:\n    eth0:\n"
                                              "      addresses: [10.0.0.4/24]\n",
                    "/etc/netplan/50-x.yaml": "network:\n  ethernets:\n    nic:\n      match:\n"
                                              "        macaddress: 00:0d:3a:00:00:01\n"
                                              "      dhcp4: yes\n"})
    assert len(confs) == 1 and confs[0].path == "/etc/netplan/50-x.yaml"
    assert confs[0].mac == "00:0d:3a:00:00:01" and not confs[0].applies_to("eth0")
    assert _dhcp({**NO_CI_NET, "/etc/netplan/50-x.yaml": "network:\n  ethernets:\n    nic:\n"
                  "      match:\n        macaddress: 00:0d:3a:00:00:01\n      dhcp4: true\n"}) \
        is Verdict.FAIL


def test_networkd_counts_only_when_enabled_and_skips_container_files() -> None:
    files = {**NO_CI_NET, "/usr/lib/systemd/network/80-container-host0.network":
             "[Match]\nVirtualization=container\nName=host0\n\n[Network]\nDHCP=yes\n",
             "/etc/systemd/network/20-wired.network": "[Match]\nName=en* eth*\n\n[Network]\n"
                                                     "DHCP=yes\n"}
    assert _dhcp(files) is Verdict.FAIL                  # networkd is not enabled
    on = _confs({**files, **NETWORKD_ON})
    assert [(c.path, c.line, c.applies_to("eth0")) for c in on] == [
        ("/etc/systemd/network/20-wired.network", 5, True)]
    assert _dhcp({**files, **NETWORKD_ON}) is Verdict.PASS


def test_networkmanager_no_auto_default_needs_a_profile() -> None:
    conf = {"/etc/NetworkManager/conf.d/10-no-auto.conf": "[main]\nno-auto-default=*\n"}
    ctx = context_for(Example("t", files={**NM_ON, **conf}))
    assert not nm_auto_default(ctx.guest)
    assert _dhcp({**NO_CI_NET, **NM_ON, **conf}) is Verdict.FAIL
    profile = {"/etc/NetworkManager/system-connections/Wired.nmconnection":
               "[connection]\nid=Wired\ntype=ethernet\n[ipv4]\nmethod=auto\n"}
    assert _dhcp({**NO_CI_NET, **NM_ON, **conf, **profile}) is Verdict.PASS


def test_cloudinit_rendered_static_file_is_rewritten_on_boot() -> None:
    """cloud-init's own rendering of the build VM is replaced on the new VM's first boot; the
    same file with cloud-init's network disabled stays, and its static address counts."""
    rendered = {"/etc/network/interfaces": "source /etc/network/interfaces.d/*\n",
                "/etc/network/interfaces.d/50-cloud-init":
                    "# This file is generated from information provided by the datasource.  "
                    "Changes\n# to it will not persist across an instance reboot.\n"
                    "auto eth0\niface eth0 inet static\n    address 10.0.0.4/24\n"}
    assert _dhcp(rendered) is Verdict.PASS
    assert _dhcp({**rendered, **NO_CI_NET}) is Verdict.FAIL


def test_sudoers_include_and_relabel_permissive() -> None:
    r = run_check(CATALOG["guest.sudo.targetpw"], context_for(Example("t", files={
        "/etc/sudoers": "#include /etc/sudoers.local\nroot ALL=(ALL) ALL\n"
                        "@includedir /etc/sudoers.d\n",
        "/etc/sudoers.local": "Defaults:%wheel   targetpw\n",
        "/etc/sudoers.d/x.bak": "Defaults targetpw\n"})))
    assert [f.evidence for f in r.findings] == ["/etc/sudoers.local:1"]
    r = run_check(CATALOG["guest.selinux.relabel"], context_for(Example("t", files={
        "/.autorelabel": "", "/etc/selinux/config": "# c\nSELINUX=permissive\n"})))
    assert r.verdict is Verdict.FAIL and "/etc/selinux/config:2" in r.findings[0].message
