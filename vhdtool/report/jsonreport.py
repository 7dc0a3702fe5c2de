"""The JSON report; its shape is published as vhdtool/schemas/check-report.schema.json.

References:
  JSON Schema draft 2020-12 (the published schema); docs/exit-codes.md (``passed``/``gate``).
"""

from __future__ import annotations

import json
from typing import Any

from vhdtool.checks.catalog import Severity, Verdict

from .. import __version__
from ..datadisks import of
from ..pipeline import CheckRun
from ..exitcodes import trips

#: bump on any incompatible change of the report's shape (and update the schema file)
SCHEMA_VERSION = 1


def _disk(run: CheckRun) -> dict[str, Any]:
    d = run.facts
    return {
        "format": d.format, "subformat": d.subformat, "file_size": d.file_size,
        "virtual_size": d.virtual_size, "logical_sector_size": d.logical_sector_size,
        "scheme": d.scheme, "unreadable": d.unreadable,
        "partitions": [{"index": p.index, "start": p.start, "size": p.size,
                        "type_id": p.type_id, "type_name": p.type_name, "fs": p.fs}
                       for p in d.partitions],
    }


def _results(run: CheckRun, fail_on: Severity) -> list[dict[str, Any]]:
    results = []
    for r in run.results:
        item = r.as_dict()
        item["source"] = r.check.source
        item["gate"] = trips(r.verdict, r.severity, fail_on)
        results.append(item)
    return results


def _summary(run: CheckRun) -> dict[str, int]:
    return {v.value: sum(r.verdict is v for r in run.results) for v in Verdict}


def _data_disks(run: CheckRun, fail_on: Severity) -> list[dict[str, Any]]:
    """Each data disk: its LUN and file, disk facts, results (labelled by the LUN)."""
    out = []
    for d in of(run):
        results = _results(d.run, fail_on)
        out.append({"lun": d.disk.lun, "image": d.disk.path, "label": d.disk.label,
                     "disk": _disk(d.run), "passed": not any(i["gate"] for i in results),
                     "summary": _summary(d.run), "results": results})
    return out


def report_dict(run: CheckRun, fail_on: Severity) -> dict[str, Any]:
    results = _results(run, fail_on)
    summary = _summary(run)
    data_disks = _data_disks(run, fail_on)
    p = run.profile
    engine = run.extra.get("guest_engine")
    out = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "vhdtool", "version": __version__},
        "image": run.image,
        "profile": {"os_state": p.os_state, "role": p.role,
                    "generations": sorted(p.generations) if p.generations is not None else None,
                    "features": sorted(p.features)},
        "generations": {"targeted": sorted(run.generations), "supported": sorted(run.supported)},
        "disk": _disk(run),
        "fail_on": str(fail_on),
        "passed": not any(item["gate"] for item in results)
        and all(d["passed"] for d in data_disks),
        "summary": summary,
        "results": results,
        "data_disks": data_disks,
    }
    if engine is not None:
        out["guest_engine"] = engine.as_dict()
    return out


def render(run: CheckRun, fail_on: Severity) -> str:
    return json.dumps(report_dict(run, fail_on), indent=2) + "\n"
