"""Data disks (``--data-disk LUN=FILE``): each is opened with the format reader, its disk facts
read and the disk-level checks run with the data-disk role (a fixed VHD, a whole MiB, within
Azure's size limits; the guest is never opened for a data disk); the reports, the manifest, the
upload commands and the ARM fragment carry each one at its LUN.

A LUN is 0 to 63 and unique among the data disks of an image: "The value must be between 0 and
63, inclusive" (the data disk's ``lun`` in Azure's API references, e.g. Microsoft Learn,
Microsoft.Azure.Batch.Protocol.Models.DataDisk.Lun; a VM takes at most 64 data disks) and
"must be unique for each data disk attached to a VM" (azure-mgmt-compute's DataDisk and
GalleryDataDiskImage ``lun``).  ``az image create --data-disk-sources`` numbers its sources 0, 1,
... in order (azure-cli 2.91.0, vm/custom.py ``create_image``), so the managed-image route can
keep only the LUNs 0..N-1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from vhdtool.checks.catalog import Profile, Result

from .pipeline import CheckRun

MAX_LUN = 63


@dataclass(frozen=True)
class DataDisk:
    lun: int
    path: str

    @property
    def label(self) -> str:
        """How reports name the disk: its LUN and its file."""
        return f"LUN {self.lun} {os.path.basename(self.path)}"


@dataclass
class DataDiskRun:
    disk: DataDisk
    run: CheckRun
    digests: Any = None         #: manifest.Digests, started before the run


def parse(values: Sequence[str]) -> tuple[DataDisk, ...]:
    """``LUN=FILE`` values, sorted by LUN; ValueError saying what is wrong."""
    out: dict[int, DataDisk] = {}
    for v in values:
        lun_text, eq, path = v.partition("=")
        if not eq or not path:
            raise ValueError(f"{v!r} is not LUN=FILE")
        try:
            lun = int(lun_text)
        except ValueError:
            raise ValueError(f"{v!r}: the LUN {lun_text!r} is not an integer") from None
        if not 0 <= lun <= MAX_LUN:
            raise ValueError(f"{v!r}: a LUN is 0 to {MAX_LUN} (Azure's data disk lun)")
        if lun in out:
            raise ValueError(f"LUN {lun} is given twice ({out[lun].path} and {path}): each data "
                             "disk needs its own LUN")
        out[lun] = DataDisk(lun, path)
    return tuple(out[lun] for lun in sorted(out))


def route_problem(disks: Sequence[DataDisk], source: str | None) -> str | None:
    """Why the chosen source route cannot carry these LUNs (None when it can)."""
    luns = [d.lun for d in disks]
    if source == "managed-image" and luns != list(range(len(luns))):
        return (f"--source managed-image: az image create numbers data disks 0, 1, ... in "
                f"order, so the LUNs {', '.join(map(str, luns))} cannot be kept; use LUNs "
                f"0..{len(luns) - 1} or --source managed-disk")
    return None


def data_profile(profile: Profile) -> Profile:
    """The OS disk's profile for a data disk: the data role, no gallery declaration."""
    return replace(profile, role="data", gallery=None)


def run_all(disks: Sequence[DataDisk], profile: Profile, select: Sequence[str] = (),
            ignore: Sequence[str] = (), md5: bool | None = None) -> list[DataDiskRun]:
    """Check each data disk (disk level only); with ``md5`` not None, start its digests first.
    A disk that cannot be read raises FormatError or OSError naming it (exit 3)."""
    from .pipeline import run
    out = []
    for d in disks:
        digests = None
        if md5 is not None:
            from .manifest import Digests
            digests = Digests(d.path, md5)
        out.append(DataDiskRun(d, run(d.path, data_profile(profile), None, select, ignore),
                               digests))
    return out


def of(run: CheckRun) -> list[DataDiskRun]:
    """The data disks checked beside ``run`` (none when no --data-disk was given)."""
    return list(run.extra.get("data_disks", ()))


def all_results(run: CheckRun) -> list[Result]:
    """The OS disk's results and every data disk's: what the exit code judges."""
    return [*run.results, *(r for d in of(run) for r in d.run.results)]
