"""The command line imports the check catalog only for the commands that use it."""

from __future__ import annotations

import subprocess
import sys

from vhdtool.checks.catalog import GENERALIZED, SPECIALIZED, V1, V2
from vhdtool.checks.gallery import SECURITY_TYPES
from vhdtool import options as cli


def test_convert_does_not_import_the_catalog() -> None:
    code = ("import sys, vhdtool.cli, vhdtool.convert; "
            "print(sorted(m for m in sys.modules if m.startswith(('checks', 'vhdtool.checks'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_choices_spell_the_catalog_constants() -> None:
    assert cli.OS_STATES == (GENERALIZED, SPECIALIZED)
    assert cli.SECURITY_TYPES == SECURITY_TYPES
    assert cli.GENERATIONS == {"1": (V1,), "2": (V2,), "both": (V1, V2), "auto": None}
    profile = cli.profile_of(SPECIALIZED, "both", "os", {"nvme": True, "marketplace": False})
    assert profile.generations == frozenset({V1, V2})
    assert profile.features == frozenset({"nvme"})
    assert cli.profile_of(GENERALIZED, "auto", "data", {}).generations is None
