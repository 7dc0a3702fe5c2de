"""The gallery derivation (checks.gallery.derive) on synthetic disk facts and the fake guest, and
the validation of declared names, versions and dates: pass and fail cases."""

from __future__ import annotations

import pytest

from vhdtool.checks.catalog import SPECIALIZED, V1, V2, Context, Profile, Verdict, run_check
from vhdtool.checks.disk import baseline_disk, with_partition, without_partition
from vhdtool.checks.examples import context_for
from tests.checks.fakeguest import fake_guest
from vhdtool.checks.gallery import (Declaration, declare, derive, identifier_problems, parse_date,
                                    version_problems)
from vhdtool.checks.gallery.rules import ARM64_SYSTEMD, NO_MANA, NO_NVME, UNSIGNED
from vhdtool.checks.provisioning import dpkg_versions, provisioners
from vhdtool.checks.guestlib import WAAGENT_CONF
from vhdtool import checks
CATALOG = checks.load()


def ctx_of(files=None, disk=None, profile: Profile = Profile(), guest: bool = True) -> Context:
    return Context(profile=profile, disk=baseline_disk(disk),
                   guest=fake_guest(files) if guest else None,
                   generations=profile.generations or frozenset({V1, V2}),
                   guest_skip_reason="guest not opened (test)")


def sources(prop) -> set[str]:
    return {e.source for e in prop.evidence}


def test_baseline_supports_everything_with_evidence() -> None:
    d = derive(ctx_of())
    assert d.os_type.value == "Linux" and d.architecture.value == "x64"
    assert d.generations.value == (V1, V2)
    assert {"boot.g1.bios", "boot.g2.esp", "guest.efi.fallback"} <= sources(d.generations)
    assert d.os_state.value == "Generalized"
    assert "guest.provisioner.present" in sources(d.os_state)
    assert d.accelerated_networking.value is True
    v1, v2 = d.definition(V1), d.definition(V2)
    assert (v1.security_type.value, v1.disk_controllers.value) == ("Standard", ("SCSI",))
    assert v2.security_type.value == "TrustedLaunchSupported"
    assert sources(v2.security_type) == {"guest.trusted-launch.shim-signed"}
    assert v2.disk_controllers.value == ("SCSI", "NVMe")
    assert sources(v2.disk_controllers) == {"guest.drivers.nvme", "guest.fstab.stable-names",
                                            "guest.cmdline.nvme-timeout"}
    assert all(e.verdict in ("pass", "fact") for e in d.generations.evidence)


@pytest.mark.parametrize("disk, gens, reason", [
    ({"partitions": without_partition(2)}, (V1,), "no EFI system partition"),
    ({"mbr_boot_code": False}, (V2,), "sector 0 has no boot code"),
    ({"partitions": without_partition(1)}, (V2,), "without a BIOS boot partition"),
    ({"partitions": with_partition(2, fs=None)}, (V1,), "not FAT"),
])
def test_generation_from_layout(disk, gens, reason) -> None:
    d = derive(ctx_of(disk=disk))
    assert d.generations.value == gens
    ruled = " ".join(d.generations.ruled_out.values())
    assert reason in ruled
    assert [x.generation for x in d.definitions] == list(gens)


def test_gen1_only_disk_gets_no_gen2_features() -> None:
    d = derive(ctx_of(disk={"partitions": without_partition(2)}))
    (only,) = d.definitions
    assert only.generation == V1
    assert only.security_type.value == "Standard" and only.disk_controllers.value == ("SCSI",)
    assert "Gen2" in only.security_type.ruled_out["TrustedLaunchSupported"]
    assert "Gen1" in only.disk_controllers.ruled_out["NVMe"]


def test_arm64_is_gen2_only() -> None:
    d = derive(ctx_of({**ARM64_SYSTEMD, "/boot/efi/EFI/BOOT/BOOTX64.EFI": None,
                       "/boot/efi/EFI/BOOT/BOOTAA64.EFI": b"MZ"}))
    assert d.architecture.value == "Arm64"
    assert d.generations.value == (V2,)
    assert d.generations.ruled_out[V1] == "Arm64 VMs are Gen2 only"


def test_fallback_loader_missing_rules_out_v2() -> None:
    d = derive(ctx_of({"/boot/efi/EFI/BOOT": None}))
    assert d.generations.value == (V1,)
    assert "guest.efi.fallback" in d.generations.ruled_out[V2]


def test_unsigned_loader_is_standard() -> None:
    v2 = derive(ctx_of(UNSIGNED)).definition(V2)
    assert v2.security_type.value == "Standard"
    assert "no Authenticode signature" in v2.security_type.ruled_out["TrustedLaunchSupported"]


