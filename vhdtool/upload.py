"""The upload commands and the ARM fragment of a manifest: what to run after the checks passed.

``commands`` gives bash lines: ``az disk create --upload-type Upload --upload-size-bytes N``,
``az disk grant-access``, ``azcopy copy --blob-type PageBlob``, ``az disk revoke-access``, ``az
snapshot create``, ``az sig image-definition create`` and ``az sig image-version create`` (with
what the declaration adds, and the managed-image or storage-VHD route: :mod:`vhdtool.publish`);
``arm_template`` the same image definition(s) and version as an ARM fragment; ``script`` the
lines as a bash script that stops where a name was not given (``Target``).  Every command is
checked offline by the real Azure CLI in tests/vhdtool/test_az_commands.py.

References: Azure CLI ``az disk``, ``az snapshot``, ``az sig`` (learn.microsoft.com/cli/azure);
Microsoft Learn, "Upload a VHD to Azure or copy a managed disk to another region - Azure CLI"
(learn.microsoft.com/azure/virtual-machines/linux/disks-upload-vhd-to-managed-disk-cli); ARM
Microsoft.Compute/galleries/images and images/versions (storageProfile.osDiskImage.source.id).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from typing import Any

from vhdtool.checks.gallery import SIGNED_TYPES, Declaration

from . import __version__
from .datadisks import of as data_disks_of
from .pipeline import CheckRun
from .publish import (community_parameters, definition_flags, definition_properties,
                      gallery_resource, publishing_profile, sharing_lines, sharing_variables, tags,
                      version_flags)

ARM_API = "2023-07-03"
SAS_SECONDS = 86400


@dataclass(frozen=True)
class Target:
    """Where the upload goes; names not given become shell variables the script requires."""

    resource_group: str | None = None
    location: str | None = None
    disk_name: str | None = None
    storage_sku: str = "Standard_LRS"


# -- upload commands and the ARM fragment ---------------------------------------------------

def _blockers(doc: dict[str, Any], run: CheckRun) -> list[str]:
    out = []
    if not run.facts.is_fixed_vhd():
        out.append(f"{doc['file']['name']} is not a fixed VHD: run vhdtool convert first")
    gated = [cid for cid, r in doc["checks"]["results"].items() if r["gate"]]
    if gated:
        out.append("checks failed: " + ", ".join(gated))
    if not run.extra["guest"]["opened"]:
        out.append(f"the guest was not opened ({run.extra['guest']['reason']}): osState, "
                   f"architecture and features are not verified")
    elif doc["gallery"]["osState"]["value"] is None:
        out.append("the OS state could not be derived (see gallery.osState)")
    if not doc["gallery"]["register"]:
        out.append("the disk boots no Hyper-V generation")
    for d, data in zip(data_disks_of(run), doc["data_disks"]):
        if not d.run.facts.is_fixed_vhd():
            out.append(f"data disk LUN {d.disk.lun} {data['file']['name']} is not a fixed VHD: "
                       "run vhdtool convert first")
        gated = [cid for cid, r in data["checks"]["results"].items() if r["gate"]]
        if gated:
            out.append(f"data disk LUN {d.disk.lun} checks failed: " + ", ".join(gated))
    return out


def _var(name: str, value: str | None) -> str:
    """``NAME=value`` (quoted) or, when unknown, a line that stops the script until it is set."""
    if value is None:
        return f'{name}="${{{name}:?set {name}}}"'
    return f"{name}={shlex.quote(value)}"


def _safe_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", stem).strip("-_") or "disk"
    return name[:80]


def commands(doc: dict[str, Any], run: CheckRun, target: Target) -> list[str]:
    """The upload and registration commands as shell lines (bash)."""
    g = doc["gallery"]
    decl: Declaration = run.profile.gallery or Declaration()
    register = g["register"]
    if not register:
        return []
    primary = register[0]
    arch = g["architecture"]["value"] or "x64"
    os_state = g["declared"]["osState"]
    stem = os.path.splitext(doc["file"]["name"])[0]
    lines = [
        "set -euo pipefail",
        f"# {doc['file']['name']}: sha256 {doc['file']['sha256']}",
        _var("RESOURCE_GROUP", target.resource_group),
        _var("LOCATION", target.location or decl.location),
        _var("DISK", target.disk_name or _safe_name(stem)),
        _var("GALLERY", decl.gallery), _var("DEFINITION", decl.definition),
        _var("VERSION", decl.version), _var("PUBLISHER", decl.publisher),
        _var("OFFER", decl.offer), _var("SKU", decl.sku),
        _var("VHD", doc["file"]["path"]),
        *(_var(f"DATA_VHD_{d['lun']}", d["file"]["path"]) for d in doc["data_disks"]),
        *(_var(name, None) for name in sharing_variables(decl)),
    ]
    kind = decl.source or "managed-disk"
    if kind == "storage-vhd":
        lines += [_var("STORAGE_ACCOUNT", None), _var("CONTAINER", "vhds"),
                  _var("BLOB", f"{_safe_name(stem)}.vhd")]
    lines.append(f"# source {kind}: {doc['gallery']['source']['permission']}")
    trusted = primary["features"]["SecurityType"] in SIGNED_TYPES
    # a hybrid disk's upload stays Standard: its V1 snapshot cannot carry a Trusted Launch type
    security = ["--security-type", "TrustedLaunch"] if trusted and len(register) == 1 else []
    if trusted and not security:
        lines.append("# hybrid disk: the upload disk stays Standard so that a V1 snapshot can be "
                     "made from it; the V2 definition still says SecurityType="
                     f"{primary['features']['SecurityType']}")
    if kind == "storage-vhd":
        lines += _storage_upload("$VHD", "$BLOB", "VHD_URI")
        for d in doc["data_disks"]:
            n = d["lun"]
            lines.append(_var(f"DATA_BLOB_{n}", f"{_safe_name(stem)}-lun{n}.vhd"))
            lines += _storage_upload(f"$DATA_VHD_{n}", f"$DATA_BLOB_{n}", f"DATA_VHD_URI_{n}")
    else:
        lines += _disk_upload("$DISK", "$VHD", doc["file"]["upload_size_bytes"],
                              ["--os-type", "Linux", "--hyper-v-generation",
                               primary["hyperVGeneration"], "--architecture", arch, *security],
                              "DISK_ID", target)
        for d in doc["data_disks"]:
            n = d["lun"]
            lines += _disk_upload(f"$DISK-lun{n}", f"$DATA_VHD_{n}",
                                  d["file"]["upload_size_bytes"], [], f"DATA_DISK_ID_{n}", target)
    lines += sharing_lines(decl)
    for i, definition in enumerate(register):
        gen = definition["hyperVGeneration"]
        suffix = "" if i == 0 else f"-{gen.lower().replace('v', 'gen')}"
        source = '"$DISK_ID"'
        if i > 0 and kind != "storage-vhd":   # a hybrid disk: a snapshot of the other generation
            lines.append(" ".join(["az", "snapshot", "create", "--resource-group",
                                '"$RESOURCE_GROUP"', "--name", f'"$DISK{suffix}"', "--location",
                                '"$LOCATION"', "--source", '"$DISK_ID"', "--hyper-v-generation",
                                gen]))
            lines.append(f'SNAPSHOT_ID="$(az snapshot show --resource-group "$RESOURCE_GROUP" '
                         f'--name "$DISK{suffix}" --query id --output tsv)"')
            source = '"$SNAPSHOT_ID"'
        features = " ".join(f"{k}={v}" for k, v in definition["features"].items())
        lines.append(" ".join(["az", "sig", "image-definition", "create", "--resource-group",
                            '"$RESOURCE_GROUP"', "--gallery-name", '"$GALLERY"',
                            "--gallery-image-definition", f'"$DEFINITION{suffix}"',
                            # the gallery's region, as for the version (az would otherwise ask
                            # Azure for the resource group's, which may differ)
                            "--location", '"$LOCATION"',
                            "--publisher", '"$PUBLISHER"', "--offer", '"$OFFER"',
                            "--sku", f'"$SKU{suffix}"', "--os-type", "Linux",
                            "--os-state", os_state, "--hyper-v-generation", gen,
                            "--architecture", arch, "--features", shlex.quote(features),
                            *definition_flags(decl)]))
        luns = [str(d["lun"]) for d in doc["data_disks"]]
        disk_ids = [f'"$DATA_DISK_ID_{n}"' for n in luns]
        origin = {"managed-disk": ["--os-snapshot", source, *_data_snapshots(luns)],
                  "storage-vhd": ["--os-vhd-uri", '"$VHD_URI"', "--os-vhd-storage-account",
                                  '"$STORAGE_ACCOUNT"', *_data_vhds(luns)]}.get(kind)
        if origin is None:      # managed image: from the disk (or snapshot) of this generation,
            # with the data disks (az image create numbers them 0.. in order: LUNs 0..N-1)
            lines += _managed_image(suffix, source, gen, disk_ids)
            origin = ["--managed-image", '"$IMAGE_ID"']
        lines.append(" ".join(["az", "sig", "image-version", "create", "--resource-group",
                            '"$RESOURCE_GROUP"', "--gallery-name", '"$GALLERY"',
                            "--gallery-image-definition", f'"$DEFINITION{suffix}"',
                            "--gallery-image-version", '"$VERSION"', "--location",
                            '"$LOCATION"', *origin, *version_flags(decl)]))
    return lines


def _data_snapshots(luns: list[str]) -> list[str]:
    """The data disks of ``az sig image-version create`` from managed disks (ids by LUN)."""
    if not luns:
        return []
    return ["--data-snapshots", *(f'"$DATA_DISK_ID_{n}"' for n in luns),
            "--data-snapshot-luns", *luns]


def _data_vhds(luns: list[str]) -> list[str]:
    """The data disks of ``az sig image-version create`` from page blobs (URIs by LUN)."""
    if not luns:
        return []
    return ["--data-vhds-uris", *(f'"$DATA_VHD_URI_{n}"' for n in luns), "--data-vhds-luns",
            *luns, "--data-vhds-storage-accounts", *['"$STORAGE_ACCOUNT"'] * len(luns)]


def _disk_upload(disk: str, vhd: str, size: int, flags: list[str], id_var: str,
                 target: Target) -> list[str]:
    """Upload to a managed disk: create it for the file's bytes, write it with azcopy, and set
    ``id_var`` to its id."""
    where = ["--resource-group", '"$RESOURCE_GROUP"', "--name", f'"{disk}"']
    return [
        " ".join(["az", "disk", "create", *where, "--location", '"$LOCATION"',
                  "--upload-type", "Upload", "--upload-size-bytes", str(size),
                  "--sku", target.storage_sku, *flags]),
        " ".join(['SAS="$(az', "disk", "grant-access", *where, "--access-level", "Write",
                  "--duration-in-seconds", str(SAS_SECONDS), "--query", "accessSas", "--output",
                  'tsv)"']),
        f'azcopy copy "{vhd}" "$SAS" --blob-type PageBlob',
        " ".join(["az", "disk", "revoke-access", *where]),
        " ".join([f'{id_var}="$(az', "disk", "show", *where, "--query", "id", "--output",
                  'tsv)"']),
    ]


def _storage_upload(vhd: str, blob: str, uri_var: str) -> list[str]:
    """Upload as a page blob to a storage account (the --os-vhd-uri route), its URI in
    ``uri_var``."""
    return [" ".join(["az", "storage", "blob", "upload", "--account-name", '"$STORAGE_ACCOUNT"',
                      "--container-name", '"$CONTAINER"', "--name", f'"{blob}"', "--file",
                      f'"{vhd}"', "--type", "page", "--auth-mode", "login"]),
            f'{uri_var}="https://$STORAGE_ACCOUNT.blob.core.windows.net/$CONTAINER/{blob}"']


def _managed_image(suffix: str, source: str, gen: str, data: list[str]) -> list[str]:
    """``az image create`` from the uploaded disk (or snapshot) and the data disks, its id."""
    return [" ".join(["az", "image", "create", "--resource-group", '"$RESOURCE_GROUP"', "--name",
                      f'"$DISK{suffix}-image"', "--location", '"$LOCATION"', "--source", source,
                      *(["--data-disk-sources", *data] if data else []),
                      "--os-type", "Linux", "--hyper-v-generation", gen]),
            f'IMAGE_ID="$(az image show --resource-group "$RESOURCE_GROUP" --name '
            f'"$DISK{suffix}-image" --query id --output tsv)"']


def arm_template(doc: dict[str, Any], run: CheckRun) -> dict[str, Any]:
    """An ARM template fragment: the image definition(s) and their version from the disk."""
    decl: Declaration = run.profile.gallery or Declaration()
    g = doc["gallery"]
    params: dict[str, Any] = {
        "galleryName": {"type": "string", **({"defaultValue": decl.gallery}
                                             if decl.gallery else {})},
        "definitionName": {"type": "string", **({"defaultValue": decl.definition}
                                                if decl.definition else {})},
        "versionName": {"type": "string", **({"defaultValue": decl.version}
                                             if decl.version else {})},
        "location": {"type": "string",
                     "defaultValue": decl.location or "[resourceGroup().location]"},
    }
    resources = []
    luns = [d["lun"] for d in doc["data_disks"]]
    for i, definition in enumerate(g["register"]):
        gen = definition["hyperVGeneration"]
        suffix = "" if i == 0 else f"-{gen.lower().replace('v', 'gen')}"
        source = "sourceDiskId" if i == 0 else f"sourceSnapshotId{gen}"
        params[source] = {"type": "string", "metadata": {"description": (
            "resource id of the uploaded managed disk" if i == 0 else
            f"resource id of a snapshot of the disk created with --hyper-v-generation {gen}")}}
        name = f"[concat(parameters('definitionName'), '{suffix}')]"
        props: dict[str, Any] = {
            "osType": "Linux", "osState": g["declared"]["osState"], "hyperVGeneration": gen,
            "architecture": g["architecture"]["value"] or "x64",
            "identifier": {"publisher": decl.publisher or "[parameters('publisher')]",
                           "offer": decl.offer or "[parameters('offer')]",
                           "sku": f"{decl.sku}{suffix}" if decl.sku else
                           f"[concat(parameters('sku'), '{suffix}')]"},
            "features": [{"name": k, "value": v} for k, v in definition["features"].items()],
        }
        props.update(definition_properties(decl))
        resources.append({
            "type": "Microsoft.Compute/galleries/images", "apiVersion": ARM_API,
            "name": f"[format('{{0}}/{{1}}', parameters('galleryName'), {name[1:-1]})]",
            "location": "[parameters('location')]", **tags(decl), "properties": props})
        resources.append({
            "type": "Microsoft.Compute/galleries/images/versions", "apiVersion": ARM_API,
            "name": f"[format('{{0}}/{{1}}/{{2}}', parameters('galleryName'), {name[1:-1]}, "
                    f"parameters('versionName'))]",
            "location": "[parameters('location')]",
            "dependsOn": [f"[resourceId('Microsoft.Compute/galleries/images', "
                          f"parameters('galleryName'), {name[1:-1]})]"],
            **tags(decl),
            "properties": {"storageProfile": _storage_profile(decl, source, params, luns),
                           "publishingProfile": publishing_profile(decl)}})
    for key in ("publisher", "offer", "sku"):
        if getattr(decl, key) is None and resources:
            params[key] = {"type": "string"}
    resources[:0] = gallery_resource(decl)
    params.update(community_parameters(decl))
    return {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/"
                       "deploymentTemplate.json#",
            "contentVersion": "1.0.0.0", "parameters": params, "resources": resources}


def _storage_profile(decl: Declaration, source: str, params: dict[str, Any],
                     luns: list[int]) -> dict[str, Any]:
    """The version's source by route: the disk or snapshot (``source`` parameter), a managed
    image made from it (which holds the data disks), or the VHD blob with its storage account;
    with each data disk at its LUN in ``dataDiskImages`` (disk id or VHD blob)."""
    if decl.source == "managed-image":
        params[f"{source}Image"] = {"type": "string", "metadata": {"description": (
            f"resource id of the managed image made from {source}"
            + (" and the data disks" if luns else ""))}}
        return {"source": {"id": f"[parameters('{source}Image')]"}}
    if decl.source == "storage-vhd":
        params["vhdUri"] = {"type": "string", "metadata": {"description": "URI of the VHD blob"}}
        params["storageAccountId"] = {"type": "string", "metadata": {
            "description": "resource id of the storage account holding the VHDs"}}
        account = "[parameters('storageAccountId')]"
        out = {"osDiskImage": {"source": {"uri": "[parameters('vhdUri')]",
                                          "storageAccountId": account}}}
        data = {n: {"uri": f"[parameters('dataVhdUri{n}')]", "storageAccountId": account}
                for n in luns}
        for n in luns:
            params[f"dataVhdUri{n}"] = {"type": "string", "metadata": {
                "description": f"URI of the VHD blob of the data disk at LUN {n}"}}
    else:
        out = {"osDiskImage": {"source": {"id": f"[parameters('{source}')]"}}}
        data = {n: {"id": f"[parameters('dataDiskId{n}')]"} for n in luns}
        for n in luns:
            params[f"dataDiskId{n}"] = {"type": "string", "metadata": {
                "description": f"resource id of the uploaded managed disk at LUN {n}"}}
    if luns:
        out["dataDiskImages"] = [{"lun": n, "source": data[n]} for n in luns]
    return out


def upload_section(doc: dict[str, Any], run: CheckRun, target: Target) -> dict[str, Any]:
    blockers = _blockers(doc, run)
    return {"ready": not blockers, "blockers": blockers,
            "commands": commands(doc, run, target), "arm_template": arm_template(doc, run)}


def script(doc: dict[str, Any]) -> str:
    """The upload commands as a bash script (``--commands``)."""
    head = ["#!/bin/bash", f"# generated by vhdtool {__version__} manifest"]
    if not doc["upload"]["ready"]:
        head += [f"# NOT READY: {b}" for b in doc["upload"]["blockers"]]
    return "\n".join(head + doc["upload"]["commands"]) + "\n"
