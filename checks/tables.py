"""Check families that differ only in data: one row per check, one loop declares them all.

A family's rows subclass :class:`Row` (the declaration every check carries: id, title, severity,
rationale, sources, remediation, examples) with the fields that tell its members apart, e.g. the
footer field and its offset, the directories whose entries are leftovers, the kernel arguments
required.  :func:`declare` hands each row to :func:`checks.catalog.check` with the function the
family builds for it, so a family is one table and one body, and the catalog sees ordinary checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .catalog import ALL, Applies, CheckFunc, Example, Severity, check


@dataclass(frozen=True, kw_only=True)
class Row:
    """The declaration of one check of a family (the fields of :func:`checks.catalog.check`)."""

    id: str
    title: str
    severity: Severity
    rationale: str
    source: tuple[str, ...]
    remediation: str
    passes: tuple[Example, ...]
    fails: tuple[Example, ...]
    needs: str = "guest"
    applies: Applies = ALL
    error_when: frozenset[str] = frozenset()
    #: checks.fixes.Fix, or None
    fix: Any = None


R = TypeVar("R", bound=Row)


def declare(rows: Iterable[R], body: Callable[[R], CheckFunc]) -> None:
    """Declare one check per row; ``body(row)`` is its function (named after the id's last part)."""
    for row in rows:
        func = body(row)
        func.__name__ = func.__qualname__ = row.id.rsplit(".", 1)[-1].replace("-", "_")
        check(id=row.id, title=row.title, severity=row.severity, rationale=row.rationale,
              source=row.source, remediation=row.remediation, passes=row.passes,
              fails=row.fails, needs=row.needs, applies=row.applies,
              error_when=row.error_when, fix=row.fix)(func)
