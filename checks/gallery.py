"""The Azure Compute Gallery definition a disk supports, derived from its facts, and the checks of
what the author declares against it.

:func:`derive` decides each gallery property from the disk facts and the guest, and names the
evidence behind it: the checks of the catalog that decide it, run again on the same context (their
cached guest facts shared) with the profile the property needs -- Trusted Launch intended for
``SecurityType``, NVMe for ``DiskControllerTypes`` and so on.  A hybrid disk (BIOS boot partition
and ESP) yields one definition per generation, each with the features that generation allows
(Trusted Launch and NVMe only on V2), so impossible combinations are never derived.

The ``gallery.*`` checks compare a :class:`Declaration` (carried by ``Profile.gallery``) with the
derivation: a declared value the disk does not support is a failure with the reason, never a silent
fix.  They apply only when a declaration is present (``vhdtool manifest``, ``check --manifest``).

References:
  ../shared/reference/azure-requirements.md section 2 (each property, its evidence, the accepted
  values and names: ACG, ACG-OV, ACG-TS, IMGV, GEN2, TLF, NVF, AN, MANA, DPS6); section 1 for the
  checks each property rests on.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .catalog import (GENERALIZED, SPECIALIZED, V1, V2, CATALOG, Applies, Context, Example,
                      Finding, NotApplicable, Profile, Result, Severity, Verdict, check, run_check)
from .disk import ESP_TYPES, GPT_BIOS_BOOT, supported_generations
from .fakeguest import DISK_MODULES, ELF_X86_64, KVER, pe_image
from .guest_prov import cloudinit_provisions
from .guestlib import (WAAGENT_CONF, cloud_config, cloudinit_enabled, guest, memo,
                       provisioning_agent, waagent_conf, waagent_enabled)

SECURITY_TYPES = ("Standard", "TrustedLaunchSupported", "TrustedLaunch", "ConfidentialVmSupported",
                  "ConfidentialVM", "TrustedLaunchAndConfidentialVmSupported")
#: security types that boot with Secure Boot and vTPM: they need Gen2 and a signed boot chain
SIGNED_TYPES = frozenset(SECURITY_TYPES[1:])
CONFIDENTIAL = frozenset(t for t in SECURITY_TYPES if "Confidential" in t)
PRIVATE_ONLY = frozenset({"TrustedLaunch", "ConfidentialVM"})
CONTROLLERS = ("SCSI", "NVMe")
ARCHITECTURES = {"x86_64": "x64", "aarch64": "Arm64"}
OS_STATES = {GENERALIZED: "Generalized", SPECIALIZED: "Specialized"}
INT32_MAX = 2**31 - 1
TL = frozenset({"trusted_launch"})
NVME = frozenset({"nvme"})
AN = frozenset({"accelerated_networking"})
SOURCE = "azure-requirements.md section 2 (ACG, ACG-OV, ACG-TS)"


# -- what the author declares ------------------------------------------------------------------

@dataclass(frozen=True)
class Declaration:
    """Gallery values the author declares; None = not declared (the derived value is used).

    The OS state and the generations are declared in the :class:`~checks.catalog.Profile`.
    """

    security_type: str | None = None
    disk_controllers: tuple[str, ...] | None = None
    accelerated_networking: bool | None = None
    publisher: str | None = None
    offer: str | None = None
    sku: str | None = None
    gallery: str | None = None
    definition: str | None = None
    version: str | None = None
    end_of_life: str | None = None      #: ISO-8601 date (or date-time)

    def __post_init__(self) -> None:
        if self.security_type is not None and self.security_type not in SECURITY_TYPES:
            raise ValueError(f"security type must be one of {', '.join(SECURITY_TYPES)}")
        for c in self.disk_controllers or ():
            if c not in CONTROLLERS:
                raise ValueError(f"disk controller {c!r} is not SCSI or NVMe")

    def __repr__(self) -> str:       # only what is declared (docs and reports show examples)
        given = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"Declaration({given})"

    def features(self) -> frozenset[str]:
        """The catalog features the declaration intends (so the checks behind them run)."""
        out = set()
        if self.security_type in SIGNED_TYPES:
            out.add("trusted_launch")
        if "NVMe" in (self.disk_controllers or ()):
            out.add("nvme")
        if self.accelerated_networking:
            out.add("accelerated_networking")
        return frozenset(out)

    def as_dict(self) -> dict[str, Any]:
        return {"securityType": self.security_type,
                "diskControllerTypes": list(self.disk_controllers)
                if self.disk_controllers is not None else None,
                "isAcceleratedNetworkSupported": self.accelerated_networking,
                "publisher": self.publisher, "offer": self.offer, "sku": self.sku,
                "gallery": self.gallery, "definition": self.definition,
                "version": self.version, "endOfLifeDate": self.end_of_life}


def declare(profile: Profile, declaration: Declaration) -> Profile:
    """``profile`` carrying ``declaration``, with the features the declaration intends added."""
    return replace(profile, gallery=declaration,
                   features=profile.features | declaration.features())


def declared_security_type(profile: Profile) -> str | None:
    decl = profile.gallery
    if decl is not None and decl.security_type is not None:
        return str(decl.security_type)
    return "TrustedLaunchSupported" if profile.has("trusted_launch") else None


def declared_controllers(profile: Profile) -> tuple[str, ...] | None:
    decl = profile.gallery
    if decl is not None and decl.disk_controllers is not None:
        return tuple(decl.disk_controllers)
    return ("SCSI", "NVMe") if profile.has("nvme") else None


def declared_accelerated(profile: Profile) -> bool | None:
    decl = profile.gallery
    if decl is not None and decl.accelerated_networking is not None:
        return bool(decl.accelerated_networking)
    return True if profile.has("accelerated_networking") else None


# -- what the disk supports --------------------------------------------------------------------

@dataclass(frozen=True)
class Evidence:
    """One observation behind a property: the check (or fact) and what it saw."""

    source: str          #: a check id, or "disk facts" / "guest facts"
    verdict: str         #: pass, fail, skip, error, or "fact"
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "verdict": self.verdict, "detail": self.detail}

    def __str__(self) -> str:
        return f"{self.source} {self.verdict}: {self.detail}"


@dataclass(frozen=True)
class Property:
    """A derived gallery property: its value (None when it cannot be told) and the evidence."""

    value: Any
    evidence: tuple[Evidence, ...] = ()
    #: the values that were ruled out, with why (e.g. {"TrustedLaunchSupported": "..."})
    ruled_out: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"value": value, "evidence": [e.as_dict() for e in self.evidence],
                "ruled_out": dict(self.ruled_out)}

    def why_not(self, value: str) -> str:
        why = self.ruled_out.get(value)
        if why:
            return why
        failing = [str(e) for e in self.evidence if e.verdict in ("fail", "error", "skip")]
        return "; ".join(failing) or "no evidence supports it"


@dataclass(frozen=True)
class Definition:
    """One gallery image definition: a generation and the features the disk supports there."""

    generation: str
    security_type: Property
    disk_controllers: Property

    def features(self, accelerated: Property) -> dict[str, str]:
        return feature_values(self.security_type.value, self.disk_controllers.value,
                              accelerated.value)


def feature_values(security: str, controllers: Iterable[str],
                   accelerated: bool | None) -> dict[str, str]:
    """The image definition's features as Azure spells them (``az sig ... --features``)."""
    out = {"SecurityType": str(security), "DiskControllerTypes": ",".join(controllers)}
    if accelerated is not None:
        out["IsAcceleratedNetworkSupported"] = "True" if accelerated else "False"
    return out


