"""Azure public regions, shipped as data and dated: the ``name`` column of ``az account
list-locations`` (lower case, no spaces: ``westeurope``), physical regions only.

Source (:mod:`checks.sources` REGIONS): the list Microsoft keeps in Azure/karpenter-provider-azure
hack/code/prices_gen.go at commit 6872c29c4181ffc908018fd9013d79394145bc4f, read on
:data:`AS_OF`.  Azure adds regions: a name missing here is a warning (gallery.region-names), not
an error; refresh the list with ``az account list-locations --query "[?metadata.regionType==
'Physical'].name" -o tsv``.
"""

from __future__ import annotations

import re

AS_OF = "2026-12-06"
REGIONS = frozenset("""
australiacentral australiacentral2 australiaeast australiasoutheast austriaeast brazilsouth
brazilsoutheast canadacentral canadaeast centralindia centralus chilecentral eastasia eastus
eastus2 francecentral francesouth germanynorth germanywestcentral indonesiacentral israelcentral
italynorth japaneast japanwest jioindiacentral jioindiawest koreacentral koreasouth malaysiawest
mexicocentral newzealandnorth northcentralus northeurope norwayeast norwaywest polandcentral
qatarcentral southafricanorth southafricawest southcentralus southeastasia southindia spaincentral
swedencentral swedensouth switzerlandnorth switzerlandwest uaecentral uaenorth uksouth ukwest
westcentralus westeurope westindia westus westus2 westus3
""".split())
#: the form of a region name (what az and ARM take; display names such as "West Europe" differ)
NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")


def normal(name: str) -> str:
    """The name as list-locations spells it (ARM compares names without case and spaces)."""
    return name.replace(" ", "").lower()
