"""The Azure Compute Gallery image definition: what the author declares, what the disk supports,
and the ``gallery.*`` checks that compare the two.

Open:
  - :mod:`checks.gallery.declaration` for :class:`Declaration` (the values the author declares,
    carried by ``Profile.gallery``), :func:`declare`, and the rules of names, versions and dates;
  - :mod:`checks.gallery.derivation` for :func:`derive`: each gallery property the disk supports
    (OS type and state, architecture, generations, and per generation the security type and
    disk controllers), with the evidence behind it;
  - :mod:`checks.gallery.rules` for the checks themselves (registered in the catalog on import);
  - :mod:`checks.gallery.publishing` for the checks of replication, sharing, sizes, URIs and
    source, with :mod:`checks.gallery.regions` (the dated list of Azure regions);
  - :mod:`checks.gallery.document` for the declaration as a document (file and manifest keys),
    which keys are updatable after creation, and the permission each source needs.

The provisioner facts the manifest shows are in :mod:`checks.provisioning`.
"""

from __future__ import annotations

from .declaration import (CONTROLLERS, SECURITY_TYPES, SIGNED_TYPES, Declaration, declare,
                          declared_accelerated, declared_controllers, declared_security_type,
                          identifier_problems, parse_date, version_problems)
from .derivation import (Definition, Derivation, Evidence, Property, derive, feature_values,
                         provisioning_disabled)
from . import rules, publishing  # noqa: F401  (register the gallery.* checks)

__all__ = ["CONTROLLERS", "SECURITY_TYPES", "SIGNED_TYPES", "Declaration", "Definition",
           "Derivation", "Evidence", "Property", "declare", "declared_accelerated",
           "declared_controllers", "declared_security_type", "derive", "feature_values",
           "identifier_problems", "parse_date", "provisioning_disabled", "version_problems"]
