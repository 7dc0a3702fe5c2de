"""The ``gallery.*`` checks of how an image is published: regions and replicas, storage and
replication mode, recommended sizes and disallowed disk types, URIs, purchase plan, sharing and
the version's source.  They read only the declaration (and the disk's size), offline; each applies
when its values are declared.
"""

from __future__ import annotations

import re
from dataclasses import replace
from urllib.parse import urlsplit

from ..catalog import SPECIALIZED, Context, Example, Finding, NotApplicable, Severity, check
from .declaration import PRIVATE_ONLY, Declaration
from .regions import AS_OF, NAME_RE, REGIONS, normal
from .rules import NAMES, _decl

TiB = 1024**4
#: StorageAccountType of azure-mgmt-compute (API 2023-07-03): what a replica is stored on
STORAGE_TYPES = ("Standard_LRS", "Standard_ZRS", "Premium_LRS")
#: DiskStorageAccountTypes of azure-mgmt-compute: what ``disallowed.diskTypes`` may name
DISK_TYPES = ("Standard_LRS", "Premium_LRS", "StandardSSD_LRS", "UltraSSD_LRS", "Premium_ZRS",
              "StandardSSD_ZRS", "PremiumV2_LRS")
MAX_REPLICAS = 100          # per region (ACG-OV limits; the project's azure-requirements.md)
FULL_LIMIT, SHALLOW_LIMIT = 2 * TiB, 32 * TiB
REGIONS_DECL = Declaration(location="westeurope",
                           target_regions=(("westeurope", 2), ("northeurope", None)))


def _regions(decl: Declaration) -> list[str]:
    names = [decl.location] if decl.location else []
    return names + [n for n, _ in decl.target_regions or ()]


@check(id="gallery.regions",
       title="Target regions include the source region, once each, with replica counts in range",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="An image version is created in its source region (the --location of the "
                 "commands) and replicated to its target regions: the targets must include the "
                 "source region and name each region once; a region's replica count (or the "
                 "common --replica-count) is 1 to 100.",
       source=("ACG-OV: limits", "IMGV", "SDK-GAL: TargetRegion"),
       remediation="Add the source region to --target-region, remove duplicates, and give "
                   "replica counts between 1 and 100 (about one replica per 20 VMs created at "
                   "once).",
       passes=[Example("westeurope=2 and northeurope from westeurope",
                       profile={"gallery": REGIONS_DECL})],
       fails=[Example("source region not among the targets", profile={"gallery": Declaration(
           location="westeurope", target_regions=(("northeurope", None),))}),
              Example("a region twice, 0 replicas, 101 by default", profile={
                  "gallery": Declaration(target_regions=(("westeurope", 0), ("West Europe", 1)),
                                         replica_count=101)})])
def regions(ctx: Context) -> list[Finding]:
    decl = _decl(ctx)
    if decl.target_regions is None and decl.replica_count is None:
        raise NotApplicable("no target regions or replica count declared")
    out = []
    targets = [normal(n) for n, _ in decl.target_regions or ()]
    if decl.location and decl.target_regions is not None and normal(decl.location) not in targets:
        out.append(Finding(f"the source region {decl.location} is not among the target regions "
                           f"({', '.join(targets)})", "publishingProfile.targetRegions",
                           fix=f"--target-region {normal(decl.location)}"))
    twice = sorted({n for n in targets if targets.count(n) > 1})
    if twice:
        out.append(Finding(f"target region(s) given more than once: {', '.join(twice)}",
                           "publishingProfile.targetRegions"))
    counts = [(f"{n}={c}", c) for n, c in decl.target_regions or () if c is not None]
    if decl.replica_count is not None:
        counts.append((f"--replica-count {decl.replica_count}", decl.replica_count))
    out += [Finding(f"replica count {what} is outside 1..{MAX_REPLICAS}", "replicaCount")
            for what, c in counts if not 1 <= c <= MAX_REPLICAS]
    return out


