"""The check catalog. Importing :func:`load` registers every check module."""

from __future__ import annotations

from importlib import import_module

from .catalog import CATALOG, Check, Context, Finding, Profile, Result, Severity, Verdict
from .disk import DiskFacts, supported_generations

#: the modules that declare checks, imported by load(); each adds its checks to CATALOG
CHECK_MODULES: tuple[str, ...] = ("checks.disk_checks", "checks.guest_prov", "checks.guest_boot",
                                 "checks.guest_deprov", "checks.guest_tl", "checks.gallery.rules")


def load() -> dict[str, Check]:
    for name in CHECK_MODULES:
        import_module(name)
    return CATALOG


__all__ = ["CATALOG", "Check", "Context", "DiskFacts", "Finding", "Profile", "Result", "Severity",
           "Verdict", "load", "supported_generations"]
