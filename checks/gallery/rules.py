"""The ``gallery.*`` checks: what the author declares against what the disk supports.

They compare a :class:`~checks.gallery.declaration.Declaration` (carried by ``Profile.gallery``)
with :func:`~checks.gallery.derivation.derive`: a declared value the disk does not support is a
failure with the reason, never a silent fix.  They apply only when a declaration is present
(``vhdtool manifest``, ``check --manifest``).  The name, version and date checks read only the
declaration.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass

from ..catalog import (SPECIALIZED, V1, V2, Applies, Context, Example, Finding, NotApplicable,
                       Profile, Severity, check)
from ..examples import KVER, elf, modules_dep, pe
from ..guestlib import WAAGENT_CONF
from .declaration import (DEFINITION_RE, GALLERY_RE, OS_STATES, SIGNED_TYPES, Declaration,
                          declared_accelerated, declared_controllers, declared_security_type,
                          identifier_problems, parse_date, version_problems)
from .derivation import Definition, Derivation, Property, derive

@dataclass(frozen=True)
class DeclaredApplies(Applies):
    """Applies like :class:`Applies`, and only when the profile carries a gallery declaration."""

    def why_not(self, profile: Profile, generations: frozenset[str]) -> str | None:
        if profile.gallery is None:
            return "applies when a gallery definition is declared (vhdtool manifest, " \
                   "vhdtool check --manifest)"
        return super().why_not(profile, generations)

    def describe(self) -> str:
        return super().describe() + ", gallery declared"


DECLARED = DeclaredApplies()
D = Declaration()
UNSIGNED = {"/boot/efi/EFI/BOOT/BOOTX64.EFI": pe(None)}
NO_NVME = {f"/lib/modules/{KVER}/modules.builtin": ""}
NO_MANA = modules_dep("mana")
ARM64_SYSTEMD = {"/usr/lib/systemd/systemd": elf(2, 0xB7)}


def _derived(ctx: Context) -> Derivation:
    if ctx.guest is None:
        raise NotApplicable(ctx.guest_skip_reason)
    return derive(ctx)


def _targets(ctx: Context, derived: Derivation) -> list[str]:
    """Where a Gen2-only feature is declared: the declared generations, else V2 when the disk
    boots it (a hybrid disk's V1 definition simply goes without), else what the disk boots."""
    declared = ctx.profile.generations
    if declared is not None:
        return sorted(declared)
    return [V2] if V2 in derived.generations.value else list(derived.generations.value)


def _gen2_only(ctx: Context, want: str, feature: str,
               prop: Callable[[Definition], Property], needs: str) -> list[Finding]:
    """Findings for a declared Gen2-only feature on each targeted generation: ``needs`` must be
    among the definition's controller types, or (a security type) the definition must be signed."""
    derived = _derived(ctx)
    out = []
    for g in _targets(ctx, derived):
        if g == V1:
            out.append(Finding(f"{want} needs Gen2: it cannot be combined with V1", feature))
            continue
        d = derived.definition(g)
        if d is None:
            out.append(Finding(f"{g}: declared {want}, but the disk does not boot {g}: "
                               f"{derived.generations.why_not(g)}", feature))
            continue
        p = prop(d)
        have = ",".join(p.value) if isinstance(p.value, tuple) else str(p.value)
        if not (needs in p.value if isinstance(p.value, tuple) else p.value in SIGNED_TYPES):
            out.append(Finding(f"{g}: declared {want}, but the disk supports {have}: "
                               f"{p.why_not(needs)}", feature))
    return out


@check(id="gallery.os-state", title="The declared OS state is the one the disk is prepared for",
       severity=Severity.ERROR, applies=DECLARED,
       rationale="osState is immutable on the image definition and must match the source: a "
                 "generalized image registered as specialized times out in provisioning (or has "
                 "no account to log in with); a specialized one registered as generalized fails "
                 "provisioning. Generalized needs every deprovisioning check to pass and a "
                 "provisioner; Specialized keeps its identity or disables provisioning.",
       source=("ACG-OV", "PROVE"),
       remediation="Declare the OS state the disk is prepared for (--os-state), or deprovision "
                   "the image (waagent -deprovision+user, cloud-init clean) for Generalized.",
       passes=[Example("deprovisioned image declared generalized", profile={"gallery": D}),
               Example("kept host keys, provisioning disabled, declared specialized",
                       profile={"gallery": D, "os_state": SPECIALIZED},
                       files={"/etc/ssh/ssh_host_ed25519_key": "k", "/etc/machine-id": "4c7a\n",
                              WAAGENT_CONF: "Provisioning.Agent=disabled\n",
                              "/etc/cloud/cloud-init.disabled": ""})],
       fails=[Example("waagent state left, declared generalized", profile={"gallery": D},
                      files={"/var/lib/waagent/provisioned": ""}),
              Example("deprovisioned image declared specialized",
                      profile={"gallery": D, "os_state": SPECIALIZED})])
def os_state(ctx: Context) -> list[Finding]:
    prop = _derived(ctx).os_state
    want = OS_STATES[ctx.profile.os_state]
    if prop.value == want:
        return []
    is_ = f"the disk is {prop.value}" if prop.value else "the disk is ready as neither"
    return [Finding(f"declared {want}, but {is_}: {prop.why_not(want)}", "osState",
                    fix=f"--os-state {prop.value.lower()}" if prop.value else None)]


@check(id="gallery.generation", title="The declared Hyper-V generation is one the disk boots",
       severity=Severity.ERROR, applies=DECLARED,
       rationale="hyperVGeneration is immutable on the image definition and the upload disk; a "
                 "mismatch gives 'different Hypervisor generation' or a VM that never boots. V1 "
                 "needs a BIOS-bootable layout, V2 an ESP with the removable-media loader; Arm64 "
                 "VMs are Gen2 only.",
       source=("ACG-OV", "GEN2", "DPS6"),
       remediation="Declare a generation the disk boots (--generation auto), or add the missing "
                   "boot path (see boot.g1.bios, boot.g2.esp, guest.efi.fallback).",
       passes=[Example("hybrid disk declared V1", profile={"gallery": D,
                                                            "generations": frozenset({V1})}),
               Example("generation not declared (auto)", profile={"gallery": D})],
       fails=[Example("UEFI-only disk declared V1", disk={"mbr_boot_code": False},
                      profile={"gallery": D, "generations": frozenset({V1})}),
              Example("no removable-media loader, declared V2",
                      files={"/boot/efi/EFI/BOOT": None},
                      profile={"gallery": D, "generations": frozenset({V2})}),
              Example("Arm64 guest declared V1", files=ARM64_SYSTEMD,
                      profile={"gallery": D, "generations": frozenset({V1})})])
def generation(ctx: Context) -> list[Finding]:
    derived = _derived(ctx)
    if ctx.profile.generations is None:
        if not derived.generations.value:
            return [Finding("the disk boots neither V1 nor V2: " +
                            "; ".join(derived.generations.ruled_out.values()), "hyperVGeneration")]
        return []
    return [Finding(f"declared {g}, but the disk does not boot it: "
                    f"{derived.generations.why_not(g)}", "hyperVGeneration")
            for g in sorted(ctx.profile.generations) if g not in derived.generations.value]


@check(id="gallery.security-type",
       title="The declared security type is one the boot chain supports",
       severity=Severity.ERROR, applies=DECLARED,
       rationale="Trusted Launch (and confidential VMs) boot with Secure Boot on Gen2 only: "
                 "TrustedLaunchSupported needs a V2 definition and a shim signed by the "
                 "Microsoft UEFI CA. Confidential VM suitability cannot be derived offline; "
                 "TrustedLaunch and ConfidentialVM are for private galleries only.",
       source=("ACG-OV", "TLF", "TL"),
       remediation="Declare Standard, or install the distribution's Microsoft-signed shim as "
                   "EFI/BOOT/BOOTX64.EFI and register a V2 definition.",
       passes=[Example("signed shim, TrustedLaunchSupported",
                       profile={"gallery": Declaration(security_type="TrustedLaunchSupported")}),
               Example("unsigned loader, Standard", files=UNSIGNED,
                       profile={"gallery": Declaration(security_type="Standard")})],
       fails=[Example("unsigned loader, TrustedLaunchSupported", files=UNSIGNED,
                      profile={"gallery": Declaration(security_type="TrustedLaunchSupported")}),
              Example("Trusted Launch declared with Gen1",
                      profile={"gallery": Declaration(security_type="TrustedLaunchSupported"),
                               "generations": frozenset({V1})})])
def security_type(ctx: Context) -> list[Finding]:
    want = declared_security_type(ctx.profile)
    if want is None:
        raise NotApplicable("no security type declared")
    if want not in SIGNED_TYPES:
        return []
    return _gen2_only(ctx, want, "features SecurityType", lambda d: d.security_type, want)


@check(id="gallery.disk-controller",
       title="NVMe is declared only when the initramfs, fstab and command line allow it",
       severity=Severity.ERROR, applies=DECLARED,
       rationale="On NVMe VM sizes the OS disk is an NVMe namespace: the nvme drivers must load "
                 "at boot, fstab must not name /dev/sd*, and nvme_core.io_timeout=240 is set. "
                 "NVMe is never offered on Gen1.",
       source=("ACG-OV", "NVF", "NVME"),
       remediation="Declare DiskControllerTypes=SCSI, or add nvme to the initramfs, use UUID= "
                   "in fstab and add nvme_core.io_timeout=240 (see guest.drivers.nvme).",
       passes=[Example("nvme built in, SCSI,NVMe",
                       profile={"gallery": Declaration(disk_controllers=("SCSI", "NVMe"))}),
               Example("no nvme driver, SCSI only", files=NO_NVME,
                       profile={"gallery": Declaration(disk_controllers=("SCSI",))})],
       fails=[Example("no nvme driver, SCSI,NVMe declared", files=NO_NVME,
                      profile={"gallery": Declaration(disk_controllers=("SCSI", "NVMe"))}),
              Example("NVMe declared with Gen1",
                      profile={"gallery": Declaration(disk_controllers=("SCSI", "NVMe")),
                               "generations": frozenset({V1})})])
def disk_controller(ctx: Context) -> list[Finding]:
    want = declared_controllers(ctx.profile)
    if want is None:
        raise NotApplicable("no disk controller types declared")
    if "NVMe" not in want:
        return []
    return _gen2_only(ctx, ",".join(want), "features DiskControllerTypes",
                      lambda d: d.disk_controllers, "NVMe")


@check(id="gallery.accelerated-networking",
       title="Accelerated Networking is declared only when its drivers are installed",
       severity=Severity.ERROR, applies=DECLARED,
       rationale="IsAcceleratedNetworkSupported=True lets VMs get a Mellanox or MANA virtual "
                 "function; without mlx4/mlx5/mana and pci-hyperv the VM silently falls back to "
                 "the synthetic NIC.",
       source=("ACG-OV", "AN", "MANA"),
       remediation="Declare IsAcceleratedNetworkSupported=False, or install a kernel with mana, "
                   "mlx4_en, mlx5_core and pci-hyperv.",
       passes=[Example("drivers present, declared True",
                       profile={"gallery": Declaration(accelerated_networking=True)}),
               Example("declared False", profile={"gallery": Declaration(
                   accelerated_networking=False)})],
       fails=[Example("mana missing, declared True",
                      files=NO_MANA,
                      profile={"gallery": Declaration(accelerated_networking=True)})])
def accelerated_networking(ctx: Context) -> list[Finding]:
    want = declared_accelerated(ctx.profile)
    if want is None:
        raise NotApplicable("Accelerated Networking support not declared")
    prop = _derived(ctx).accelerated_networking
    if want and prop.value is not True:
        return [Finding(f"declared True, but {prop.why_not('True')}",
                        "features IsAcceleratedNetworkSupported")]
    return []


# -- names, version and dates (no subject needed: they read only the declaration) ------------------

NAMES = DeclaredApplies(roles=frozenset({"os", "data"}))


def _decl(ctx: Context) -> Declaration:
    decl: Declaration = ctx.profile.gallery
    return decl


@check(id="gallery.identifier", title="Publisher, offer and SKU follow the gallery's naming rules",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="The image identifier (publisher <= 128 characters, offer and SKU <= 64) uses "
                 "only letters, digits, '.', '_' and '-' and does not end in '.'; it is immutable "
                 "and unique per gallery.",
       source=("ACG-OV",),
       remediation="Choose names within the rules, e.g. from /etc/os-release ID and VERSION_ID "
                   "(publisher myorg, offer debian, sku 12-gen2).",
       passes=[Example("myorg / debian-12 / 12-gen2", profile={"gallery": Declaration(
           publisher="myorg", offer="debian-12", sku="12-gen2")})],
       fails=[Example("SKU ending in '.'", profile={"gallery": Declaration(
           publisher="myorg", offer="debian", sku="12.")}),
              Example("space in the offer and a 129-character publisher", profile={
                  "gallery": Declaration(publisher="p" * 129, offer="debian 12", sku="12")})])
def identifier(ctx: Context) -> list[Finding]:
    decl = _decl(ctx)
    parts = [("publisher", decl.publisher, 128), ("offer", decl.offer, 64),
             ("sku", decl.sku, 64)]
    if all(v is None for _, v, _ in parts):
        raise NotApplicable("no publisher, offer or SKU declared")
    out = [Finding(f"{kind} not declared (the identifier needs all three)", kind)
           for kind, v, _ in parts if v is None]
    for kind, v, limit in parts:
        if v is not None:
            out += [Finding(p, kind) for p in identifier_problems(kind, v, limit)]
    return out


@check(id="gallery.names", title="The gallery and image definition names are valid",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="An image definition name matches ^[^_\\W][\\w-._]{0,79}(?<![-.])$ (starts with "
                 "a letter or digit, at most 80 characters, does not end in '-' or '.'); a "
                 "gallery name has at most 80 letters, digits, '_' or '.', starting and ending "
                 "with a letter or digit.",
       source=("ACG-OV",),
       remediation="Rename: e.g. gallery my_gallery, definition debian-12-gen2.",
       passes=[Example("my_gallery / debian-12-gen2", profile={"gallery": Declaration(
           gallery="my_gallery", definition="debian-12-gen2")})],
       fails=[Example("definition ending in '-'", profile={"gallery": Declaration(
           definition="debian-12-")}),
              Example("gallery name with '-'", profile={"gallery": Declaration(
                  gallery="my-gallery")})])
def names(ctx: Context) -> list[Finding]:
    decl = _decl(ctx)
    if decl.gallery is None and decl.definition is None:
        raise NotApplicable("no gallery or definition name declared")
    out = []
    if decl.definition is not None and not DEFINITION_RE.match(decl.definition):
        out.append(Finding(f"image definition name {decl.definition!r} does not match "
                           f"{DEFINITION_RE.pattern} (1-80 characters, no leading '_', "
                           f"no trailing '-' or '.')", "definition"))
    if decl.gallery is not None and not GALLERY_RE.match(decl.gallery):
        out.append(Finding(f"gallery name {decl.gallery!r}: 1-80 letters, digits, '_' or '.', "
                           f"starting and ending with a letter or digit", "gallery"))
    return out


@check(id="gallery.version", title="The image version is MAJOR.MINOR.PATCH of 32-bit integers",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="An image version name is MAJOR.MINOR.PATCH, digits and periods only, each part "
                 "a 32-bit integer; 'latest' is the highest Major, then Minor, then Patch.",
       source=("ACG-OV", "IMGV"),
       remediation="Use e.g. 1.0.0, or a date as 2026.1125.0.",
       passes=[Example("2026.1125.0", profile={"gallery": Declaration(version="2026.1125.0")})],
       fails=[Example("v1.0", profile={"gallery": Declaration(version="v1.0")}),
              Example("PATCH past 2^31-1", profile={"gallery": Declaration(
                  version="1.0.2147483648")})])
def version(ctx: Context) -> list[Finding]:
    v = _decl(ctx).version
    if v is None:
        raise NotApplicable("no image version declared")
    return [Finding(p, "version") for p in version_problems(v)]


@check(id="gallery.end-of-life", title="The end-of-life date is a valid date in the future",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="endOfLifeDate is ISO-8601 and must lie in the future (it is informational: "
                 "Azure still deploys the image after it).",
       source=("ACG-OV",),
       remediation="Give a future date, e.g. the distribution's end of support (2028-06-30 for "
                   "Debian 12).",
       passes=[Example("2999-12-31", profile={"gallery": Declaration(end_of_life="2999-12-31")})],
       fails=[Example("2020-01-01", profile={"gallery": Declaration(end_of_life="2020-01-01")}),
              Example("not a date", profile={"gallery": Declaration(end_of_life="June 2028")})])
def end_of_life(ctx: Context) -> list[Finding]:
    text = _decl(ctx).end_of_life
    if text is None:
        raise NotApplicable("no end-of-life date declared")
    try:
        when = parse_date(text)
    except ValueError:
        return [Finding(f"end-of-life date {text!r} is not an ISO-8601 date (YYYY-MM-DD)",
                        "endOfLifeDate")]
    today = datetime.datetime.now(datetime.timezone.utc).date()
    if when <= today:
        return [Finding(f"end-of-life date {when} is not in the future (today is {today})",
                        "endOfLifeDate")]
    return []
