"""``vhdtool fix``'s report: each finding of the before run, before -> after.

Every check that failed (or crashed) on SRC, and every check that fails on DST but did not on SRC,
gets one :class:`Outcome`:

* ``fixed``: it passes on DST -- by its own fix, by another's, or by the conversion itself (the
  container checks: a fixed, whole-MiB VHD);
* ``not fixable``: it still fails and its fix was not applied -- it has none (see its
  remediation), or its fix is unsafe and ``--unsafe-fixes`` was not given (the reason says which);
* ``still failing``: its fix was applied and the re-check still fails it;
* ``no longer applies``: skipped on DST; ``new failure``: passed on SRC, fails on DST;
  ``crashed``: the check itself crashed on DST.

The text report puts these lines before ``check``'s report of DST; the JSON report adds them as
``fix`` (vhdtool/schemas/check-report.schema.json); JUnit and SARIF carry the DST run alone (the
lines also go to stderr then).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vhdtool.checks.catalog import Verdict

from .fixrun import FixRun

FIXED, NOT_FIXABLE, STILL_FAILING = "fixed", "not fixable", "still failing"
GONE, NEW, CRASHED = "no longer applies", "new failure", "crashed"


@dataclass(frozen=True)
class Outcome:
    check_id: str
    severity: str
    before: str
    after: str
    status: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.check_id, "severity": self.severity, "before": self.before,
                "after": self.after, "status": self.status, "detail": self.detail}


def outcomes(run: FixRun) -> list[Outcome]:
    assert run.after is not None
    after = {r.check.id: r for r in run.after.results}
    applied = {a.check_id: a for a in run.plan.applied}
    refused = {n.check_id: n.reason for n in run.plan.not_applied}
    out = []
    for r in run.before.results:
        a = after.get(r.check.id)
        if a is None:
            continue
        failed_before = r.verdict in (Verdict.FAIL, Verdict.ERROR)
        if not failed_before and a.verdict is not Verdict.FAIL:
            continue
        cid = r.check.id
        if not failed_before:
            status, detail = NEW, "passed on the source, fails on the fixed image"
        elif a.verdict is Verdict.ERROR:
            status, detail = CRASHED, a.reason or ""
        elif a.verdict is Verdict.PASS:
            status = FIXED
            detail = (f"by its fix ({applied[cid].fix.safety})" if cid in applied
                      else "by the conversion" if cid.startswith("disk.")
                      else "by another fix")
        elif a.verdict is Verdict.SKIP:
            status, detail = GONE, a.reason or ""
        elif cid in applied:
            status, detail = STILL_FAILING, "its fix was applied; the re-check still fails it"
        else:
            status, detail = NOT_FIXABLE, refused.get(cid, "no fix: see its remediation")
        out.append(Outcome(cid, str(a.severity), r.verdict.value, a.verdict.value, status,
                           detail))
    return out


def summary_lines(run: FixRun, src: str) -> list[str]:
    assert run.after is not None
    items = outcomes(run)
    counts = {s: sum(o.status == s for o in items) for s in (FIXED, NOT_FIXABLE, STILL_FAILING)}
    lines = [f"vhdtool fix {src} -> {run.after.image}: {len(run.plan.applied)} fixes applied; "
             + ", ".join(f"{n} {s}" for s, n in counts.items())]
    width = max((len(o.status) for o in items), default=0)
    lines += [f"  {o.status:<{width}}  {o.check_id} ({o.before} -> {o.after}): {o.detail}"
              for o in items]
    return lines


def fix_dict(run: FixRun, src: str) -> dict[str, Any]:
    return {"source": src, "applied": [{"id": a.check_id, "summary": a.fix.summary,
                                        "safety": str(a.fix.safety)} for a in run.plan.applied],
            "findings": [o.as_dict() for o in outcomes(run)]}


def render(fmt: str, run: FixRun, src: str, fail_on: Any, color: bool = False,
           show_skipped: bool = False) -> str:
    """The report of a fix in ``check``'s format ``fmt``."""
    import json

    from .report import render as render_check
    from .report.jsonreport import report_dict
    assert run.after is not None
    if fmt == "json":
        doc = report_dict(run.after, fail_on)
        doc["fix"] = fix_dict(run, src)
        return json.dumps(doc, indent=2) + "\n"
    text = render_check(fmt, run.after, fail_on, color=color, show_skipped=show_skipped)
    if fmt == "text":
        return "\n".join(summary_lines(run, src)) + "\n" + text
    return text





def emit(run: FixRun, src: str, dst: str, outs: Any, fail_on: Any, kw: dict[str, Any]) -> int:
    """Print or write what ``vhdtool fix`` produced (the diff; else the reports and the manifest
    of DST) and return the exit code: the re-check's, gated by ``--fail-on`` as in ``check``."""
    import sys

    import click

    from .exitcodes import Exit, check_exit
    from .report import write_atomic
    from .signals import InterruptedAfterOutput, exit_code
    if run.diff is not None:     # as diff(1) and ruff --diff: 1 when something would change
        click.echo(run.diff or "(nothing to change)\n", nl=False)
        return Exit.CHANGES if run.plan.applied else Exit.OK
    assert run.after is not None and run.converted is not None
    try:
        if not any(o.fmt == "text" for o in outs):
            for line in summary_lines(run, src):
                click.echo(f"vhdtool: {line}", err=True)
        for out in outs:
            color = kw.get("color")
            use_color = (color if color is not None else sys.stdout.isatty()) and out.path is None
            text = render(out.fmt, run, src, fail_on, bool(use_color), kw.get("show_skipped", False))
            if out.path is None:
                click.echo(text, nl=False)
            else:
                write_atomic(out.path, text)
        if kw.get("manifest_path"):
            from .manifest import build, render as render_manifest
            digests = {**run.converted.digests.as_dict(),
                       "source": "vhdtool fix (computed while converting)"}
            write_atomic(kw["manifest_path"], render_manifest(build(run.after, digests, fail_on)))
    except KeyboardInterrupt as e:       # DST is complete and named: say so
        raise InterruptedAfterOutput(exit_code(e) - 128, dst) from e
    return check_exit(run.after.results, fail_on)
__all__ = ["Outcome", "outcomes", "summary_lines", "fix_dict", "render", "emit"]