@dataclass(frozen=True)
class Derivation:
    os_type: Property
    os_state: Property
    architecture: Property
    generations: Property
    accelerated_networking: Property
    definitions: tuple[Definition, ...]

    def definition(self, generation: str) -> Definition | None:
        return next((d for d in self.definitions if d.generation == generation), None)


def _variant(ctx: Context, **profile: Any) -> Context:
    """``ctx`` with another profile; the guest, disk and cached guest facts are shared."""
    gens = profile.pop("generations", ctx.generations)
    return Context(profile=replace(ctx.profile, gallery=None, **profile), disk=ctx.disk,
                   guest=ctx.guest, generations=gens, guest_skip_reason=ctx.guest_skip_reason,
                   memo=ctx.memo)


def _run(ctx: Context, cid: str) -> Result:
    return run_check(CATALOG[cid], ctx)


def _evidence(result: Result, positive: str) -> list[Evidence]:
    cid = result.check.id
    if result.verdict is Verdict.PASS:
        return [Evidence(cid, "pass", positive)]
    if result.verdict is Verdict.FAIL:
        return [Evidence(cid, "fail", f.message + (f" ({f.evidence})" if f.evidence else ""))
                for f in result.findings]
    return [Evidence(cid, result.verdict.value, result.reason or "")]


