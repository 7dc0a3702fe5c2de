"""JUnit XML: one test case per check (failure, error for a crashed check, skipped with reason).

A failure below ``--fail-on`` is reported in the test case's ``system-out`` and does not fail it,
so the JUnit view agrees with the exit code.

References:
  The de-facto JUnit XML format read by Jenkins, GitLab CI and Azure DevOps (testsuites >
  testsuite[tests, failures, errors, skipped, time] > testcase[classname, name] with failure,
  error, skipped, system-out children).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vhdtool.checks.catalog import Result, Severity, Verdict

from ..datadisks import of
from ..pipeline import CheckRun
from ..exitcodes import trips


def _finding_text(r: Result) -> str:
    return "\n".join(f"{f.message}" + (f" [{f.evidence}]" if f.evidence else "")
                     + f"\nfix: {f.fix or r.check.remediation}" for f in r.findings)


def _case(r: Result, fail_on: Severity, prefix: str = "") -> ET.Element:
    case = ET.Element("testcase", classname=prefix + r.check.id.rsplit(".", 1)[0],
                      name=prefix + r.check.id)
    if r.verdict is Verdict.ERROR:
        ET.SubElement(case, "error", message=r.reason or "crashed", type="crash").text = r.reason
    elif r.verdict is Verdict.SKIP:
        ET.SubElement(case, "skipped", message=r.reason or "")
    elif r.verdict is Verdict.FAIL:
        text = _finding_text(r)
        if trips(r.verdict, r.severity, fail_on):
            first = r.findings[0].message
            ET.SubElement(case, "failure", message=f"{r.severity}: {first}",
                          type=str(r.severity)).text = text
        else:
            ET.SubElement(case, "system-out").text = f"{r.severity} (below --fail-on): {text}"
    return case


def _suite(suites: ET.Element, name: str, cases: list[ET.Element], seconds: float) -> None:
    n = {tag: sum(c.find(tag) is not None for c in cases)
         for tag in ("failure", "error", "skipped")}
    suite = ET.SubElement(suites, "testsuite", name=name, tests=str(len(cases)),
                          failures=str(n["failure"]), errors=str(n["error"]),
                          skipped=str(n["skipped"]), time=f"{seconds:.3f}")
    suite.extend(cases)


def render(run: CheckRun, fail_on: Severity) -> str:
    suites = ET.Element("testsuites", name="vhdtool check")
    _suite(suites, f"vhdtool check {run.image}", [_case(r, fail_on) for r in run.results],
           run.seconds)
    for d in of(run):     # one suite per data disk, its cases' classnames prefixed by the LUN
        cases = [_case(r, fail_on, f"lun{d.disk.lun}.") for r in d.run.results]
        _suite(suites, f"vhdtool check data disk {d.disk.label} ({d.disk.path})", cases,
               d.run.seconds)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
