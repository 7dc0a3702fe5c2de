"""The gallery definition a disk supports, derived from its facts, with the evidence behind it.

:func:`derive` decides each gallery property from the disk facts and the guest, and names the
evidence behind it: the checks of the catalog that decide it, run again on the same context (their
cached guest facts shared) with the profile the property needs -- Trusted Launch intended for
``SecurityType``, NVMe for ``DiskControllerTypes`` and so on.  A hybrid disk (BIOS boot partition
and ESP) yields one definition per generation, each with the features that generation allows
(Trusted Launch and NVMe only on V2), so impossible combinations are never derived.

The properties and their accepted values are Azure Compute Gallery's (see :mod:`checks.sources`:
ACG, ACG-OV, ACG-TS, GEN2, TLF, NVF, AN, MANA, DPS6): osType, osState, architecture (x64,
Arm64; Arm64 VMs are Gen2 only), hyperVGeneration, SecurityType, DiskControllerTypes,
IsAcceleratedNetworkSupported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..catalog import (GENERALIZED, SPECIALIZED, V1, V2, CATALOG, Context, Result, Severity,
                       Verdict, run_check)
from ..disk import ESP_TYPES, GPT_BIOS_BOOT, supported_generations
from ..guest_boot import efi_fallback_path
from ..guestlib import guest, memo, provisioning_agent
from .declaration import CONFIDENTIAL, SIGNED_TYPES

ARCHITECTURES = {"x86_64": "x64", "aarch64": "Arm64"}
TL = frozenset({"trusted_launch"})
NVME = frozenset({"nvme"})
AN = frozenset({"accelerated_networking"})


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
    """No check failed or crashed (one whose subject is absent, e.g. cloud-init's state on a
    waagent-only guest, is skipped: nothing of it is left)."""
    return all(r.verdict in (Verdict.PASS, Verdict.SKIP) for r in results)


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
    """Error-level guest checks that apply to ``state`` images only (what tells the states
    apart)."""
    return sorted(cid for cid, c in CATALOG.items()
                  if c.needs == "guest" and c.severity is Severity.ERROR
                  and c.applies.os_states == frozenset({state})
                  and not c.applies.features and not cid.startswith("gallery."))


def provisioning_disabled(ctx: Context) -> list[Evidence]:
    """Evidence that the image does not re-provision (Provisioning.Agent=disabled, cloud-init
    off)."""
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
