"""The check catalog: every check declared once, with everything docs, reports and tests need.

A check is a function over a :class:`Context` (the author's :class:`Profile`, the disk facts and,
when the guest was opened, a read-only guest view) that returns its findings: an empty list is a
pass.  It raises :class:`NotApplicable` when the subject it needs is absent (e.g. no cloud-init
on the guest for a cloud-init check).  The declaration carries the permanent id, title, severity,
where it applies, rationale with its sources (keys of :mod:`checks.sources`), remediation, and
examples where it passes and where it fails; the examples are deltas on a known-good baseline (see
:mod:`checks.examples`) and the test suite runs every check on each of them.

This package never imports ``vhdtool`` nor a libguestfs handle; the facts it works on are its own.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import sources as refs

ID_RE = re.compile(r"^[a-z0-9]+(\.[a-z0-9-]+)+$")


class Severity(enum.IntEnum):
    INFO = 1
    WARNING = 2
    ERROR = 3

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r} (error, warning, info)") from None

    def __str__(self) -> str:
        return self.name.lower()


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"        #: not applicable to this profile or subject, with a reason
    ERROR = "error"      #: the check itself crashed; the rest still ran


GENERALIZED, SPECIALIZED = "generalized", "specialized"
V1, V2 = "V1", "V2"
#: intended features a check may require (Applies.features) or escalate on
FEATURES = ("marketplace", "trusted_launch", "nvme", "accelerated_networking")


@dataclass(frozen=True)
class Profile:
    """What the author intends to register the disk as."""

    os_state: str = GENERALIZED
    #: the generations the author intends; None = whatever the disk's layout supports
    generations: frozenset[str] | None = None
    role: str = "os"                      #: "os" or "data" disk
    features: frozenset[str] = frozenset()
    #: checks.gallery.Declaration: the gallery definition the author declares (None: none)
    gallery: Any = None

    def __post_init__(self) -> None:
        if self.os_state not in (GENERALIZED, SPECIALIZED):
            raise ValueError(f"os_state must be {GENERALIZED} or {SPECIALIZED}")
        unknown = set(self.features) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features: {', '.join(sorted(unknown))}")
        if self.generations is not None and not self.generations <= {V1, V2}:
            raise ValueError("generations must be V1 and/or V2")

    def has(self, feature: str) -> bool:
        return feature in self.features


@dataclass(frozen=True)
class Applies:
    """Where a check applies. Empty ``features`` means regardless of intended features."""

    os_states: frozenset[str] = frozenset({GENERALIZED, SPECIALIZED})
    generations: frozenset[str] = frozenset({V1, V2})
    features: frozenset[str] = frozenset()     #: all of these must be intended
    roles: frozenset[str] = frozenset({"os"})

    def why_not(self, profile: Profile, generations: frozenset[str]) -> str | None:
        """None if the check applies to ``profile``; otherwise the reason it is skipped.

        ``generations`` is the set the run targets (the profile's, or what the disk supports).
        """
        if profile.os_state not in self.os_states:
            return f"applies to {'/'.join(sorted(self.os_states))} images only"
        if generations and not (generations & self.generations):
            return f"applies to Hyper-V generation {'/'.join(sorted(self.generations))} only"
        missing = [f for f in sorted(self.features) if not profile.has(f)]
        if missing:
            return f"applies when {', '.join(missing)} is intended"
        if profile.role not in self.roles:
            return f"applies to {'/'.join(sorted(self.roles))} disks only"
        return None

    def describe(self) -> str:
        parts = ["/".join(sorted(self.os_states)), "/".join(sorted(self.generations))]
        if self.features:
            parts.append("+".join(sorted(self.features)))
        return ", ".join(parts)


ALL = Applies()


@dataclass(frozen=True)
class Example:
    """A case for docs and tests: a delta on the known-good baseline of :mod:`checks.examples`.

    ``disk``: fields of the disk facts to replace; ``files``: guest paths to write (str/bytes) or
    delete (None); ``profile``: Profile fields to set.
    """

    summary: str
    disk: Mapping[str, Any] | None = None
    files: Mapping[str, str | bytes | None] | None = None
    profile: Mapping[str, Any] | None = None
    #: the guest engine ran but could not open the guest, for this reason (the guest is then None)
    unopened: str | None = None


@dataclass(frozen=True)
class Finding:
    """One thing wrong, with the evidence that shows it (a guest path and line, a byte offset)."""

    message: str
    evidence: str | None = None
    #: a more specific fix than the check's remediation, when the finding knows it
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "evidence": self.evidence, "fix": self.fix}


class NotApplicable(Exception):
    """Raised by a check when its subject is absent; the message is the reason."""


@dataclass
class Context:
    """What a check sees."""

    profile: Profile
    #: checks.disk.DiskFacts, or None when only a guest is checked
    disk: Any = None
    #: a checks.guest.GuestView, or None when the guest was not opened
    guest: Any = None
    #: the generations this run targets (the profile's, or what the disk layout supports)
    generations: frozenset[str] = frozenset({V1, V2})
    #: why guest checks are skipped when ``guest`` is None
    guest_skip_reason: str = "the guest was not opened"
    #: a guest engine was asked to open the guest (False for a disk-only run such as --no-guest)
    guest_requested: bool = False
    #: facts derived once and shared by checks (cache)
    memo: dict[str, Any] = field(default_factory=dict)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


CheckFunc = Callable[[Context], Iterable[Finding]]


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    severity: Severity
    applies: Applies
    rationale: str
    #: citations, each a key of checks.sources.REFERENCES with an optional ": detail"
    sources: tuple[str, ...]
    remediation: str
    passes: tuple[Example, ...]
    fails: tuple[Example, ...]
    needs: str            #: "disk" or "guest": the subject the function reads
    func: CheckFunc = field(repr=False, compare=False)
    #: features that raise the severity to ERROR (e.g. marketplace for W (E for MP) rules)
    error_when: frozenset[str] = frozenset()
    #: checks.fixes.Fix: how ``vhdtool fix`` puts a failure right (None: no fix, see remediation)
    fix: Any = field(default=None, compare=False)

    def severity_for(self, profile: Profile) -> Severity:
        if any(profile.has(f) for f in self.error_when):
            return Severity.ERROR
        return self.severity

    @property
    def source(self) -> str:
        """The sources as text, with their URLs."""
        return refs.text(self.sources)

    @property
    def help_uri(self) -> str:
        """The URL of the first source (SARIF ``helpUri``)."""
        return refs.reference(self.sources[0]).url

    @property
    def doc_anchor(self) -> str:
        return self.id.replace(".", "-")


@dataclass(frozen=True)
class Result:
    check: Check
    verdict: Verdict
    severity: Severity
    findings: tuple[Finding, ...] = ()
    reason: str | None = None       #: why skipped, or the crash for ERROR

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.check.id, "title": self.check.title, "verdict": self.verdict.value,
                "severity": str(self.severity), "reason": self.reason,
                "findings": [f.as_dict() for f in self.findings],
                "remediation": self.check.remediation}


CATALOG: dict[str, Check] = {}


def check(*, id: str, title: str, severity: Severity, rationale: str, source: str | Sequence[str],
          remediation: str, passes: Sequence[Example], fails: Sequence[Example],
          needs: str = "guest", applies: Applies = ALL,
          error_when: Iterable[str] = (), fix: Any = None) -> Callable[[CheckFunc], CheckFunc]:
    """Declare a check. Ids are permanent and never reused; ``source`` is one citation or a
    sequence of them, each ``"KEY"`` or ``"KEY: detail"`` with KEY in checks.sources.REFERENCES."""

    def register(func: CheckFunc) -> CheckFunc:
        if not ID_RE.match(id):
            raise ValueError(f"check id {id!r} is not dotted lower-case")
        if id in CATALOG:
            raise ValueError(f"check id {id!r} declared twice")
        if needs not in ("disk", "guest"):
            raise ValueError(f"{id}: needs must be 'disk' or 'guest'")
        cited = (source,) if isinstance(source, str) else tuple(source)
        if not cited:
            raise ValueError(f"{id}: no source cited")
        for c in cited:
            refs.reference(c)           # KeyError naming the unknown key
        CATALOG[id] = Check(id, title, severity, applies, rationale, cited, remediation,
                            tuple(passes), tuple(fails), needs, func, frozenset(error_when), fix)
        return func

    return register


def selected(check_id: str, select: Sequence[str], ignore: Sequence[str]) -> bool:
    """``--select``/``--ignore`` by id or dotted prefix (``deprov`` matches ``deprov.history``)."""

    def match(pattern: str) -> bool:
        return check_id == pattern or check_id.startswith(pattern.rstrip(".") + ".")

    if select and not any(match(p) for p in select):
        return False
    return not any(match(p) for p in ignore)


def run_check(chk: Check, ctx: Context) -> Result:
    sev = chk.severity_for(ctx.profile)
    why = chk.applies.why_not(ctx.profile, ctx.generations)
    if why:
        return Result(chk, Verdict.SKIP, sev, reason=why)
    if chk.needs == "guest" and ctx.guest is None:
        return Result(chk, Verdict.SKIP, sev, reason=ctx.guest_skip_reason)
    if chk.needs == "disk" and ctx.disk is None:
        return Result(chk, Verdict.SKIP, sev, reason="no disk facts (guest-only run)")
    try:
        findings = tuple(chk.func(ctx))
    except NotApplicable as e:
        return Result(chk, Verdict.SKIP, sev, reason=str(e))
    except Exception as e:  # noqa: BLE001 - a crashing check is reported, the rest still run
        return Result(chk, Verdict.ERROR, sev, reason=f"{type(e).__name__}: {e}")
    return Result(chk, Verdict.FAIL if findings else Verdict.PASS, sev, findings)


def run_catalog(ctx: Context, select: Sequence[str] = (), ignore: Sequence[str] = (),
                catalog: Mapping[str, Check] | None = None) -> list[Result]:
    cat = CATALOG if catalog is None else catalog
    return [run_check(c, ctx) for cid, c in sorted(cat.items()) if selected(cid, select, ignore)]
