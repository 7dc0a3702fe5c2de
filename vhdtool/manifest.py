"""The upload manifest: what to tell Azure about a disk, derived from the disk, written down.

One ``vhdtool check`` run (one appliance launch) gives the container and partition facts, the
check results, the guest facts and the gallery derivation (:mod:`checks.gallery`, gathered by the
pipeline's ``collect`` hook while the guest is open); the file's digests are computed in a thread
meanwhile.  :func:`build` turns them into a JSON document with ``schema_version`` (published as
vhdtool/schemas/manifest.schema.json), the upload commands (``az disk create --upload-type Upload``,
``azcopy copy --blob-type PageBlob``, ``az sig image-definition create``, ``az sig image-version
create``) and an ARM template fragment for the image definition(s) and version.

The commands use what the author declared, and the derived values for what was not declared; a
declared value the disk does not support is a ``gallery.*`` check failure, and the manifest then
says ``upload.ready: false``.

References:
  Microsoft Learn, "Create an image definition and an image version"
  (learn.microsoft.com/azure/virtual-machines/image-version: gallery properties), UPL (upload to a
  managed disk: --upload-type Upload, --upload-size-bytes = file size, azcopy --blob-type
  PageBlob, grant-access/revoke-access); Azure CLI ``az disk create``, ``az snapshot create``
  (--hyper-v-generation), ``az sig image-definition create`` (--features "SecurityType=...
  DiskControllerTypes=SCSI,NVMe IsAcceleratedNetworkSupported=True"), ``az sig image-version
  create`` (--os-snapshot takes a snapshot or managed disk id); ARM Microsoft.Compute/galleries/
  images and images/versions (storageProfile.osDiskImage.source.id).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from vhdtool.checks.catalog import V2, Context, Severity, Verdict
from vhdtool.checks.gallery import (Declaration, Definition, Derivation, declared_accelerated,
                                    declared_controllers, declared_security_type, derive,
                                    feature_values)
from vhdtool.checks.gallery.document import source_section, updatable_section
from vhdtool.checks.provisioning import provisioners

from . import __version__
from .datadisks import of as data_disks_of
from .exitcodes import trips
from .pipeline import CheckRun
from .upload import Target, arm_template, commands, script, upload_section

log = logging.getLogger(__name__)

#: bump on any incompatible change of the manifest's shape (and update the schema file)
SCHEMA_VERSION = 1


# -- gathered while the guest is open ---------------------------------------------------------

def collect(ctx: Context) -> dict[str, Any]:
    """The pipeline's ``collect`` hook: the derivation and the guest facts, guest still open."""
    derivation = derive(ctx)
    return {"gallery": derivation, "guest": guest_section(ctx, derivation)}


def guest_section(ctx: Context, derivation: Derivation) -> dict[str, Any]:
    if ctx.guest is None:
        return {"opened": False, "reason": ctx.guest_skip_reason, "os_type": None,
                "distribution": None, "version": None, "architecture": None, "kernels": [],
                "provisioners": []}
    facts = ctx.guest.facts
    return {
        "opened": True, "reason": None, "os_type": derivation.os_type.value,
        "distribution": facts.distro, "version": facts.version, "architecture": facts.arch,
        "kernels": [{"version": k.version, "image": k.image, "initramfs": k.initramfs}
                    for k in facts.kernels],
        "provisioners": [p.as_dict() for p in provisioners(ctx)],
    }


# -- digests, in a thread beside the check run ---------------------------------------------------

