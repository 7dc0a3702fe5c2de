"""Where the project's shared material lives: ../shared (samples made by Hyper-V, the references).

$VHDTOOL_SHARED, else ../shared beside the clone, else /work/shared (where this project's machines
keep it), so that a clone anywhere (CI clones to a temporary folder) still tests against it.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_path(*parts: str) -> Path:
    """``shared/<parts>`` from the first of the candidate folders that has it."""
    beside = Path(__file__).resolve().parent.parent.parent / "shared"
    for root in (os.environ.get("VHDTOOL_SHARED"), beside, "/work/shared"):
        if root and Path(root, *parts).exists():
            return Path(root, *parts)
    return beside.joinpath(*parts)