@check(id="gallery.region-names", title=f"Region names are Azure regions (list of {AS_OF})",
       severity=Severity.WARNING, needs="disk", applies=NAMES,
       rationale="Region names are what `az account list-locations` calls `name` (westeurope, "
                 "not 'West Europe' nor westeu); a misspelt one is refused only when the "
                 f"commands run. vhdtool ships the public regions as of {AS_OF}; Azure adds "
                 "regions, so a name it does not know is a warning.",
       source=("REGIONS",),
       remediation="Use the name `az account list-locations -o table` gives (Name column).",
       passes=[Example("westeurope and northeurope", profile={"gallery": REGIONS_DECL})],
       fails=[Example("westeurop (typo) as the source region", profile={"gallery": Declaration(
           location="westeurop")}),
              Example("a display name as target", profile={"gallery": Declaration(
                  target_regions=(("West Europe", None),))})])
def region_names(ctx: Context) -> list[Finding]:
    names = _regions(_decl(ctx))
    if not names:
        raise NotApplicable("no region declared")
    out = []
    for n in dict.fromkeys(names):
        if not NAME_RE.match(n):
            out.append(Finding(f"{n!r} is not a region name (lower-case letters and digits, "
                               f"e.g. {normal(n)})", "location"))
        elif n not in REGIONS:
            out.append(Finding(f"{n!r} is not among the {len(REGIONS)} Azure regions of {AS_OF}",
                               "location"))
    return out


@check(id="gallery.replication",
       title="Storage account type and replication mode fit the disk and the targets",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="Replicas are stored as Standard_LRS, Standard_ZRS or Premium_LRS. Full "
                 "replication copies the disk to every replica and takes images up to 2 TB; "
                 "Shallow replication skips the copy (the version is ready sooner) and takes up "
                 "to 32 TB, but serves only its source region.",
       source=("SDK-GAL: StorageAccountType, ReplicationMode", "ACG-REPL", "ACG-OV: limits"),
       remediation="Use a listed storage type; for a disk over 2 TB use Shallow replication "
                   "(development and test) or a smaller disk; with Shallow, target only the "
                   "source region.",
       passes=[Example("Standard_ZRS, Full, 4 GiB disk", profile={"gallery": Declaration(
           storage_account_type="Standard_ZRS", replication_mode="Full")}),
               Example("Shallow, 3 TiB disk, source region only", disk={"virtual_size": 3 * TiB},
                       profile={"gallery": Declaration(
                           replication_mode="Shallow", location="westeurope",
                           target_regions=(("westeurope", None),))})],
       fails=[Example("Premium_ZRS replicas", profile={"gallery": Declaration(
           storage_account_type="Premium_ZRS")}),
              Example("3 TiB disk, Full", disk={"virtual_size": 3 * TiB},
                      profile={"gallery": Declaration(replication_mode="Full")}),
              Example("Shallow replicated to another region", profile={"gallery": Declaration(
                  replication_mode="Shallow", location="westeurope",
                  target_regions=(("westeurope", None), ("northeurope", None)))})])
def replication(ctx: Context) -> list[Finding]:
    decl = _decl(ctx)
    if decl.storage_account_type is None and decl.replication_mode is None:
        raise NotApplicable("no storage account type or replication mode declared")
    out = []
    if decl.storage_account_type is not None and decl.storage_account_type not in STORAGE_TYPES:
        out.append(Finding(f"storage account type {decl.storage_account_type!r} is not one of "
                           f"{', '.join(STORAGE_TYPES)}", "storageAccountType"))
    shallow = decl.replication_mode == "Shallow"
    size = ctx.disk.virtual_size or 0
    limit = SHALLOW_LIMIT if shallow else FULL_LIMIT
    if size > limit:
        out.append(Finding(f"the disk is {size} bytes ({size / TiB:.2f} TiB): "
                           f"{decl.replication_mode or 'Full'} replication takes at most "
                           f"{limit // TiB} TiB", "replicationMode",
                           fix=None if shallow else "--replication-mode Shallow"))
    if shallow and decl.target_regions is not None:
        others = [n for n, _ in decl.target_regions
                  if decl.location is None or normal(n) != normal(decl.location)]
        if others:
            out.append(Finding(f"Shallow replication serves only the source region "
                               f"({decl.location or 'the --location'}); targets "
                               f"{', '.join(others)} need Full", "replicationMode"))
    return out


