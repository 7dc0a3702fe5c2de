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
from .pipeline import CheckRun
from .publish import (definition_flags, definition_properties, gallery_resource,
                      publishing_profile, sharing_lines, sharing_variables, tags, version_flags)

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
    lines += _storage_upload(doc) if kind == "storage-vhd" else \
        _disk_upload(doc, primary, arch, security, target)
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
        origin = {"managed-disk": ["--os-snapshot", source],
                  "storage-vhd": ["--os-vhd-uri", '"$VHD_URI"', "--os-vhd-storage-account",
                                  '"$STORAGE_ACCOUNT"']}.get(kind)
        if origin is None:      # managed image: from the disk (or snapshot) of this generation
            lines += _managed_image(suffix, source, gen)
            origin = ["--managed-image", '"$IMAGE_ID"']
        lines.append(" ".join(["az", "sig", "image-version", "create", "--resource-group",
                            '"$RESOURCE_GROUP"', "--gallery-name", '"$GALLERY"',
                            "--gallery-image-definition", f'"$DEFINITION{suffix}"',
                            "--gallery-image-version", '"$VERSION"', "--location",
                            '"$LOCATION"', *origin, *version_flags(decl)]))
    return lines


def _disk_upload(doc: dict[str, Any], primary: dict[str, Any], arch: str, security: list[str],
                 target: Target) -> list[str]:
    """Upload to a managed disk: create it for the file's bytes, write it with azcopy."""
    return [
        " ".join(["az", "disk", "create", "--resource-group", '"$RESOURCE_GROUP"',
               "--name", '"$DISK"', "--location", '"$LOCATION"', "--os-type", "Linux", "--upload-type", "Upload",
               "--upload-size-bytes", str(doc["file"]["upload_size_bytes"]),
               "--sku", target.storage_sku, "--hyper-v-generation", primary["hyperVGeneration"],
               "--architecture", arch, *security]),
        " ".join(['SAS="$(az', "disk", "grant-access", "--resource-group", '"$RESOURCE_GROUP"',
               "--name", '"$DISK"', "--access-level", "Write", "--duration-in-seconds",
               str(SAS_SECONDS), "--query", "accessSas", "--output", 'tsv)"']),
        'azcopy copy "$VHD" "$SAS" --blob-type PageBlob',
        'az disk revoke-access --resource-group "$RESOURCE_GROUP" --name "$DISK"',
        'DISK_ID="$(az disk show --resource-group "$RESOURCE_GROUP" --name "$DISK" '
        '--query id --output tsv)"',
    ]


def _storage_upload(doc: dict[str, Any]) -> list[str]:
    """Upload as a page blob to a storage account (the --os-vhd-uri route)."""
    return [" ".join(["az", "storage", "blob", "upload", "--account-name", '"$STORAGE_ACCOUNT"',
                      "--container-name", '"$CONTAINER"', "--name", '"$BLOB"', "--file",
                      '"$VHD"', "--type", "page", "--auth-mode", "login"]),
            'VHD_URI="https://$STORAGE_ACCOUNT.blob.core.windows.net/$CONTAINER/$BLOB"']


def _managed_image(suffix: str, source: str, gen: str) -> list[str]:
    """``az image create`` from the uploaded disk (or snapshot), and its id."""
    return [" ".join(["az", "image", "create", "--resource-group", '"$RESOURCE_GROUP"', "--name",
                      f'"$DISK{suffix}-image"', "--location", '"$LOCATION"', "--source", source,
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
            "properties": {"storageProfile": _storage_profile(decl, source, params),
                           "publishingProfile": publishing_profile(decl)}})
    for key in ("publisher", "offer", "sku"):
        if getattr(decl, key) is None and resources:
            params[key] = {"type": "string"}
    resources[:0] = gallery_resource(decl)
    return {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/"
                       "deploymentTemplate.json#",
            "contentVersion": "1.0.0.0", "parameters": params, "resources": resources}


def _storage_profile(decl: Declaration, source: str, params: dict[str, Any]) -> dict[str, Any]:
    """The version's source by route: the disk or snapshot (``source`` parameter), a managed
    image made from it, or the VHD blob with its storage account."""
    if decl.source == "managed-image":
        params[f"{source}Image"] = {"type": "string", "metadata": {"description": (
            f"resource id of the managed image made from {source}")}}
        return {"source": {"id": f"[parameters('{source}Image')]"}}
    if decl.source == "storage-vhd":
        params["vhdUri"] = {"type": "string", "metadata": {"description": "URI of the VHD blob"}}
        params["storageAccountId"] = {"type": "string", "metadata": {
            "description": "resource id of the storage account holding the VHD"}}
        return {"osDiskImage": {"source": {"uri": "[parameters('vhdUri')]", "storageAccountId":
                                           "[parameters('storageAccountId')]"}}}
    return {"osDiskImage": {"source": {"id": f"[parameters('{source}')]"}}}


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