@pytest.mark.parametrize("files, failing", [
    (NO_NVME, "guest.drivers.nvme"),
    ({"/etc/fstab": "/dev/sda1 / ext4 defaults 0 1\n"}, "guest.fstab.stable-names"),
    ({"/etc/default/grub": 'GRUB_CMDLINE_LINUX="console=ttyS0"\n',
      "/boot/grub/grub.cfg": "menuentry 'x' {\n\tlinux\t/boot/vmlinuz-6.1.0-56-cloud-amd64 "
                             "console=ttyS0\n}\n"}, "guest.cmdline.nvme-timeout"),
])
def test_nvme_needs_initramfs_fstab_and_cmdline(files, failing) -> None:
    v2 = derive(ctx_of(files)).definition(V2)
    assert v2.disk_controllers.value == ("SCSI",)
    assert failing in v2.disk_controllers.ruled_out["NVMe"]


def test_accelerated_networking_needs_mana() -> None:
    d = derive(ctx_of(NO_MANA))
    assert d.accelerated_networking.value is False
    assert "mana" in d.accelerated_networking.ruled_out["True"]


SPECIALIZED_FILES = {"/etc/ssh/ssh_host_ed25519_key": "k",
                     WAAGENT_CONF: "Provisioning.Agent=disabled\n",
                     "/etc/cloud/cloud-init.disabled": ""}


def test_os_state_specialized_when_identity_kept_and_provisioning_disabled() -> None:
    d = derive(ctx_of(SPECIALIZED_FILES))
    assert d.os_state.value == "Specialized"
    details = " ".join(str(e) for e in d.os_state.evidence)
    assert "Provisioning.Agent=disabled" in details and "ssh_host_ed25519_key" in details
    assert "guest.provisioner.present" in d.os_state.ruled_out["Generalized"]


def test_os_state_neither_when_state_left_and_no_identity() -> None:
    d = derive(ctx_of({"/var/lib/waagent/provisioned": ""}))
    assert d.os_state.value is None
    assert "guest.deprovision.waagent-state" in d.os_state.ruled_out["Generalized"]
    assert "neither identity kept" in d.os_state.ruled_out["Specialized"]


def test_without_guest_only_the_layout_is_derived() -> None:
    d = derive(ctx_of(guest=False))
    assert d.generations.value == (V1, V2)
    assert d.os_state.value is d.architecture.value is d.os_type.value is None
    assert d.definition(V2).security_type.value == "Standard"
    assert "not verified" in d.definition(V2).security_type.ruled_out["TrustedLaunchSupported"]
    assert d.definition(V2).disk_controllers.value == ("SCSI",)


# -- declared values against the derivation (the gallery.* checks) ---------------------------------

def verdict(cid: str, files=None, disk=None, profile: Profile = Profile(), **decl) -> tuple:
    r = run_check(CATALOG[cid], ctx_of(files, disk, declare(profile, Declaration(**decl))))
    return r.verdict, " ".join(f.message for f in r.findings)


def test_declared_trusted_launch_on_gen1_disk_is_refused() -> None:
    v, why = verdict("gallery.security-type", disk={"partitions": without_partition(2)},
                     security_type="TrustedLaunchSupported")
    assert v is Verdict.FAIL and "Gen2" in why


def test_declared_nvme_with_explicit_gen1_is_refused_even_on_hybrid() -> None:
    v, why = verdict("gallery.disk-controller", profile=Profile(generations=frozenset({V1})),
                     disk_controllers=("SCSI", "NVMe"))
    assert v is Verdict.FAIL and "needs Gen2: it cannot be combined with V1" in why


def test_declared_trusted_launch_on_a_generation_the_disk_does_not_boot() -> None:
    v, why = verdict("gallery.security-type", disk={"partitions": without_partition(2)},
                     profile=Profile(generations=frozenset({V2})),
                     security_type="TrustedLaunchSupported")
    assert v is Verdict.FAIL and "does not boot V2" in why and "boot.g2.esp" in why


def test_declared_nvme_on_hybrid_auto_targets_v2() -> None:
    assert verdict("gallery.disk-controller", disk_controllers=("SCSI", "NVMe"))[0] is Verdict.PASS


def test_declared_specialized_matches_specialized_disk() -> None:
    assert verdict("gallery.os-state", SPECIALIZED_FILES,
                   profile=Profile(os_state=SPECIALIZED))[0] is Verdict.PASS
    v, why = verdict("gallery.os-state", SPECIALIZED_FILES)
    assert v is Verdict.FAIL and "declared Generalized, but the disk is Specialized" in why