@check(id="gallery.shallow", title="Shallow replication is declared with its caveats in mind",
       severity=Severity.WARNING, needs="disk", applies=NAMES,
       rationale="Shallow replication does not copy the disk: the version is ready sooner and "
                 "may be up to 32 TB, but it is meant for development and test, cannot serve "
                 "large-scale deployment, is not replicated to other regions, and the mode "
                 "cannot be changed after creation.",
       source=("ACG-REPL", "SDK-GAL: ReplicationMode", "ACG-UPD"),
       remediation="Use Full replication (the default) for production images; keep Shallow for "
                   "development and test.",
       passes=[Example("Full", profile={"gallery": Declaration(replication_mode="Full")})],
       fails=[Example("Shallow", profile={"gallery": Declaration(replication_mode="Shallow")})])
def shallow(ctx: Context) -> list[Finding]:
    mode = _decl(ctx).replication_mode
    if mode is None:
        raise NotApplicable("no replication mode declared")
    if mode != "Shallow":
        return []
    return [Finding("Shallow replication: development and test only, no large-scale deployment, "
                    "source region only, not updatable", "replicationMode")]


def _range_problems(what: str, pair: tuple[int | None, int | None] | None) -> list[str]:
    if pair is None:
        return []
    low, high = pair
    out = [f"{what} {end} {v} is not a positive integer"
           for end, v in (("min", low), ("max", high)) if v is not None and v < 1]
    if low is not None and high is not None and low > high:
        out.append(f"{what} min {low} is above max {high}")
    return out


@check(id="gallery.recommended",
       title="Recommended vCPU and memory ranges are sane; disallowed disk types exist",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="The definition's recommended vCPUs and memory are ranges of positive integers "
                 "with min <= max (the portal filters VM sizes with them); disallowed.diskTypes "
                 "names managed disk types (Standard_LRS, Premium_LRS, StandardSSD_LRS, ...).",
       source=("ACG-OV", "SDK-GAL: RecommendedMachineConfiguration, DiskStorageAccountTypes"),
       remediation="Give MIN-MAX with MIN <= MAX, and disk types as az spells them.",
       passes=[Example("2-16 vCPUs, 2048-65536 memory, no Standard_LRS", profile={
           "gallery": Declaration(vcpus=(2, 16), memory=(2048, 65536),
                                  disallowed_disk_types=("Standard_LRS",))})],
       fails=[Example("16-2 vCPUs", profile={"gallery": Declaration(vcpus=(16, 2))}),
              Example("memory 0 and disk type HDD", profile={"gallery": Declaration(
                  memory=(0, None), disallowed_disk_types=("HDD",))})])
def recommended(ctx: Context) -> list[Finding]:
    decl = _decl(ctx)
    if decl.vcpus is None and decl.memory is None and decl.disallowed_disk_types is None:
        raise NotApplicable("no recommended sizes or disallowed disk types declared")
    out = [Finding(p, "recommended") for what, pair in (("vCPUs", decl.vcpus),
                                                         ("memory", decl.memory))
           for p in _range_problems(what, pair)]
    out += [Finding(f"disallowed disk type {t!r} is not one of {', '.join(DISK_TYPES)}",
                    "disallowed.diskTypes")
            for t in decl.disallowed_disk_types or () if t not in DISK_TYPES]
    return out


def _is_url(uri: str) -> bool:
    """An absolute http(s) URL with a host and no white space."""
    parts = urlsplit(uri)
    return parts.scheme in ("https", "http") and bool(parts.netloc) and not any(
        c.isspace() for c in uri)


@check(id="gallery.uris", title="Privacy statement and release note URIs are absolute https URLs",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="privacyStatementUri and releaseNoteUri are shown to whoever deploys the "
                 "image; a relative or malformed URI is stored as given and leads nowhere.",
       source=("ACG-OV", "IMGV"),
       remediation="Give absolute URLs, e.g. https://example.org/privacy.",
       passes=[Example("https URIs", profile={"gallery": Declaration(
           privacy_statement_uri="https://example.org/privacy",
           release_note_uri="https://example.org/notes/1.0")})],
       fails=[Example("no scheme", profile={"gallery": Declaration(
           privacy_statement_uri="example.org/privacy")}),
              Example("a space in the host", profile={"gallery": Declaration(
                  release_note_uri="https://exa mple.org/notes")})])
