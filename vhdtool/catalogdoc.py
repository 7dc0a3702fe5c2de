"""The catalog as text: ``vhdtool checks list``/``show`` and the generated docs/checks.md.

References:
  checks.catalog (the declarations), checks.sources (the references they cite, with URLs);
  GitHub-flavoured Markdown (tables, explicit anchors, inline links).
"""

from __future__ import annotations

from vhdtool.checks import sources
from vhdtool.checks.catalog import Check, Example


def _example(e: Example) -> str:
    parts = []
    if e.disk:
        parts.append(", ".join(f"{k}={_short(v)}" for k, v in e.disk.items()))
    if e.files:
        parts.append(", ".join(f"{k}" + (" deleted" if v is None else " written")
                               for k, v in e.files.items()))
    if e.profile:
        parts.append("profile " + ", ".join(f"{k}={_short(v)}" for k, v in e.profile.items()))
    return e.summary + (f" ({'; '.join(parts)})" if parts else "")


def _short(v: object) -> str:
    if isinstance(v, frozenset):
        return "/".join(sorted(map(str, v)))
    if isinstance(v, tuple) and v and all(hasattr(x, "short") for x in v):
        return "[" + ", ".join(x.short() for x in v) + "]"
    return repr(v)


def fix_text(c: Check) -> str:
    """The check's automatic fix in words: what it changes, its safety class and set."""
    if c.fix is None:
        return "no automatic fix (vhdtool fix leaves it to the remediation)"
    return f"{c.fix.summary} [{c.fix.describe()}]"


def list_line(c: Check) -> str:
    return f"{c.id:<28} {c.severity!s:<8} {c.needs:<6} {c.title}"


def show(c: Check) -> str:
    lines = [f"{c.id}: {c.title}",
             f"severity:    {c.severity}" + (f" (error when {', '.join(sorted(c.error_when))})"
                                             if c.error_when else ""),
             f"applies to:  {c.applies.describe()}; {'/'.join(sorted(c.applies.roles))} disk"
             + (f"; needs {c.needs}" if c.needs else ""),
             f"rationale:   {c.rationale}",
             "sources:"]
    lines += [f"  - {sources.text((s,))}" for s in c.sources]
    lines += [f"remediation: {c.remediation}", f"automatic fix: {fix_text(c)}", "passes when:"]
    lines += [f"  - {_example(e)}" for e in c.passes]
    lines.append("fails when:")
    lines += [f"  - {_example(e)}" for e in c.fails]
    return "\n".join(lines) + "\n"


def markdown(catalog: dict[str, Check]) -> str:
    """docs/checks.md: generated from the declarations; ``vhdtool checks docs -o`` rewrites it."""
    out = ["# Check reference", "",
           "<!-- Generated from the check catalog by `vhdtool checks docs -o docs/checks.md`."
           " Do not edit by hand. -->", "",
           "| Id | Severity | Applies | Title |", "|---|---|---|---|"]
    for cid, c in sorted(catalog.items()):
        out.append(f"| [`{cid}`](#{c.doc_anchor}) | {c.severity} | {c.applies.describe()} "
                   f"| {c.title} |")
    for cid, c in sorted(catalog.items()):
        esc = "+".join(sorted(c.error_when))
        out += ["", f'<a id="{c.doc_anchor}"></a>', f"## `{cid}`: {c.title}", "",
                f"- **Severity**: {c.severity}" + (f" (error when {esc})" if esc else ""),
                f"- **Applies to**: {c.applies.describe()}; "
                f"{'/'.join(sorted(c.applies.roles))} disk; reads the {c.needs}",
                f"- **Why**: {c.rationale}",
                f"- **Source**: {sources.markdown(c.sources)}",
                f"- **Remediation**: `{c.remediation}`",
                f"- **Automatic fix** (`vhdtool fix`): {fix_text(c)}",
                "- **Passes**: " + "; ".join(_example(e) for e in c.passes),
                "- **Fails**: " + "; ".join(_example(e) for e in c.fails)]
    return "\n".join(out) + "\n"
