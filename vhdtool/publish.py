"""What a :class:`~vhdtool.checks.gallery.Declaration` adds to the upload commands and the ARM
fragment: the image definition's optional properties, the version's publishing profile, sharing,
and the source route (managed disk, managed image, VHD in a storage account).

References: Azure CLI ``az sig image-definition create`` (--description, --eula,
--privacy-statement-uri, --release-note-uri, --minimum/maximum-cpu-core, --minimum/maximum-memory,
--disallowed-disk-types, --plan-*, --tags), ``az sig image-version create`` (--target-regions
REGION[=COUNT], --replica-count, --storage-account-type, --exclude-from-latest,
--replication-mode, --end-of-life-date, --managed-image, --os-vhd-uri, --os-vhd-storage-account),
``az image create``, ``az sig update --permissions``, ``az sig share add``/``enable-community``;
ARM Microsoft.Compute/galleries (sharingProfile), galleries/images (recommended, disallowed,
purchasePlan) and images/versions (publishingProfile, storageProfile) of API 2023-07-03.
"""

from __future__ import annotations

import datetime
import shlex
from typing import Any

from vhdtool.checks.gallery import Declaration, parse_date

Q = shlex.quote


def _opt(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, Q(str(value))]


def _tags(decl: Declaration) -> list[str]:
    return ["--tags", *(Q(f"{k}={v}") for k, v in decl.tags)] if decl.tags else []


def definition_flags(decl: Declaration) -> list[str]:
    """The declared optional properties of ``az sig image-definition create``."""
    out = _opt("--description", decl.description) + _opt("--eula", decl.eula)
    out += _opt("--privacy-statement-uri", decl.privacy_statement_uri)
    out += _opt("--release-note-uri", decl.release_note_uri)
    for (low, high), what in ((decl.vcpus or (None, None), "cpu-core"),
                              (decl.memory or (None, None), "memory")):
        out += _opt(f"--minimum-{what}", low) + _opt(f"--maximum-{what}", high)
    if decl.disallowed_disk_types:
        out += ["--disallowed-disk-types", *map(Q, decl.disallowed_disk_types)]
    out += _opt("--plan-publisher", decl.plan_publisher) + _opt("--plan-name", decl.plan_name)
    out += _opt("--plan-product", decl.plan_product)
    return out + _tags(decl) + _opt("--end-of-life-date", decl.end_of_life)


def version_flags(decl: Declaration) -> list[str]:
    """The declared publishing profile of ``az sig image-version create``."""
    out = []
    if decl.target_regions:
        out += ["--target-regions", *(Q(n if c is None else f"{n}={c}")
                                      for n, c in decl.target_regions)]
    out += _opt("--replica-count", decl.replica_count)
    out += _opt("--storage-account-type", decl.storage_account_type)
    if decl.exclude_from_latest is not None:
        out += ["--exclude-from-latest", str(decl.exclude_from_latest).lower()]
    out += _opt("--replication-mode", decl.replication_mode)
    return out + _opt("--end-of-life-date", decl.end_of_life) + _tags(decl)


GALLERY = ['--resource-group', '"$RESOURCE_GROUP"', '--gallery-name', '"$GALLERY"']


#: communityGalleryInfo: (ARM key, az sig create/update flag, Declaration attribute, script
#: variable when not declared); the fragment's parameter is "community" + the ARM key
COMMUNITY_INFO = (("publisherUri", "--publisher-uri", "publisher_uri", "PUBLISHER_URI"),
                  ("publisherContact", "--publisher-email", "publisher_email", "PUBLISHER_EMAIL"),
                  ("eula", "--eula", "community_eula", "COMMUNITY_EULA"),
                  ("publicNamePrefix", "--public-name-prefix", "public_name_prefix",
                   "PUBLIC_NAME_PREFIX"))


def _community_param(key: str) -> str:
    return "community" + key[0].upper() + key[1:]


def sharing_lines(decl: Declaration) -> list[str]:
    """Commands that open the gallery to the declared audience (none for private)."""
    if decl.sharing == "direct":
        return [" ".join(["az", "sig", "update", *GALLERY, "--permissions", "Groups"]),
                " ".join(["az", "sig", "share", "add", *GALLERY, "--subscription-ids",
                          '"$SHARE_SUBSCRIPTION_ID"'])]
    if decl.sharing == "community":
        info = [part for _, flag, attr, var in COMMUNITY_INFO
                for part in (flag, Q(getattr(decl, attr)) if getattr(decl, attr)
                             else f'"${var}"')]
        return [" ".join(["az", "sig", "update", *GALLERY, "--permissions", "Community", *info]),
                " ".join(["az", "sig", "share", "enable-community", *GALLERY])]
    return []