def uris(ctx: Context) -> list[Finding]:
    decl = _decl(ctx)
    given = [(k, v) for k, v in (("privacyStatementUri", decl.privacy_statement_uri),
                                 ("releaseNoteUri", decl.release_note_uri)) if v is not None]
    if not given:
        raise NotApplicable("no URI declared")
    out = []
    for key, uri in given:
        if not _is_url(uri):
            out.append(Finding(f"{key} {uri!r} is not an absolute http(s) URL", key))
        elif urlsplit(uri).scheme == "http":
            out.append(Finding(f"{key} {uri!r} is not https", key, fix=uri.replace("http:",
                                                                                   "https:", 1)))
    return out


@check(id="gallery.purchase-plan", title="A purchase plan gives publisher, name and product",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="An image derived from a Marketplace image carries that image's purchase plan "
                 "(publisher, name, product), exactly as the source has it; a partial plan is "
                 "refused, and a VM from it cannot be deployed.",
       source=("IMGV", "ACG-OV"),
       remediation="Give --plan-publisher, --plan-name and --plan-product together, as `az vm "
                   "image show` gives them for the source image.",
       passes=[Example("all three", profile={"gallery": Declaration(
           plan_publisher="canonical", plan_name="server", plan_product="ubuntu")})],
       fails=[Example("plan name only", profile={"gallery": Declaration(plan_name="server")})])
def purchase_plan(ctx: Context) -> list[Finding]:
    decl = _decl(ctx)
    parts = {"publisher": decl.plan_publisher, "name": decl.plan_name,
             "product": decl.plan_product}
    if all(v is None for v in parts.values()):
        raise NotApplicable("no purchase plan declared")
    return [Finding(f"purchase plan {k} not declared (the plan needs all three)",
                    f"purchasePlan.{k}") for k, v in parts.items() if not v]


@check(id="gallery.sharing", title="The sharing mode supports the declared security type",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="The TrustedLaunch and ConfidentialVM security types are for private galleries "
                 "only: a gallery shared directly or with the community cannot offer them "
                 "(TrustedLaunchSupported, ConfidentialVmSupported can).",
       source=("ACG-SHARE", "ACG-COMM", "TLF"),
       remediation="Declare TrustedLaunchSupported (or ConfidentialVmSupported) for a shared "
                   "gallery, or keep the gallery private.",
       passes=[Example("community, TrustedLaunchSupported", profile={"gallery": Declaration(
           sharing="community", security_type="TrustedLaunchSupported")}),
               Example("private, TrustedLaunch", profile={"gallery": Declaration(
                   sharing="private", security_type="TrustedLaunch")})],
       fails=[Example("community, TrustedLaunch", profile={"gallery": Declaration(
           sharing="community", security_type="TrustedLaunch")}),
              Example("direct, ConfidentialVM", profile={"gallery": Declaration(
                  sharing="direct", security_type="ConfidentialVM")})])
def sharing(ctx: Context) -> list[Finding]:
    decl = _decl(ctx)
    if decl.sharing is None:
        raise NotApplicable("no sharing mode declared")
    if decl.sharing != "private" and decl.security_type in PRIVATE_ONLY:
        return [Finding(f"SecurityType={decl.security_type} is for private galleries only, "
                        f"not {decl.sharing} sharing", "features SecurityType",
                        fix="--security-type " + decl.security_type.replace(
                            "TrustedLaunch", "TrustedLaunchSupported").replace(
                            "ConfidentialVM", "ConfidentialVmSupported"))]
    return []


@check(id="gallery.community-specialized",
       title="A specialized image is not shared with the community without second thoughts",
       severity=Severity.WARNING, needs="disk", applies=NAMES,
       rationale="A specialized image keeps its machine identity, host keys and accounts: every "
                 "VM made from it by anyone shares them. A community gallery is public.",
       source=("ACG-COMM", "ACG-OV"),
       remediation="Generalize the image (--os-state generalized after deprovisioning) before "
                   "community sharing, or share privately or directly.",
       passes=[Example("generalized, community", profile={"gallery": Declaration(
           sharing="community")})],
       fails=[Example("specialized, community", profile={
           "gallery": Declaration(sharing="community"), "os_state": SPECIALIZED})])
