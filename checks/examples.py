"""Turn a check's :class:`~checks.catalog.Example` into a :class:`~checks.catalog.Context`.

Examples are deltas on known-good baselines. Each subject registers its baseline builder here:
``disk`` (checks.disk: DiskFacts of a correct fixed VHD) and ``guest`` (checks.fakeguest: an
in-memory guest of a well-prepared generalized Debian image). The test suite proves that every
check passes on the baselines and on its ``passes`` examples, and fails on its ``fails`` examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from .catalog import V1, V2, Context, Example, Profile

#: subject -> builder(overrides) -> facts; registered by the module that defines the subject
BASELINES: dict[str, Callable[[Mapping[str, Any] | None], Any]] = {}


def register_baseline(subject: str, builder: Callable[[Mapping[str, Any] | None], Any]) -> None:
    BASELINES[subject] = builder


def context_for(example: Example | None = None) -> Context:
    """The baseline context with ``example``'s deltas applied."""
    ex = example or Example("baseline")
    profile = Profile()
    if ex.profile:
        profile = replace(profile, **ex.profile)
    disk = BASELINES["disk"](ex.disk) if "disk" in BASELINES else None
    guest = BASELINES["guest"](ex.files) if "guest" in BASELINES else None
    gens = profile.generations or frozenset({V1, V2})
    ctx = Context(profile=profile, disk=disk, guest=guest, generations=gens,
                  guest_requested=guest is not None)
    if ex.unopened is not None:
        ctx.guest, ctx.guest_skip_reason = None, ex.unopened
    return ctx
