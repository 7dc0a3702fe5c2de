"""cloud-init's configuration merged as cloud-init merges it (cloud.cfg, then cloud.cfg.d/*.cfg in
lexical order, mappings merged recursively, lists and scalars replaced), and the verdicts of every
check that reads it on Azure settings split across drop-ins."""

from __future__ import annotations

import pytest

from vhdtool import checks
from vhdtool.checks.catalog import SPECIALIZED, Context, Profile, Verdict, run_check
from vhdtool.checks.cloudinit import cloud_config
from vhdtool.checks.gallery import derive
from vhdtool.checks.provisioning import cloudinit_provisions, provisioners

from .fakeguest import fake_guest

CATALOG = checks.load()
D = "/etc/cloud/cloud.cfg.d"
#: Azure settings split across drop-ins, a later one overriding one nested key
SPLIT = {
    f"{D}/90_dpkg.cfg": "datasource_list: [ Azure ]\n",
    f"{D}/91-azure.cfg": "datasource:\n  Azure:\n    apply_network_config: false\n"
                         "    data_dir: /var/lib/waagent\n",
    f"{D}/99-local.cfg": "datasource:\n  Azure:\n    apply_network_config: true\n"
                         "ssh_deletekeys: true\n",
}
#: the checks that read cloud-init's configuration, and their verdict on the baseline guest with
#: SPLIT applied (generalized)
READERS = {"guest.cloudinit.datasource": Verdict.PASS, "guest.provisioner.present": Verdict.PASS,
           "guest.provisioner.conflict": Verdict.PASS, "guest.waagent.config": Verdict.PASS,
           "guest.deprovision.ssh-host-keys-shared": Verdict.PASS}


def ctx_of(files, profile: Profile = Profile()) -> Context:
    return Context(profile=profile, disk=None, guest=fake_guest(files),
                   generations=frozenset({"V1", "V2"}), guest_requested=True)


def test_nested_keys_merge_across_files() -> None:
    """Fails on the old shallow merge (99-local.cfg's 'datasource' replaced 91-azure.cfg's)."""
    cfg = cloud_config(ctx_of(SPLIT))
    assert cfg.get("datasource", "Azure") == {"apply_network_config": True,
                                              "data_dir": "/var/lib/waagent"}
    assert cfg.origin["datasource.Azure.apply_network_config"] == f"{D}/99-local.cfg"
    assert cfg.origin["datasource.Azure.data_dir"] == f"{D}/91-azure.cfg"
    assert cfg.origin["datasource_list"] == f"{D}/90_dpkg.cfg"


def test_lists_and_scalars_are_replaced_in_lexical_order() -> None:
    cfg = cloud_config(ctx_of({
        "/etc/cloud/cloud.cfg": "datasource_list: [ NoCloud, Azure ]\nssh_deletekeys: true\n"
                                "system_info:\n  default_user: {name: debian, groups: [a, b]}\n",
        f"{D}/90_dpkg.cfg": None,
        f"{D}/b.cfg": "datasource_list: [ Azure ]\nsystem_info:\n  default_user:\n"
                      "    groups: [c]\n",
        f"{D}/A.cfg": "ssh_deletekeys: false\ndatasource_list: [ Ec2 ]\n",  # 'A' < 'b'
        f"{D}/notes.txt": "datasource_list: [ NoCloud ]\n"}))
    assert cfg.get("datasource_list") == ["Azure"]
    assert cfg.get("ssh_deletekeys") is False
    assert cfg.get("system_info", "default_user") == {"name": "debian", "groups": ["c"]}


def test_a_scalar_replaces_a_mapping_and_its_origins() -> None:
    cfg = cloud_config(ctx_of({**SPLIT, f"{D}/zz.cfg": "datasource: none\n"}))
    assert cfg.get("datasource") == "none" and cfg.get("datasource", "Azure") is None
    assert not [k for k in cfg.origin if k.startswith("datasource.")]


def test_conf_d_key_of_cloud_cfg_names_the_drop_in_directory() -> None:
    """Fails on the old reader: it read cloud.cfg.d whatever cloud.cfg said."""
    files = {"/etc/cloud/cloud.cfg": "conf_d: /etc/cloud/site.d\n",
             f"{D}/99-nocloud.cfg": "datasource_list: [ NoCloud ]\n",
             "/etc/cloud/site.d/90-azure.cfg": "datasource_list: [ Azure ]\n"}
    ctx = ctx_of(files)
    assert cloud_config(ctx).get("datasource_list") == ["Azure"]
    assert cloudinit_provisions(ctx)
    assert run_check(CATALOG["guest.cloudinit.datasource"], ctx).verdict is Verdict.PASS
    ctx = ctx_of({**files, "/etc/cloud/cloud.cfg": "conf_d: /etc/cloud/site.d\n",
                  "/etc/cloud/site.d/90-azure.cfg": "datasource_list: [ NoCloud ]\n"})
    assert run_check(CATALOG["guest.cloudinit.datasource"], ctx).verdict is Verdict.FAIL


@pytest.mark.parametrize("cid, verdict", sorted(READERS.items()))
def test_split_azure_settings_give_the_right_verdicts(cid, verdict) -> None:
    assert run_check(CATALOG[cid], ctx_of(SPLIT)).verdict is verdict


def test_split_settings_still_fail_where_a_later_file_drops_azure() -> None:
    ctx = ctx_of({**SPLIT, f"{D}/99-local.cfg": "datasource:\n  Azure:\n"
                  "    apply_network_config: true\ndatasource_list: [ NoCloud, None ]\n"})
    r = run_check(CATALOG["guest.cloudinit.datasource"], ctx)
    assert r.verdict is Verdict.FAIL
    assert r.findings[0].evidence == f"{D}/99-local.cfg:4"
    assert not cloudinit_provisions(ctx)
    # waagent defers to cloud-init (Provisioning.Agent=cloud-init): nobody provisions
    assert run_check(CATALOG["guest.provisioner.present"], ctx).verdict is Verdict.FAIL
    # cloud-init does not provision, so it does not regenerate the kept host keys
    keys = ctx_of({**SPLIT, f"{D}/99-local.cfg": "datasource_list: [ NoCloud ]\n",
                   "/etc/ssh/ssh_host_ed25519_key": "k"})
    shared = CATALOG["guest.deprovision.ssh-host-keys-shared"]
    assert run_check(shared, keys).verdict is Verdict.FAIL


def test_ssh_deletekeys_overridden_in_a_later_file() -> None:
    files = {**SPLIT, "/etc/ssh/ssh_host_ed25519_key": "k"}
    assert run_check(CATALOG["guest.deprovision.ssh-host-keys-shared"],
                     ctx_of(files)).verdict is Verdict.PASS
    files[f"{D}/zz-keep-keys.cfg"] = "ssh_deletekeys: false\n"
    assert run_check(CATALOG["guest.deprovision.ssh-host-keys-shared"],
                     ctx_of(files)).verdict is Verdict.FAIL


def test_provisioners_and_gallery_on_split_settings() -> None:
    ctx = ctx_of(SPLIT)
    ci = next(p for p in provisioners(ctx) if p.name == "cloud-init")
    assert ci.enabled and ci.provisions
    assert derive(ctx).os_state.value == "Generalized"
    spec = ctx_of(SPLIT, Profile(os_state=SPECIALIZED))
    assert run_check(CATALOG["guest.provisioner.specialized"], spec).verdict is Verdict.PASS
