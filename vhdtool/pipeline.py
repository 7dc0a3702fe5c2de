"""``vhdtool check``'s pipeline: open the image, gather facts, build the context, run the catalog.

The guest engine plugs in through :data:`GuestEngine`: a callable that opens the image's guest
read-only and returns a ``checks.guest.GuestView`` (or raises).  Without one, checks that need the
guest are skipped with a reason that says how to enable them.

References:
  ../shared/reference/azure-requirements.md §1 (the checks), §2 (hyperVGeneration from the disk).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import checks
from checks.catalog import V1, V2, Context, Profile, Result, run_catalog
from checks.disk import DiskFacts, supported_generations

from .facts import build_disk_facts

#: (image path, disk facts) -> guest view; supplied by the guest engine when guest checks run
GuestEngine = Callable[[str, DiskFacts], Any]

NO_GUEST = "guest checks were not requested (the guest engine is not enabled)"


@dataclass
class CheckRun:
    """Everything a report needs about one ``vhdtool check`` run."""

    image: str
    profile: Profile
    facts: DiskFacts
    #: the generations the run targeted, and what the layout supports
    generations: frozenset[str]
    supported: frozenset[str]
    results: list[Result]
    bytes_read: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def target_generations(profile: Profile, supported: frozenset[str]) -> frozenset[str]:
    """The profile's generations; ``auto`` (None) means what the disk supports (both if none)."""
    if profile.generations is not None:
        return profile.generations
    return supported or frozenset({V1, V2})


def run(image: str, profile: Profile, fmt: str | None = None, select: Sequence[str] = (),
        ignore: Sequence[str] = (), guest_engine: GuestEngine | None = None) -> CheckRun:
    """Check ``image`` for ``profile``. FormatError propagates for unreadable images."""
    t0 = time.perf_counter()
    catalog = checks.load()
    facts, nbytes = build_disk_facts(image, fmt)
    supported = supported_generations(facts) if facts.scheme is not None else frozenset()
    gens = target_generations(profile, supported)
    guest = guest_engine(image, facts) if guest_engine is not None else None
    ctx = Context(profile=profile, disk=facts, guest=guest, generations=gens,
                  guest_skip_reason=NO_GUEST)
    results = run_catalog(ctx, select, ignore, catalog)
    return CheckRun(image, profile, facts, gens, supported, results, nbytes,
                    time.perf_counter() - t0)
