"""What the author declares about the gallery image definition, and the rules its values follow.

A :class:`Declaration` rides on ``Profile.gallery``; :func:`declare` adds the catalog features it
intends (Trusted Launch, NVMe, Accelerated Networking) so the checks behind them run.  The name,
version and date rules are those of Azure Compute Gallery (see :mod:`checks.sources`: ACG,
ACG-OV, IMGV): an image identifier (publisher <= 128 characters, offer and SKU <= 64) of letters,
digits, '.', '_' and '-' not ending in '.'; an image definition name matching
``^[^_\\W][\\w-._]{0,79}(?<![-.])$``; a gallery name of 1-80 letters, digits, '_' or '.', starting
and ending with a letter or digit; a version MAJOR.MINOR.PATCH of 32-bit integers; an ISO-8601
end-of-life date.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, replace
from typing import Any

from ..catalog import GENERALIZED, SPECIALIZED, Profile

SECURITY_TYPES = ("Standard", "TrustedLaunchSupported", "TrustedLaunch", "ConfidentialVmSupported",
                  "ConfidentialVM", "TrustedLaunchAndConfidentialVmSupported")
#: security types that boot with Secure Boot and vTPM: they need Gen2 and a signed boot chain
SIGNED_TYPES = frozenset(SECURITY_TYPES[1:])
CONFIDENTIAL = frozenset(t for t in SECURITY_TYPES if "Confidential" in t)
PRIVATE_ONLY = frozenset({"TrustedLaunch", "ConfidentialVM"})
CONTROLLERS = ("SCSI", "NVMe")
OS_STATES = {GENERALIZED: "Generalized", SPECIALIZED: "Specialized"}
INT32_MAX = 2**31 - 1
REPLICATION_MODES = ("Full", "Shallow")
SHARING = ("private", "direct", "community")
SOURCES = ("managed-disk", "managed-image", "storage-vhd")


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
    end_of_life: str | None = None      #: ISO-8601 date (or date-time): definition and version
    # -- the rest of the image definition (checks.gallery.document: keys, updatable or not) --
    description: str | None = None
    eula: str | None = None
    privacy_statement_uri: str | None = None
    release_note_uri: str | None = None
    tags: tuple[tuple[str, str], ...] | None = None
    vcpus: tuple[int | None, int | None] | None = None       #: recommended (min, max)
    memory: tuple[int | None, int | None] | None = None      #: recommended (min, max), in MB
    disallowed_disk_types: tuple[str, ...] | None = None
    plan_publisher: str | None = None
    plan_name: str | None = None
    plan_product: str | None = None
    # -- the image version: where and how it is replicated --
    location: str | None = None         #: the source region (the version is created there)
    target_regions: tuple[tuple[str, int | None], ...] | None = None   #: (region, replicas)
    replica_count: int | None = None    #: for the target regions that give none
    storage_account_type: str | None = None
    exclude_from_latest: bool | None = None
    replication_mode: str | None = None     #: Full or Shallow
    # -- who it reaches, and where the version comes from --
    sharing: str | None = None          #: private, direct or community
    source: str | None = None           #: managed-disk, managed-image or storage-vhd
    # -- the community gallery's public information (sharingProfile.communityGalleryInfo) --
    publisher_uri: str | None = None        #: the publisher's website
    publisher_email: str | None = None      #: publisherContact: the support e-mail
    community_eula: str | None = None       #: the gallery's EULA (a link), not the definition's
    public_name_prefix: str | None = None   #: prefix of the gallery's public name

    def __post_init__(self) -> None:
        if self.security_type is not None and self.security_type not in SECURITY_TYPES:
            raise ValueError(f"security type must be one of {', '.join(SECURITY_TYPES)}")
        for c in self.disk_controllers or ():
            if c not in CONTROLLERS:
                raise ValueError(f"disk controller {c!r} is not SCSI or NVMe")
        for name, allowed in (("replication_mode", REPLICATION_MODES), ("sharing", SHARING),
                              ("source", SOURCES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"{name.replace('_', ' ')} must be one of {', '.join(allowed)}")

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
        """The declaration as a document (keys of :mod:`checks.gallery.document`), None for
        what is not declared; :func:`checks.gallery.document.from_document` reads it back."""
        from .document import as_document
        return as_document(self)


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


# -- the rules of names, versions and dates ----------------------------------------------

IDENTIFIER_RE = re.compile(r"^[A-Za-z0-9._-]+$")
DEFINITION_RE = re.compile(r"^[^_\W][\w._-]{0,79}(?<![-.])$")
GALLERY_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.]{0,78}[A-Za-z0-9])?$")
VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


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


def version_problems(version: str) -> list[str]:
    m = VERSION_RE.match(version)
    if not m:
        return [f"version {version!r} is not MAJOR.MINOR.PATCH (digits and periods only)"]
    return [f"version {version!r}: {part} {n} does not fit a 32-bit integer (max {INT32_MAX})"
            for part, n in zip(("MAJOR", "MINOR", "PATCH"), map(int, m.groups()))
            if n > INT32_MAX]


def parse_date(text: str) -> datetime.date:
    """An ISO-8601 date or date-time (``Z`` allowed); ValueError when it is neither."""
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).date()
