"""SARIF 2.1.0: rules generated from the catalog, one result per finding, crashes as notifications.

References: OASIS Static Analysis Results Interchange Format 2.1.0 (errata01) §3.
"""

from __future__ import annotations

import json
from typing import Any

from vhdtool import checks
from vhdtool.checks.catalog import Check, Severity, Verdict

from .. import __version__
from ..datadisks import of
from ..pipeline import CheckRun

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def rule(c: Check) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.id.replace(".", "/"),
        "shortDescription": {"text": c.title},
        "fullDescription": {"text": c.rationale},
        "help": {"text": f"{c.remediation}\nSource: {c.source}"},
        "helpUri": c.help_uri,
        "defaultConfiguration": {"level": LEVEL[c.severity]},
        "properties": {"source": c.source, "applies": c.applies.describe(), "needs": c.needs,
                       "docs": f"docs/checks.md#{c.doc_anchor}"},
    }


def _results(run: CheckRun, index: dict[str, int], results: list[dict[str, Any]],
             notes: list[dict[str, Any]], lun: int | None = None, label: str = "") -> None:
    """One SARIF result per finding of ``run`` (a data disk's labelled by its LUN and file)."""
    location = {"physicalLocation": {"artifactLocation": {"uri": run.image}}}
    for r in run.results:
        if r.verdict is Verdict.FAIL:
            for f in r.findings:
                msg = f.message + (f" [{f.evidence}]" if f.evidence else "")
                results.append({
                    "ruleId": r.check.id, "ruleIndex": index[r.check.id],
                    "level": LEVEL[r.severity], "kind": "fail",
                    "message": {"text": f"{label}{msg}. Fix: {f.fix or r.check.remediation}"},
                    "locations": [location],
                    "properties": {"evidence": f.evidence,
                                   **({"lun": lun} if lun is not None else {})},
                })
        elif r.verdict is Verdict.ERROR:
            notes.append({"level": "error",
                          "message": {"text": f"{label}{r.check.id}: {r.reason}"},
                          "associatedRule": {"id": r.check.id, "index": index[r.check.id]}})


def render(run: CheckRun) -> str:
    catalog = checks.load()
    ids = sorted(catalog)
    index = {cid: i for i, cid in enumerate(ids)}
    results: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    _results(run, index, results, notes)
    for d in of(run):       # a data disk's results: its file, its LUN in the text and properties
        _results(d.run, index, results, notes, d.disk.lun, f"{d.disk.label}: ")
    doc = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "vhdtool", "version": __version__,
                                "rules": [rule(catalog[cid]) for cid in ids]}},
            "artifacts": [{"location": {"uri": path}}
                          for path in (run.image, *(d.disk.path for d in of(run)))],
            "invocations": [{"executionSuccessful": True,
                             "toolExecutionNotifications": notes}],
            "results": results,
        }],
    }
    return json.dumps(doc, indent=2) + "\n"
