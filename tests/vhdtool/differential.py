"""Run the whole catalog on one image with a given guest engine; compare two runs (helpers)."""

from __future__ import annotations

from typing import Any

from checks.catalog import Profile
from vhdtool.pipeline import run


def findings(image: str, engine: Any, profile: Profile | None = None) -> dict[str, Any]:
    """{check id: (verdict, reason, ((message, evidence, fix), ...))} of a full ``check`` run."""
    result = run(image, profile or Profile(), None, guest_engine=engine)
    return {r.check.id: (r.verdict.value, r.reason,
                         tuple((f.message, f.evidence, f.fix) for f in r.findings))
            for r in result.results}


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {cid: (a.get(cid), b.get(cid)) for cid in sorted(set(a) | set(b))
            if a.get(cid) != b.get(cid)}