def _all_pass(results: Iterable[Result]) -> bool:
    return all(r.verdict is Verdict.PASS for r in results)


def _no_guest(ctx: Context) -> Property:
    return Property(None, (Evidence("guest", "skip", ctx.guest_skip_reason),))


def _os_type(ctx: Context) -> Property:
    if ctx.guest is None:
        return _no_guest(ctx)
    facts = guest(ctx).facts
    if facts.distro is None and facts.arch is None:
        return Property(None, (Evidence("guest facts", "fact",
                                        "no /etc/os-release nor ELF init found"),))
    what = f"/etc/os-release ID={facts.distro} VERSION_ID={facts.version}" if facts.distro \
        else f"ELF {facts.arch} init"
    return Property("Linux", (Evidence("guest facts", "fact", what),))


def _architecture(ctx: Context) -> Property:
    if ctx.guest is None:
        return _no_guest(ctx)
    arch = guest(ctx).facts.arch
    value = ARCHITECTURES.get(arch or "")
    ev = [Evidence("guest facts", "fact",
                   f"ELF e_machine of /usr/lib/systemd/systemd (or /sbin/init): {arch}")]
    ev += _evidence(_run(ctx, "guest.arch"), f"{arch} is 64-bit")
    return Property(value, tuple(ev))


# identity a specialized VM keeps (fails of these generalized-only checks mean it was kept)
IDENTITY_CHECKS = ("guest.deprovision.ssh-host-keys", "guest.deprovision.users",
                   "guest.deprovision.authorized-keys")


def _only(state: str) -> list[str]:
    """Error-level guest checks that apply to ``state`` images only (what tells the states apart)."""
    return sorted(cid for cid, c in CATALOG.items()
                  if c.needs == "guest" and c.severity is Severity.ERROR
                  and c.applies.os_states == frozenset({state})
                  and not c.applies.features and not cid.startswith("gallery."))


def provisioning_disabled(ctx: Context) -> list[Evidence]:
    """Evidence that the image does not re-provision (Provisioning.Agent=disabled, cloud-init off)."""
    out = []
    agent = provisioning_agent(ctx)
    if agent is not None and agent.value == "disabled":
        out.append(Evidence("guest facts", "fact",
                            f"Provisioning.Agent=disabled ({agent.evidence})"))
    g = guest(ctx)
    if g.exists("/etc/cloud/cloud-init.disabled"):
        out.append(Evidence("guest facts", "fact",
                            "cloud-init is disabled (/etc/cloud/cloud-init.disabled)"))
    return out


def _os_state(ctx: Context) -> Property:
    if ctx.guest is None:
        return _no_guest(ctx)
    gen_ctx = _variant(ctx, os_state=GENERALIZED, features=frozenset())
    spec_ctx = _variant(ctx, os_state=SPECIALIZED, features=frozenset())
    gen = [_run(gen_ctx, cid) for cid in _only(GENERALIZED)]
    spec = [_run(spec_ctx, cid) for cid in _only(SPECIALIZED)]
    identity = [r for r in (_run(gen_ctx, cid) for cid in IDENTITY_CHECKS)
                if r.verdict is Verdict.FAIL]
    gen_ev = [e for r in gen for e in _evidence(r, r.check.title)]
    spec_ev = [e for r in spec for e in _evidence(r, r.check.title)]
    kept = [e for r in identity for e in _evidence(r, "")]
    disabled = provisioning_disabled(ctx)
    ruled: dict[str, str] = {}
    if _all_pass(gen) and not identity:
        ruled["Specialized"] = ("the image is deprovisioned (no SSH host keys, users or "
                                "login keys kept): a specialized VM made from it has no account to "
                                "log in with")
        return Property("Generalized", tuple(gen_ev), ruled)
    ruled["Generalized"] = "; ".join(str(e) for e in gen_ev + kept
                                     if e.verdict in ("fail", "error")) or "identity kept"
    if (identity or disabled) and _all_pass(spec):
        return Property("Specialized", tuple(kept + disabled + spec_ev), ruled)
    if not (identity or disabled):
        ruled["Specialized"] = ("neither identity kept (host keys, machine-id, users) nor "
                                "provisioning disabled")
    else:
        ruled["Specialized"] = "; ".join(str(e) for e in spec_ev if e.verdict != "pass")
    return Property(None, tuple(gen_ev + kept + disabled + spec_ev), ruled)


