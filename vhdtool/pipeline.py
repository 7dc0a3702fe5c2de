"""``vhdtool check``'s pipeline: open the image, gather facts, build the context, run the catalog.

The image is opened once (:class:`vhdtool.disk.Disk`); the disk facts are its projection and the
guest engine plugs in through :data:`GuestEngine`: a callable given the same opened disk that
opens its guest read-only and returns a ``checks.guest.GuestView`` (or raises).  Without one,
checks that need the guest are skipped with a reason that says how to enable them.

References:
  the catalog's own registry of sources (vhdtool.checks.sources) for each check; Microsoft Learn,
  "Generation 2 VMs on Azure" (learn.microsoft.com/azure/virtual-machines/generation-2) for the
  Hyper-V generation a disk's layout supports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vhdtool import checks
from vhdtool.checks.catalog import V1, V2, Check, Context, Profile, Result, run_catalog, selected
from vhdtool.checks.disk import DiskFacts, supported_generations

from .disk import Disk
from .facts import footer_bytes

#: (image path, the run's opened disk) -> guest view; supplied by the guest engine when guest
#: checks run (``disk.format`` and ``disk.facts`` are there; the native engine reads the guest
#: through ``disk.image``)
GuestEngine = Callable[[str, Disk], Any]

NO_GUEST = "disk-only run (--no-guest): the guest was not opened"


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


def wants_guest(catalog: Mapping[str, Check], ctx: Context, select: Sequence[str],
                ignore: Sequence[str]) -> bool:
    """Whether a selected guest check applies to the run (else the guest is never opened)."""
    return any(c.needs == "guest" and selected(cid, select, ignore)
               and c.applies.why_not(ctx.profile, ctx.generations) is None
               for cid, c in catalog.items())


def run(image: str, profile: Profile, fmt: str | None = None, select: Sequence[str] = (),
        ignore: Sequence[str] = (), guest_engine: GuestEngine | None = None,
        collect: Callable[[Context], Mapping[str, Any]] | None = None) -> CheckRun:
    """Check ``image`` for ``profile``. FormatError propagates for unreadable images.

    The guest engine is called (one appliance launch) only when a selected guest check applies;
    ``extra["checks_seconds"]`` is the time of the checks alone, after the guest was opened.
    ``collect(ctx)``, when given, runs after the checks while the guest is still open; what it
    returns is added to ``extra`` (the manifest gathers its guest facts and derivation so).
    """
    t0 = time.perf_counter()
    catalog = checks.load()
    with Disk(image, fmt) as disk:
        return _run(disk, t0, catalog, profile, select, ignore, guest_engine, collect)


def _run(disk: Disk, t0: float, catalog: Mapping[str, Check], profile: Profile,
         select: Sequence[str], ignore: Sequence[str], guest_engine: GuestEngine | None,
         collect: Callable[[Context], Mapping[str, Any]] | None) -> CheckRun:
    image, facts = disk.path, disk.facts
    nbytes = disk.bytes_read + footer_bytes(disk)      # the facts' reads, not the guest's
    supported = supported_generations(facts) if facts.scheme is not None else frozenset()
    gens = target_generations(profile, supported)
    extra: dict[str, Any] = {}
    ctx = Context(profile=profile, disk=facts, generations=gens, guest_skip_reason=NO_GUEST)
    use_guest = guest_engine is not None and wants_guest(catalog, ctx, select, ignore)
    try:
        if use_guest:
            ctx.guest_requested = True
            ctx.guest = guest_engine(image, disk)  # type: ignore[misc]
            ctx.guest_skip_reason = getattr(guest_engine, "skip_reason", None) or NO_GUEST
        t1 = time.perf_counter()
        results = run_catalog(ctx, select, ignore, catalog)
        extra["checks_seconds"] = time.perf_counter() - t1
        if collect is not None:
            extra.update(collect(ctx))
    finally:
        close = getattr(guest_engine, "close", None) if use_guest else None
        if close is not None:
            close()
    if use_guest and getattr(guest_engine, "choice", None) is not None:
        extra["guest_engine"] = guest_engine.choice  # type: ignore[union-attr]
    timing = getattr(guest_engine, "timing", None) if use_guest else None
    if timing is not None:
        timing.checks = extra["checks_seconds"]
        extra["guest_timing"] = timing
    return CheckRun(image, profile, facts, gens, supported, results, nbytes,
                    time.perf_counter() - t0, extra)
