"""The JSON schemas of vhdtool's outputs, shipped with it: ``check-report.schema.json`` (``vhdtool
check --format json``) and ``manifest.schema.json`` (``vhdtool manifest``).  Read them with
:func:`load`, or ``importlib.resources.files("vhdtool.schemas")``."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any


def load(name: str) -> Any:
    """The parsed schema ``name`` (``check-report`` or ``manifest``)."""
    return json.loads(files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8"))