def _generations(ctx: Context, arch: Property) -> Property:
    d = ctx.disk
    if d is None or d.scheme is None:
        return Property((), (Evidence("disk facts", "skip", "the partition table was not read"),))
    layout = supported_generations(d)
    ev: list[Evidence] = []
    ruled: dict[str, str] = {}
    gens = set()
    g1 = _run(_variant(ctx, generations=frozenset({V1})), "boot.g1.bios")
    bios = [p.index for p in d.partitions if p.type_id == GPT_BIOS_BOOT]
    ev += _evidence(g1, "LBA 0 has boot code and the 0x55AA signature" +
                    (f"; BIOS boot partition {bios[0]}" if bios else f" ({d.scheme} disk)"))
    if V1 in layout:
        if arch.value == "Arm64":
            ruled[V1] = "Arm64 VMs are Gen2 only"
        else:
            gens.add(V1)
    else:
        ruled[V1] = "; ".join(str(e) for e in ev if e.verdict != "pass")
    v2_ctx = _variant(ctx, generations=frozenset({V2}))
    esp = _run(v2_ctx, "boot.g2.esp")
    esps = [p.index for p in d.partitions if p.type_id in ESP_TYPES and p.fs == "fat"]
    v2_ev = _evidence(esp, f"EFI system partition {esps[0]} (FAT)" if esps else "ESP")
    if ctx.guest is not None:
        from .guest_boot import efi_fallback_path
        loader = efi_fallback_path(v2_ctx)[0]
        v2_ev += _evidence(_run(v2_ctx, "guest.efi.fallback"), f"{loader} present")
    else:
        v2_ev.append(Evidence("guest.efi.fallback", "skip", ctx.guest_skip_reason))
    ev += v2_ev
    if V2 in layout and all(e.verdict != "fail" for e in v2_ev):
        gens.add(V2)
    else:
        ruled[V2] = "; ".join(str(e) for e in v2_ev if e.verdict != "pass")
    return Property(tuple(sorted(gens)), tuple(ev), ruled)


def _security_type(ctx: Context, gen: str) -> Property:
    if gen == V1:
        return Property("Standard", (Evidence("gallery", "fact", "Trusted Launch needs Gen2"),),
                        {t: "Trusted Launch and confidential VMs need Gen2" for t in SIGNED_TYPES})
    if ctx.guest is None:
        return Property("Standard", (Evidence("guest.trusted-launch.shim-signed", "skip",
                                              ctx.guest_skip_reason),),
                        {t: f"the boot chain was not verified ({ctx.guest_skip_reason})"
                         for t in SIGNED_TYPES})
    tl_ctx = _variant(ctx, generations=frozenset({V2}), features=TL)
    from .guest_boot import efi_fallback_path
    loader = efi_fallback_path(tl_ctx)[0]
    r = _run(tl_ctx, "guest.trusted-launch.shim-signed")
    ev = tuple(_evidence(r, f"{loader}: Authenticode signature chains to a Microsoft UEFI CA"))
    if r.verdict is Verdict.PASS:
        return Property("TrustedLaunchSupported", ev,
                        {t: "confidential VM suitability cannot be derived offline (U)"
                         for t in CONFIDENTIAL})
    why = "; ".join(str(e) for e in ev)
    return Property("Standard", ev, {t: why for t in SIGNED_TYPES})


NVME_CHECKS = {"guest.drivers.nvme": "nvme and nvme_core load at boot for every kernel",
               "guest.fstab.stable-names": "fstab names no kernel device",
               "guest.cmdline.nvme-timeout": "nvme_core.io_timeout=240 on the kernel command line"}


