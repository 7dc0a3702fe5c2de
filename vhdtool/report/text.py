"""The human report: failures grouped by severity, one line per finding with evidence and fix.

A check with more than :data:`MANY` findings (the same leftover in six places: six host key files)
gets one line: the count, the first finding's message, the first :data:`EVIDENCE_SHOWN` pieces of
evidence and how many more; the JSON, SARIF and JUnit reports keep every finding.

References:
  click.style (ANSI colours, only on a terminal or with --color); docs/check.md.
"""

from __future__ import annotations

import click

from vhdtool.checks.catalog import Result, Severity, Verdict

from ..datadisks import all_results, of
from ..pipeline import CheckRun
from ..exitcodes import trips

_STYLE = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _paint(text: str, color: bool, **style: object) -> str:
    return click.style(text, **style) if color else text  # type: ignore[arg-type]


#: more findings than this in one check are summarised on one line
MANY = 3
#: pieces of evidence the summary line shows
EVIDENCE_SHOWN = 3


def _summary_line(r: Result, head: str, label: str = "") -> str:
    """One line for a check with many findings: count, first message, first evidence, fix."""
    fs = r.findings
    shown = [f.evidence for f in fs if f.evidence][:EVIDENCE_SHOWN]
    more = sum(1 for f in fs if f.evidence) - len(shown)
    where = f" [{', '.join(shown)}{f', +{more} more' if more else ''}]" if shown else ""
    same = all(f.message == fs[0].message for f in fs)
    what = fs[0].message if same else f"e.g. {fs[0].message}"
    fixes = {f.fix for f in fs}
    fix = fixes.pop() if len(fixes) == 1 and None not in fixes else r.check.remediation
    return (f"  {head} {r.check.id}{label}: {len(fs)} findings, {what}{where} -- fix: {fix} "
            "(--format json lists them all)")


def _finding_lines(r: Result, color: bool, label: str = "") -> list[str]:
    sev = f"{r.severity!s:<7}"
    head = _paint(sev, color, fg=_STYLE[r.severity], bold=True)
    if len(r.findings) > MANY:
        return [_summary_line(r, head, label)]
    lines = []
    for f in r.findings:
        where = f" [{f.evidence}]" if f.evidence else ""
        lines.append(f"  {head} {r.check.id}{label}: {f.message}{where} -- fix: "
                     f"{f.fix or r.check.remediation}")
    return lines


def _failed_lines(results: list[Result], color: bool, label: str = "") -> list[str]:
    """The failures grouped by severity (errors first), one line per finding."""
    failed = sorted((r for r in results if r.verdict is Verdict.FAIL),
                    key=lambda r: (-r.severity, r.check.id))
    lines = []
    for sev in sorted(Severity, reverse=True):
        group = [r for r in failed if r.severity is sev]
        if group:
            title = f"{sev}s" if sev is not Severity.INFO else "info"
            lines.append(_paint(f"{title} ({len(group)}):", color, bold=True))
            for r in group:
                lines.extend(_finding_lines(r, color, label))
    lines += [_paint(f"  crashed {r.check.id}{label}: {r.reason}", color, fg="magenta")
              for r in results if r.verdict is Verdict.ERROR]
    return lines


def _data_disk_lines(run: CheckRun, color: bool) -> list[str]:
    """Each data disk: what it is, then its failures labelled with its LUN and file."""
    lines = []
    for d in of(run):
        f = d.run.facts
        what = f"{f.format} ({f.subformat})" if f.subformat else f.format
        size = f", {f.virtual_size:,} bytes" if f.virtual_size is not None else ""
        n = sum(r.verdict is Verdict.FAIL for r in d.run.results)
        lines.append(f"data disk LUN {d.disk.lun}: {d.disk.path}: {what}{size}, "
                     f"{n} failed")
        lines += _failed_lines(d.run.results, color, f" ({d.disk.label})")
    return lines


def render(run: CheckRun, fail_on: Severity, color: bool = False,
           show_skipped: bool = False) -> str:
    """The report; the checks that did not apply are counted, and listed with their reasons only
    with ``show_skipped`` (a disk-only run skips some sixty: listed, they buried the findings)."""
    d = run.facts
    what = f"{d.format} ({d.subformat})" if d.subformat else d.format
    gens = "/".join(sorted(run.generations))
    size = f", {d.virtual_size:,} bytes" if d.virtual_size is not None else ""
    lines = [f"vhdtool check {run.image}: {what}{size}",
             f"profile: {run.profile.os_state}, {run.profile.role} disk, generation {gens}"
             + (f" (layout boots {'/'.join(sorted(run.supported)) or 'none'})"
                if run.facts.scheme is not None else "")
             + (f", {', '.join(sorted(run.profile.features))}" if run.profile.features else "")]
    engine = run.extra.get("guest_engine")
    if engine is not None:
        lines.append(f"guest engine: {engine.name or 'none'} ({engine.reason})")
    lines += _failed_lines(run.results, color)
    lines += _data_disk_lines(run, color)
    results = all_results(run)
    failed = [r for r in results if r.verdict is Verdict.FAIL]
    crashed = [r for r in results if r.verdict is Verdict.ERROR]
    skipped = [r for r in run.results if r.verdict is Verdict.SKIP]
    passed = [r for r in results if r.verdict is Verdict.PASS]
    if skipped and show_skipped:
        lines.append("skipped:")
        lines.extend(f"  {r.check.id}: {r.reason}" for r in skipped)
    elif skipped:
        lines.append(f"({len(skipped)} checks did not apply: --show-skipped lists them and why)")
    gate = [r for r in results if trips(r.verdict, r.severity, fail_on)]
    verdict = _paint("FAILED", color, fg="red", bold=True) if gate else \
        _paint("OK", color, fg="green", bold=True)
    lines.append(f"{verdict}: {len(passed)} passed, {len(failed)} failed, "
                 f"{len(skipped)} skipped, {len(crashed)} crashed (--fail-on {fail_on})")
    return "\n".join(lines) + "\n"