def test_declaration_sets_the_features_whose_checks_must_run() -> None:
    p = declare(Profile(), Declaration(security_type="TrustedLaunchSupported",
                                       disk_controllers=("SCSI", "NVMe"),
                                       accelerated_networking=True))
    assert p.features == {"trusted_launch", "nvme", "accelerated_networking"}
    assert declare(Profile(), Declaration(security_type="Standard")).features == frozenset()


def test_gallery_checks_skip_without_a_declaration() -> None:
    r = run_check(CATALOG["gallery.os-state"], ctx_of())
    assert r.verdict is Verdict.SKIP and "declared" in (r.reason or "")


def test_bad_declaration_values_are_refused() -> None:
    with pytest.raises(ValueError):
        Declaration(security_type="TrustedLaunchSupport")
    with pytest.raises(ValueError):
        Declaration(disk_controllers=("IDE",))


@pytest.mark.parametrize("version, ok", [
    ("0.0.0", True), ("2147483647.2147483647.2147483647", True), ("1.0.2147483648", False),
    ("1.0", False), ("1.0.0.0", False), ("v1.0.0", False), ("1.-1.0", False), ("latest", False),
])
def test_version_names(version: str, ok: bool) -> None:
    assert (version_problems(version) == []) is ok


@pytest.mark.parametrize("value, limit, ok", [
    ("Canonical", 128, True), ("0001-com-ubuntu-server-jammy", 64, True), ("a" * 64, 64, True),
    ("a" * 65, 64, False), ("12.", 64, False), ("debian 12", 64, False), ("déb", 64, False),
    ("", 64, False),
])
def test_identifier_rules(value: str, limit: int, ok: bool) -> None:
    assert (identifier_problems("sku", value, limit) == []) is ok


@pytest.mark.parametrize("definition, ok", [
    ("debian-12", True), ("a", True), ("x" * 80, True), ("x" * 81, False), ("_deb", False),
    ("deb.", False), ("deb-", False), ("-deb", False), ("deb 12", False),
])
def test_definition_names(definition: str, ok: bool) -> None:
    v, why = verdict("gallery.names", definition=definition)
    assert (v is Verdict.PASS) is ok, why


@pytest.mark.parametrize("gallery, ok", [
    ("my_gallery", True), ("g.1", True), ("g" * 80, True), ("g" * 81, False), ("my-gallery", False),
    ("_g", False), ("g_", False),
])
def test_gallery_names(gallery: str, ok: bool) -> None:
    assert (verdict("gallery.names", gallery=gallery)[0] is Verdict.PASS) is ok


def test_identifier_needs_all_three() -> None:
    v, why = verdict("gallery.identifier", publisher="myorg")
    assert v is Verdict.FAIL and "offer not declared" in why and "sku not declared" in why


def test_end_of_life_dates() -> None:
    assert parse_date("2028-06-30T00:00:00Z").isoformat() == "2028-06-30"
    assert verdict("gallery.end-of-life", end_of_life="2999-01-01T00:00:00Z")[0] is Verdict.PASS
    assert verdict("gallery.end-of-life", end_of_life="1999-01-01")[0] is Verdict.FAIL
    assert verdict("gallery.end-of-life", end_of_life="30/06/2028")[0] is Verdict.FAIL


DPKG = """Package: cloud-init
Status: install ok installed
Version: 22.4.2-1+deb12u1

Package: waagent
Status: deinstall ok config-files
Version: 2.7.3.0-4.1

Package: openssh-server
Status: install ok installed
Version: 1:9.2p1-2
"""


def test_dpkg_versions_only_installed_packages() -> None:
    assert dpkg_versions(DPKG, ["cloud-init", "waagent"]) == {"cloud-init": "22.4.2-1+deb12u1"}


def test_provisioners_from_the_package_db_and_version_py() -> None:
    ctx = ctx_of({"/var/lib/dpkg/status": DPKG})
    got = {p.name: p for p in provisioners(ctx)}
    assert got["cloud-init"].version == "22.4.2-1+deb12u1" and got["cloud-init"].provisions
    # waagent is not installed per dpkg here: its version comes from version.py
    assert got["waagent"].version == "2.9.0.4"
    assert got["waagent"].version_from.endswith("version.py")
    assert got["waagent"].enabled and not got["waagent"].provisions   # Provisioning.Agent=cloud-init


def test_examples_context_is_the_same_baseline() -> None:
    """The catalog examples and these tests start from the same baseline."""
    assert derive(context_for(None)).generations.value == derive(ctx_of()).generations.value
