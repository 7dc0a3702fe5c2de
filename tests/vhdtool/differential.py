"""Run the whole catalog on one image with a given guest engine; compare two runs (helpers)."""

from __future__ import annotations

from typing import Any

from vhdtool.checks.catalog import Profile
from vhdtool.pipeline import run


class Capture:
    """Wraps a guest engine and keeps the guest facts it produced."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.facts = engine, None

    def __call__(self, image: str, disk: Any) -> Any:
        guest = self.engine(image, disk)
        self.facts = guest.facts if guest is not None else None
        return guest

    @property
    def skip_reason(self) -> str | None:
        return self.engine.skip_reason

    def close(self) -> None:
        self.engine.close()


def findings(image: str, engine: Any, profile: Profile | None = None) -> tuple[dict[str, Any], Any]:
    """({check id: (verdict, reason, ((message, evidence, fix), ...))}, guest facts) of a full
    ``check`` run of every check with ``engine``."""
    cap = Capture(engine)
    result = run(image, profile or Profile(), None, guest_engine=cap)
    return ({r.check.id: (r.verdict.value, r.reason,
                          tuple((f.message, f.evidence, f.fix) for f in r.findings))
             for r in result.results}, cap.facts)


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {cid: (a.get(cid), b.get(cid)) for cid in sorted(set(a) | set(b))
            if a.get(cid) != b.get(cid)}