class Digests:
    """SHA-256 (and MD5 on request) of every byte of the file, computed in a background thread,
    or taken from ``vhdtool convert --json`` output that provably describes the file as it is."""

    def __init__(self, path: str, md5: bool, convert_json: str | None = None) -> None:
        self.path, self.names = path, ("sha256", "md5") if md5 else ("sha256",)
        self._out: dict[str, str] = {}
        self._error: BaseException | None = None
        self.source = "computed"
        if convert_json is not None:
            known = convert_digests(path, convert_json, self.names)
            if isinstance(known, dict):
                self._out, self.source = known, f"vhdtool convert --json ({convert_json})"
                self._thread = None
                return
            log.warning("%s: digests computed again: %s", convert_json, known)
        self._thread = threading.Thread(target=self._run, name="manifest-digests", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .convert import digest_report, hash_file
        try:
            size = os.path.getsize(self.path)
            self._out = digest_report(hash_file(self.path, self.names, progress=False), size)
        except BaseException as e:  # noqa: BLE001 - re-raised in result()
            self._error = e

    def result(self) -> dict[str, str]:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return {**self._out, "source": self.source}


def convert_digests(image: str, convert_json: str, names: Sequence[str]) -> dict[str, str] | str:
    """The digests recorded by ``vhdtool convert --json`` for ``image``, or why they cannot be used.

    Usable only when that output names this very file (same inode), the size matches, the file
    has not been modified since the JSON was written, and it holds every digest asked for.
    """
    try:
        with open(convert_json, encoding="utf-8") as f:
            doc = json.load(f)
        out, digests = doc["output"], doc["digests"]
        recorded = str(out["path"])
        json_mtime = os.stat(convert_json).st_mtime_ns
        st = os.stat(image)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"not a readable vhdtool convert --json output ({type(e).__name__}: {e})"
    if not os.path.exists(recorded) or not os.path.samefile(recorded, image):
        return f"it describes {recorded}, not {image}"
    if out.get("file_size") != st.st_size:
        return f"it records {out.get('file_size')} bytes, the file has {st.st_size}"
    if st.st_mtime_ns > json_mtime or st.st_ctime_ns > json_mtime:
        return f"{image} was modified after it was written"
    missing = [n for n in names if not isinstance(digests.get(n), str)]
    if missing:
        return f"it has no {', '.join(missing)} (vhdtool convert --digest {missing[0]})"
    wanted = [*names, *(["md5_base64"] if "md5" in names else [])]
    return {k: str(digests.get(k)) for k in wanted}


# -- the document ---------------------------------------------------------------------------------

def _footer(run: CheckRun) -> dict[str, Any] | None:
    f = run.facts.footer
    if f is None:
        return None
    return {"cookie": f.cookie.decode("latin-1"), "checksum_ok": f.checksum_ok,
            "version": f"{f.version:#010x}", "data_offset": f"{f.data_offset:#018x}",
            "disk_type": f.disk_type_name, "current_size": f.current_size,
            "original_size": f.original_size, "geometry": list(f.geometry),
            "creator_app": f.creator_app, "offset": f.offset}


def _file(run: CheckRun, digests: Mapping[str, str]) -> dict[str, Any]:
    """The file uploaded: its size (= --upload-size-bytes) and digests of every byte."""
    size = run.facts.file_size
    return {"name": os.path.basename(run.image), "path": os.path.abspath(run.image),
            "size": size, "upload_size_bytes": size, "sha256": digests.get("sha256"),
            "md5": digests.get("md5"), "md5_base64": digests.get("md5_base64"),
            "digests_from": digests.get("source", "computed")}


def _container(run: CheckRun) -> dict[str, Any]:
    d = run.facts
    return {"format": d.format, "subformat": d.subformat, "virtual_size": d.virtual_size,
            "logical_sector_size": d.logical_sector_size,
            "creator": d.footer.creator_app if d.footer else None, "footer": _footer(run),
            "unreadable": d.unreadable}


def _partitions(run: CheckRun) -> dict[str, Any]:
    d = run.facts
    return {"scheme": d.scheme, "mbr_boot_code": d.mbr_boot_code,
            "entries": [{"index": p.index, "start": p.start, "size": p.size,
                         "type_id": p.type_id, "type_name": p.type_name, "name": p.name,
                         "bootable": p.bootable, "fs": p.fs} for p in d.partitions]}


def _checks(run: CheckRun, fail_on: Severity) -> dict[str, Any]:
    results = {}
    for r in run.results:
        results[r.check.id] = {"verdict": r.verdict.value, "severity": str(r.severity),
                               "gate": trips(r.verdict, r.severity, fail_on), "reason": r.reason,
                               "findings": [f.as_dict() for f in r.findings]}
    return {"fail_on": str(fail_on), "passed": not any(v["gate"] for v in results.values()),
            "summary": {v.value: sum(r.verdict is v for r in run.results) for v in Verdict},
            "results": results}


def effective(run: CheckRun, derivation: Derivation) -> list[dict[str, Any]]:
    """The definitions to register: one per generation, declared values over derived ones.

    The generations are the declared ones (else what the disk boots; V2 first).  A declared
    security type, controller list or Accelerated Networking applies to V2 definitions, and to V1
    only when V1 was declared explicitly (the gallery.* checks then refuse the combination).
    """
    prof = run.profile
    gens = sorted(prof.generations) if prof.generations is not None \
        else list(derivation.generations.value)
    gens.sort(key=lambda g: g != V2)
    sec, ctl, acc = (declared_security_type(prof), declared_controllers(prof),
                     declared_accelerated(prof))
    out = []
    for g in gens:
        d = derivation.definition(g)
        use_declared = g == V2 or prof.generations is not None
        security = sec if sec and use_declared else (d.security_type.value if d else "Standard")
        controllers = ctl if ctl and use_declared else (d.disk_controllers.value if d
                                                         else ("SCSI",))
        accel = acc if acc is not None else derivation.accelerated_networking.value
        out.append({"hyperVGeneration": g,
                    "features": feature_values(security, controllers, accel)})
    return out


def _definition_dict(d: Definition, accelerated: Any) -> dict[str, Any]:
    return {"hyperVGeneration": d.generation,
            "features": {"SecurityType": d.security_type.as_dict(),
                         "DiskControllerTypes": d.disk_controllers.as_dict(),
                         "IsAcceleratedNetworkSupported": accelerated.as_dict()}}


def gallery_section(run: CheckRun, derivation: Derivation) -> dict[str, Any]:
    decl: Declaration = run.profile.gallery or Declaration()
    prof = run.profile
    return {
        "osType": derivation.os_type.as_dict(),
        "osState": derivation.os_state.as_dict(),
        "architecture": derivation.architecture.as_dict(),
        "hyperVGeneration": derivation.generations.as_dict(),
        "isAcceleratedNetworkSupported": derivation.accelerated_networking.as_dict(),
        "definitions": [_definition_dict(d, derivation.accelerated_networking)
                        for d in derivation.definitions],
        "declared": {"osState": {"generalized": "Generalized",
                                 "specialized": "Specialized"}[prof.os_state],
                     "hyperVGeneration": sorted(prof.generations)
                     if prof.generations is not None else None, **decl.as_dict()},
        "updatable": updatable_section(decl),
        "source": source_section(decl),
        "register": effective(run, derivation),
    }


def build(run: CheckRun, digests: Mapping[str, str], fail_on: Severity,
          target: Target = Target()) -> dict[str, Any]:
    """The manifest of one run (``run.extra`` must hold what :func:`collect` gathered)."""
    derivation: Derivation = run.extra["gallery"]
    checks_part = _checks(run, fail_on)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "vhdtool", "version": __version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "file": _file(run, digests),
        "container": _container(run),
        "partitions": _partitions(run),
        "guest": run.extra["guest"],
        "checks": checks_part,
        "gallery": gallery_section(run, derivation),
        "data_disks": [{"lun": d.disk.lun, "file": _file(d.run, d.digests.result()),
                        "container": _container(d.run), "partitions": _partitions(d.run),
                        "checks": _checks(d.run, fail_on)} for d in data_disks_of(run)],
    }
    doc["upload"] = upload_section(doc, run, target)
    return doc


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


__all__ = ["SCHEMA_VERSION", "Digests", "Target", "build", "collect", "commands", "arm_template",
           "render", "script", "effective"]
