"""Guest check: Trusted Launch needs a first-stage loader signed by the Microsoft UEFI CA.

References:
  - Sources TLF, SBC, UEFIK of :mod:`checks.sources` (Trusted Launch, its Secure Boot certificates).
  - checks/authenticode.py (the Authenticode digest, the signer's signature, the chain to the CA).
"""

from __future__ import annotations

from .authenticode import PEError, signatures, verify
from .catalog import V2, Applies, Context, Example, Finding, Severity, check
from .examples import pe
from .guest_boot import efi_fallback_path
from .guestlib import guest

TL = frozenset({"trusted_launch"})
BOOTX64 = "/boot/efi/EFI/BOOT/BOOTX64.EFI"
MAX_LOADER = 64 * 1024 * 1024


@check(id="guest.trusted-launch.shim-signed",
       title="The EFI loader is signed by the Microsoft UEFI CA", severity=Severity.ERROR,
       applies=Applies(generations=frozenset({V2}), features=TL),
       rationale="Trusted Launch boots with Secure Boot and Microsoft's UEFI db: BOOTX64.EFI "
                 "(shim) must carry an Authenticode signature of its exact bytes (the image "
                 "digest) by a key chaining to Microsoft Corporation UEFI CA 2011 or Microsoft "
                 "UEFI CA 2023, or the VM does not boot unless the image defines custom "
                 "uefiSettings.",
       source=("TLF", "SBC", "UEFIK"),
       remediation="Install the distribution's Microsoft-signed shim (shim-signed) as "
                   "EFI/BOOT/BOOTX64.EFI, or register the image with custom UEFI keys.",
       passes=[Example("Debian's signed shim", profile={"features": TL})],
       fails=[Example("unsigned loader", profile={"features": TL},
                      files={BOOTX64: pe(None)}),
              Example("Debian's signed shim with one byte of its code changed",
                      profile={"features": TL}, files={BOOTX64: pe("tampered")}),
              Example("self-made certificate named after the Microsoft CA",
                      profile={"features": TL}, files={BOOTX64: pe("forged")}),
              Example("grub copied as the fallback loader (not a PE signed by Microsoft)",
                      profile={"features": TL}, files={BOOTX64: b"MZ" + b"\0" * 100})])
def shim_signed(ctx: Context) -> list[Finding]:
    path, name = efi_fallback_path(ctx)
    if not path:
        return [Finding(f"no EFI/BOOT/{name} to verify", "/boot/efi/EFI")]
    data = guest(ctx).read_file(path, MAX_LOADER) or b""
    reasons = []
    try:
        sigs = signatures(data)
        if not sigs:
            return [Finding(f"{path} has no Authenticode signature", path)]
        for sig in sigs:
            ca, why = verify(data, sig)
            if ca:
                return []
            reasons.append(f"{why} (WIN_CERTIFICATE at offset {sig.offset:#x})")
    except PEError as e:
        return [Finding(f"{path} is not a valid PE image: {e}", path)]
    return [Finding(f"{path}: no valid signature by a Microsoft UEFI CA: " + "; ".join(reasons),
                    path)]