def _controllers(ctx: Context, gen: str) -> Property:
    if gen == V1:
        return Property(("SCSI",), (Evidence("gallery", "fact", "NVMe is never offered on Gen1"),),
                        {"NVMe": "NVMe is never offered on Gen1"})
    if ctx.guest is None:
        return Property(("SCSI",), (Evidence("guest", "skip", ctx.guest_skip_reason),),
                        {"NVMe": f"initramfs and fstab not read ({ctx.guest_skip_reason})"})
    nctx = _variant(ctx, generations=frozenset({V2}), features=NVME)
    results = [_run(nctx, cid) for cid in NVME_CHECKS]
    ev = tuple(e for r in results for e in _evidence(r, NVME_CHECKS[r.check.id]))
    if _all_pass(results):
        return Property(("SCSI", "NVMe"), ev)
    return Property(("SCSI",), ev, {"NVMe": "; ".join(str(e) for e in ev if e.verdict != "pass")})


def _accelerated(ctx: Context) -> Property:
    if ctx.guest is None:
        return _no_guest(ctx)
    r = _run(_variant(ctx, features=AN), "guest.drivers.mana")
    ev = tuple(_evidence(r, "mana, mlx4_en, mlx4_core, mlx5_core and pci_hyperv are installed"))
    if r.verdict is Verdict.PASS:
        return Property(True, ev)
    return Property(False, ev, {"True": "; ".join(str(e) for e in ev)})


def derive(ctx: Context) -> Derivation:
    """The gallery properties the disk supports, with evidence (computed once per context)."""
    return memo(ctx, "gallery.derivation", lambda _g: _derive(ctx))  # type: ignore[no-any-return]


def _derive(ctx: Context) -> Derivation:
    arch = _architecture(ctx)
    gens = _generations(ctx, arch)
    defs = tuple(Definition(g, _security_type(ctx, g), _controllers(ctx, g)) for g in gens.value)
    return Derivation(_os_type(ctx), _os_state(ctx), arch, gens, _accelerated(ctx), defs)


# -- guest facts for the manifest ----------------------------------------------------------------

DPKG_STATUS = "/var/lib/dpkg/status"
CLOUDINIT_VERSION_FILES = ("/usr/lib/python3/dist-packages/cloudinit/version.py",)
WAAGENT_VERSION_FILES = ("/usr/lib/python3/dist-packages/azurelinuxagent/common/version.py",)


def dpkg_versions(text: str, names: Iterable[str]) -> dict[str, str]:
    """{package: version} of installed ``names`` in a dpkg status file (deb822 stanzas)."""
    wanted, out = set(names), {}
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): *(.*)$", stanza, re.M))
        if fields.get("Package") in wanted and "installed" in fields.get("Status", "").split():
            out[fields["Package"]] = fields.get("Version", "")
    return out


def _py_version(ctx: Context, paths: Iterable[str], pattern: str) -> tuple[str, str] | None:
    g = guest(ctx)
    for path in paths:
        m = re.search(pattern, g.read_text(path, 256 * 1024) or "", re.M)
        if m:
            return m.group(1), path
    return None


@dataclass(frozen=True)
class Provisioner:
    name: str                  #: cloud-init or waagent
    version: str | None
    version_from: str | None   #: where the version was read
    enabled: bool              #: its units are enabled
    provisions: bool           #: it handles provisioning on first boot

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "version_from": self.version_from,
                "enabled": self.enabled, "provisions": self.provisions}


def provisioners(ctx: Context) -> list[Provisioner]:
    """cloud-init and waagent as installed on the guest, with versions (package DB first)."""
    g = guest(ctx)
    status = g.read_text(DPKG_STATUS, 64 * 1024 * 1024) or ""
    pkgs = dpkg_versions(status, ("cloud-init", "waagent", "walinuxagent", "WALinuxAgent"))
    out = []
    if cloud_config(ctx) is not None:
        ver = (pkgs["cloud-init"], f"{DPKG_STATUS} (cloud-init)") if "cloud-init" in pkgs else \
            _py_version(ctx, CLOUDINIT_VERSION_FILES, r"^__VERSION__\s*=\s*['\"]([^'\"]+)")
        out.append(Provisioner("cloud-init", ver[0] if ver else None, ver[1] if ver else None,
                               cloudinit_enabled(ctx), cloudinit_provisions(ctx)))
    if waagent_conf(ctx) is not None:
        pkg = next((p for p in ("waagent", "walinuxagent", "WALinuxAgent") if p in pkgs), None)
        ver = (pkgs[pkg], f"{DPKG_STATUS} ({pkg})") if pkg else \
            _py_version(ctx, WAAGENT_VERSION_FILES, r"^AGENT_VERSION\s*=\s*['\"]([^'\"]+)")
        agent = provisioning_agent(ctx)
        value = agent.value if agent else "auto"
        enabled = waagent_enabled(ctx) is not None
        provisions = enabled and (value == "waagent" or
                                  (value == "auto" and not cloudinit_enabled(ctx)))
        out.append(Provisioner("waagent", ver[0] if ver else None, ver[1] if ver else None,
                               enabled, provisions))
    return out