def sharing_variables(decl: Declaration) -> list[str]:
    """The names the sharing commands need that no option gives."""
    if decl.sharing == "direct":
        return ["SHARE_SUBSCRIPTION_ID"]
    if decl.sharing == "community":
        return [var for _, _, attr, var in COMMUNITY_INFO if not getattr(decl, attr)]
    return []


# -- ARM ------------------------------------------------------------------------------------

def arm_date(text: str) -> str:
    """An ISO-8601 date as the SDK serializes an iso-8601 property (so the fragment round-trips)."""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        when = datetime.datetime.combine(parse_date(text), datetime.time())
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _range(pair: tuple[int | None, int | None] | None) -> dict[str, int] | None:
    if pair is None:
        return None
    return {k: v for k, v in zip(("min", "max"), pair) if v is not None}


def definition_properties(decl: Declaration) -> dict[str, Any]:
    """The declared optional properties of a Microsoft.Compute/galleries/images resource."""
    props: dict[str, Any] = {k: v for k, v in (
        ("description", decl.description), ("eula", decl.eula),
        ("privacyStatementUri", decl.privacy_statement_uri),
        ("releaseNoteUri", decl.release_note_uri)) if v is not None}
    if decl.end_of_life:
        props["endOfLifeDate"] = arm_date(decl.end_of_life)
    recommended = {k: r for k, r in (("vCPUs", _range(decl.vcpus)),
                                     ("memory", _range(decl.memory))) if r}
    if recommended:
        props["recommended"] = recommended
    if decl.disallowed_disk_types:
        props["disallowed"] = {"diskTypes": list(decl.disallowed_disk_types)}
    plan = {k: v for k, v in (("name", decl.plan_name), ("publisher", decl.plan_publisher),
                              ("product", decl.plan_product)) if v is not None}
    if plan:
        props["purchasePlan"] = plan
    return props


def publishing_profile(decl: Declaration) -> dict[str, Any]:
    """The publishingProfile of a Microsoft.Compute/galleries/images/versions resource."""
    if decl.target_regions:
        regions = [{"name": n, **({"regionalReplicaCount": c} if c is not None else {})}
                   for n, c in decl.target_regions]
    else:
        regions = [{"name": "[parameters('location')]"}]
    out: dict[str, Any] = {"targetRegions": regions}
    for key, value in (("replicaCount", decl.replica_count),
                       ("excludeFromLatest", decl.exclude_from_latest),
                       ("storageAccountType", decl.storage_account_type),
                       ("replicationMode", decl.replication_mode)):
        if value is not None:
            out[key] = value
    if decl.end_of_life:
        out["endOfLifeDate"] = arm_date(decl.end_of_life)
    return out


def tags(decl: Declaration) -> dict[str, Any]:
    return {"tags": dict(decl.tags)} if decl.tags else {}


PERMISSIONS = {"private": "Private", "direct": "Groups", "community": "Community"}


def gallery_resource(decl: Declaration) -> list[dict[str, Any]]:
    """The gallery with its sharingProfile, when a sharing mode is declared."""
    if decl.sharing is None:
        return []
    profile: dict[str, Any] = {"permissions": PERMISSIONS[decl.sharing]}
    if decl.sharing == "community":
        profile["communityGalleryInfo"] = {
            key: getattr(decl, attr) or f"[parameters('{_community_param(key)}')]"
            for key, _, attr, _ in COMMUNITY_INFO}
    return [{"type": "Microsoft.Compute/galleries", "apiVersion": "2023-07-03",
             "name": "[parameters('galleryName')]", "location": "[parameters('location')]",
             "properties": {"sharingProfile": profile}}]


def community_parameters(decl: Declaration) -> dict[str, Any]:
    """The fragment's parameters for the community information not declared."""
    if decl.sharing != "community":
        return {}
    return {_community_param(key): {"type": "string"} for key, _, attr, _ in COMMUNITY_INFO
            if not getattr(decl, attr)}
