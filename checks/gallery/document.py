"""A :class:`~checks.gallery.declaration.Declaration` as a document: the keys a declaration file
(``vhdtool --gallery-file``, published as vhdtool/schemas/gallery.schema.json) and the manifest's
``gallery.declared`` use, and which of them can be changed after the resource is created.

The keys are those of the ARM properties they become (Microsoft.Compute/galleries/images and
images/versions, API 2023-07-03), plus ``gallery``, ``definition``, ``version`` (the resource
names), ``location`` (the source region), ``sharing`` and ``source`` (the route).

Updatable after creation (:data:`UPDATABLE`): a definition's description, recommended vCPUs and
memory, end-of-life date and release notes; a version's target regions, replica counts,
exclude-from-latest and end-of-life date; tags on both.  Sources: Microsoft Learn "Update
resources in an Azure Compute Gallery" (ACG-UPD), and azure-mgmt-compute's models, whose
docstrings say "This property is updatable" for GalleryImage.description, .end_of_life_date,
.recommended and GalleryImageVersionPublishingProfile.target_regions, .replica_count,
.end_of_life_date, TargetRegion.regional_replica_count; az documents --replication-mode as "not
updatable".  Everything else is fixed at creation (a new definition or version is needed).
"""

from __future__ import annotations

from typing import Any

from .declaration import Declaration

#: document key -> Declaration attribute, for the values that map one to one
SCALARS = {
    "securityType": "security_type", "isAcceleratedNetworkSupported": "accelerated_networking",
    "publisher": "publisher", "offer": "offer", "sku": "sku", "gallery": "gallery",
    "definition": "definition", "version": "version", "endOfLifeDate": "end_of_life",
    "description": "description", "eula": "eula", "privacyStatementUri": "privacy_statement_uri",
    "releaseNoteUri": "release_note_uri", "location": "location",
    "replicaCount": "replica_count", "storageAccountType": "storage_account_type",
    "excludeFromLatest": "exclude_from_latest", "replicationMode": "replication_mode",
    "sharing": "sharing", "source": "source",
}
LISTS = {"diskControllerTypes": "disk_controllers", "disallowedDiskTypes": "disallowed_disk_types"}
PLAN = (("publisher", "plan_publisher"), ("name", "plan_name"), ("product", "plan_product"))
#: communityGalleryInfo (ARM CommunityGalleryInfo, the keys az sig create/update fill)
COMMUNITY = (("publisherUri", "publisher_uri"), ("publisherContact", "publisher_email"),
             ("eula", "community_eula"), ("publicNamePrefix", "public_name_prefix"))

#: which resource each key describes, and whether it can be changed after creation
UPDATABLE: dict[str, tuple[str, bool]] = {
    "securityType": ("definition", False), "diskControllerTypes": ("definition", False),
    "isAcceleratedNetworkSupported": ("definition", False), "publisher": ("definition", False),
    "offer": ("definition", False), "sku": ("definition", False), "gallery": ("gallery", False),
    "definition": ("definition", False), "version": ("version", False),
    "endOfLifeDate": ("definition and version", True), "description": ("definition", True),
    "eula": ("definition", False), "privacyStatementUri": ("definition", False),
    "releaseNoteUri": ("definition", True), "tags": ("definition", True),
    "recommended": ("definition", True), "disallowedDiskTypes": ("definition", False),
    "purchasePlan": ("definition", False), "location": ("version", False),
    "targetRegions": ("version", True), "replicaCount": ("version", True),
    "storageAccountType": ("version", False), "excludeFromLatest": ("version", True),
    "replicationMode": ("version", False), "sharing": ("gallery", True),
    "source": ("version", False), "communityGalleryInfo": ("gallery", True),
}
KEYS = tuple(UPDATABLE)


def _range(pair: tuple[int | None, int | None] | None) -> dict[str, int | None] | None:
    return None if pair is None else {"min": pair[0], "max": pair[1]}


def as_document(decl: Declaration) -> dict[str, Any]:
    """Every key of :data:`KEYS`, None where nothing is declared."""
    out: dict[str, Any] = {k: getattr(decl, a) for k, a in SCALARS.items()}
    out.update({k: None if getattr(decl, a) is None else list(getattr(decl, a))
                for k, a in LISTS.items()})
    out["tags"] = None if decl.tags is None else dict(decl.tags)
    out["recommended"] = None if decl.vcpus is None and decl.memory is None else \
        {"vCPUs": _range(decl.vcpus), "memory": _range(decl.memory)}
    plan = {k: getattr(decl, a) for k, a in PLAN}
    out["purchasePlan"] = None if all(v is None for v in plan.values()) else plan
    info = {k: getattr(decl, a) for k, a in COMMUNITY}
    out["communityGalleryInfo"] = None if all(v is None for v in info.values()) else info
    out["targetRegions"] = None if decl.target_regions is None else \
        [{"name": n, "regionalReplicaCount": c} for n, c in decl.target_regions]
    return {k: out[k] for k in KEYS}


def _pair(doc: Any) -> tuple[int | None, int | None] | None:
    return None if doc is None else (doc.get("min"), doc.get("max"))


def from_document(doc: dict[str, Any]) -> dict[str, Any]:
    """Declaration keyword arguments of a document (the keys it gives; None values skipped)."""
    out: dict[str, Any] = {a: doc[k] for k, a in SCALARS.items() if doc.get(k) is not None}
    out.update({a: tuple(doc[k]) for k, a in LISTS.items() if doc.get(k) is not None})
    if doc.get("tags") is not None:
        out["tags"] = tuple((str(k), str(v)) for k, v in doc["tags"].items())
    rec = doc.get("recommended")
    if rec is not None:
        for attr, key in (("vcpus", "vCPUs"), ("memory", "memory")):
            if rec.get(key) is not None:
                out[attr] = _pair(rec[key])
    for group, pairs in (("purchasePlan", PLAN), ("communityGalleryInfo", COMMUNITY)):
        for k, a in pairs:
            if (doc.get(group) or {}).get(k) is not None:
                out[a] = doc[group][k]
    if doc.get("targetRegions") is not None:
        out["target_regions"] = tuple((r["name"], r.get("regionalReplicaCount"))
                                      for r in doc["targetRegions"])
    return out


def updatable_section(decl: Declaration) -> dict[str, dict[str, Any]]:
    """For each declared key: the resource it belongs to and whether it can change later."""
    doc = as_document(decl)
    return {k: {"resource": UPDATABLE[k][0], "updatable": UPDATABLE[k][1]}
            for k in KEYS if doc[k] is not None}


#: the permission the identity that creates the version needs on each source (IMGV: "Create an
#: image definition and an image version", the source types and the role each needs)
PERMISSIONS = {
    "managed-disk": "write on the managed disk (or snapshot) the version is made from "
                    "(Microsoft.Compute/disks/write, e.g. Contributor on it)",
    "managed-image": "read on the managed image (Microsoft.Compute/images/read, e.g. Reader)",
    "storage-vhd": "write on the storage account holding the VHD, with its keys "
                   "(Microsoft.Storage/storageAccounts/listKeys/action, e.g. Storage Account "
                   "Contributor)",
}


def source_section(decl: Declaration) -> dict[str, str]:
    kind = decl.source or "managed-disk"
    return {"type": kind, "permission": PERMISSIONS[kind]}