# -- the checks of what is declared ----------------------------------------------------------------

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
UNSIGNED = {"/boot/efi/EFI/BOOT/BOOTX64.EFI": pe_image(None)}
NO_NVME = {f"/lib/modules/{KVER}/modules.builtin": ""}
NO_MANA = {f"/lib/modules/{KVER}/modules.dep":
           "".join(f"kernel/{m}:\n" for m in DISK_MODULES if "mana" not in m)}
ARM64_SYSTEMD = {"/usr/lib/systemd/systemd": ELF_X86_64[:18] + b"\xb7\x00" + ELF_X86_64[20:]}


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
       source=SOURCE + "; PROVE",
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
       source=SOURCE + "; GEN2, DPS6",
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
       source=SOURCE + "; TLF, TL",
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
       source=SOURCE + "; NVF, NVME, NVC",
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
       source=SOURCE + "; AN, MANA",
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


# -- names, version and dates (no subject needed: they read only the declaration) -------------------

IDENTIFIER_RE = re.compile(r"^[A-Za-z0-9._-]+$")
DEFINITION_RE = re.compile(r"^[^_\W][\w._-]{0,79}(?<![-.])$")
GALLERY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.]{0,78}[A-Za-z0-9])?$")
VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
NAMES = DeclaredApplies(roles=frozenset({"os", "data"}))


def _decl(ctx: Context) -> Declaration:
    decl: Declaration = ctx.profile.gallery
    return decl


def identifier_problems(kind: str, value: str, limit: int) -> list[str]:
    out = []
    if not value:
        out.append(f"{kind} is empty")
    if len(value) > limit:
        out.append(f"{kind} {value!r} is {len(value)} characters (at most {limit})")
    if value and not IDENTIFIER_RE.match(value):
        bad = sorted(set(re.sub(r"[A-Za-z0-9._-]", "", value)))
        out.append(f"{kind} {value!r} has characters outside A-Z a-z 0-9 . _ -: {''.join(bad)!r}")
    if value.endswith("."):
        out.append(f"{kind} {value!r} ends with '.'")
    return out


@check(id="gallery.identifier", title="Publisher, offer and SKU follow the gallery's naming rules",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="The image identifier (publisher <= 128 characters, offer and SKU <= 64) uses "
                 "only letters, digits, '.', '_' and '-' and does not end in '.'; it is immutable "
                 "and unique per gallery.",
       source=SOURCE,
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
       source=SOURCE,
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


def version_problems(version: str) -> list[str]:
    m = VERSION_RE.match(version)
    if not m:
        return [f"version {version!r} is not MAJOR.MINOR.PATCH (digits and periods only)"]
    return [f"version {version!r}: {part} {n} does not fit a 32-bit integer (max {INT32_MAX})"
            for part, n in zip(("MAJOR", "MINOR", "PATCH"), map(int, m.groups()))
            if n > INT32_MAX]


@check(id="gallery.version", title="The image version is MAJOR.MINOR.PATCH of 32-bit integers",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="An image version name is MAJOR.MINOR.PATCH, digits and periods only, each part "
                 "a 32-bit integer; 'latest' is the highest Major, then Minor, then Patch.",
       source=SOURCE + "; IMGV",
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


def parse_date(text: str) -> datetime.date:
    """An ISO-8601 date or date-time (``Z`` allowed); ValueError when it is neither."""
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).date()


@check(id="gallery.end-of-life", title="The end-of-life date is a valid date in the future",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="endOfLifeDate is ISO-8601 and must lie in the future (it is informational: "
                 "Azure still deploys the image after it).",
       source=SOURCE,
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


__all__ = ["Declaration", "Derivation", "Definition", "Evidence", "Property", "Provisioner",
           "declare", "derive", "feature_values", "provisioners", "dpkg_versions", "version_problems",
           "identifier_problems", "parse_date"]