def community_specialized(ctx: Context) -> list[Finding]:
    if _decl(ctx).sharing is None:
        raise NotApplicable("no sharing mode declared")
    if _decl(ctx).sharing == "community" and ctx.profile.os_state == SPECIALIZED:
        return [Finding("a specialized image in a community gallery: its identity, host keys "
                        "and accounts reach everyone", "osState")]
    return []


COMMUNITY_INFO = Declaration(sharing="community", publisher_uri="https://example.org",
                             publisher_email="images@example.org",
                             community_eula="https://example.org/eula", public_name_prefix="myorg")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@check(id="gallery.community-info",
       title="A community gallery declares its publisher URI, contact e-mail, EULA and prefix",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="Sharing a gallery with the community publishes who stands behind it: its "
                 "sharingProfile.communityGalleryInfo gives the publisher's website, a support "
                 "e-mail, the end-user license agreement and the prefix of the gallery's public "
                 "name, all visible to every user; az sig create/update --permissions Community "
                 "takes them as --publisher-uri, --publisher-email, --eula and "
                 "--public-name-prefix, and Azure refuses community sharing without them.",
       source=("ACG-COMM", "AZ-SIG", "SDK-GAL: CommunityGalleryInfo"),
       remediation="Give --publisher-uri, --publisher-email, --community-eula and "
                   "--public-name-prefix (or communityGalleryInfo in --gallery-file).",
       passes=[Example("community with all four", profile={"gallery": COMMUNITY_INFO}),
               Example("private, none given", profile={"gallery": Declaration(
                   sharing="private")})],
       fails=[Example("community, no information", profile={"gallery": Declaration(
           sharing="community")}),
              Example("community, e-mail without a domain and a relative URI", profile={
                  "gallery": replace(COMMUNITY_INFO, publisher_email="images",
                                     publisher_uri="example.org")})])
def community_info(ctx: Context) -> list[Finding]:
    decl = _decl(ctx)
    if decl.sharing is None:
        raise NotApplicable("no sharing mode declared")
    if decl.sharing != "community":
        return []
    given = {"publisherUri": decl.publisher_uri, "publisherContact": decl.publisher_email,
             "eula": decl.community_eula, "publicNamePrefix": decl.public_name_prefix}
    out = [Finding(f"community sharing without communityGalleryInfo.{k}",
                   f"communityGalleryInfo.{k}", fix=f"--{FLAGS[k]}")
           for k, v in given.items() if not v]
    uri = decl.publisher_uri
    if uri and not _is_url(uri):
        out.append(Finding(f"publisher URI {uri!r} is not an absolute http(s) URL",
                           "communityGalleryInfo.publisherUri"))
    if decl.publisher_email and not EMAIL_RE.match(decl.publisher_email):
        out.append(Finding(f"publisher contact {decl.publisher_email!r} is not an e-mail "
                           "address", "communityGalleryInfo.publisherContact"))
    return out


FLAGS = {"publisherUri": "publisher-uri", "publisherContact": "publisher-email",
         "eula": "community-eula", "publicNamePrefix": "public-name-prefix"}


@check(id="gallery.source", title="The version's source type can carry this image",
       severity=Severity.ERROR, needs="disk", applies=NAMES,
       rationale="A managed image holds generalized images only, in one region (for "
                 "development and test); a specialized disk goes to the gallery from a managed "
                 "disk, snapshot or VHD. Each source needs its own permission: disk or snapshot "
                 "write, VHD write with listKeys on the storage account, managed image read "
                 "(stated in the manifest's gallery.source).",
       source=("IMGV", "ACG-OV"),
       remediation="Use --source managed-disk (or storage-vhd) for a specialized image.",
       passes=[Example("generalized from a managed image", profile={"gallery": Declaration(
           source="managed-image")}),
               Example("specialized from a managed disk", profile={
                   "gallery": Declaration(source="managed-disk"), "os_state": SPECIALIZED})],
       fails=[Example("specialized from a managed image", profile={
           "gallery": Declaration(source="managed-image"), "os_state": SPECIALIZED})])
def source(ctx: Context) -> list[Finding]:
    kind = _decl(ctx).source
    if kind is None:
        raise NotApplicable("no source type declared")
    if kind == "managed-image" and ctx.profile.os_state == SPECIALIZED:
        return [Finding("a managed image cannot hold a specialized OS disk", "source",
                        fix="--source managed-disk")]
    return []
