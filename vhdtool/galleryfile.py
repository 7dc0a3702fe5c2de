"""``--gallery-file FILE``: the publishing intent kept in version control, YAML or JSON, validated
by the published schema vhdtool/schemas/gallery.schema.json (the keys of the manifest's
``gallery.declared``), then read into Declaration keyword arguments
(:func:`vhdtool.checks.gallery.document.from_document`).  Command-line options win over the file.
"""

from __future__ import annotations

import datetime
from typing import Any

import jsonschema
import yaml

from vhdtool.checks.gallery.document import from_document

from . import schemas


class GalleryFileError(ValueError):
    """The file cannot be read or does not follow the schema; the message names file and place."""


def _where(path: list[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path) or "(top level)"


def _dates_as_text(doc: Any) -> Any:
    """YAML reads ``2028-06-30`` as a date: the schema (and JSON) want the ISO-8601 text."""
    if isinstance(doc, dict):
        return {k: _dates_as_text(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_dates_as_text(v) for v in doc]
    if isinstance(doc, (datetime.date, datetime.datetime)):
        return doc.isoformat()
    return doc


def load(path: str) -> dict[str, Any]:
    """Declaration keyword arguments of the declaration file ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise GalleryFileError(f"{path}: cannot read: {e}") from None
    try:
        doc = yaml.safe_load(text)      # YAML 1.1 reads JSON documents too
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GalleryFileError(f"{path}: not YAML or JSON{at}: "
                               f"{getattr(e, 'problem', None) or e}") from None
    doc = {} if doc is None else _dates_as_text(doc)
    validator = jsonschema.Draft202012Validator(schemas.load("gallery"))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        shown = "; ".join(f"{_where(list(e.absolute_path))}: {e.message}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise GalleryFileError(f"{path}: does not follow gallery.schema.json: {shown}{more}")
    return from_document(doc)
