"""The format core's error hierarchy.

Every problem that makes an image unreadable is a :class:`FormatError` that names the file, the
structure and the byte offset where the problem was found.  Nothing else may escape the readers:
callers (the CLI, the converter, the checks) rely on catching ``FormatError`` alone.
"""

from __future__ import annotations

import os


class FormatError(Exception):
    """An image cannot be read as what it claims to be."""

    def __init__(self, path: str | os.PathLike[str] | None, structure: str, offset: int | None,
                 message: str) -> None:
        self.path = os.fspath(path) if path is not None else "<memory>"
        self.structure = structure
        self.offset = offset
        self.message = message
        where = f" at offset {offset:#x} ({offset})" if offset is not None else ""
        super().__init__(f"{self.path}: {structure}{where}: {message}")


class UnknownFormat(FormatError):
    """No supported format's signature was found."""


class CorruptImage(FormatError):
    """A structure is damaged: bad signature, checksum, table entry or size."""


class TruncatedImage(CorruptImage):
    """The file ends before a structure it declares."""


class UnsupportedFeature(FormatError):
    """A valid image uses a feature this reader refuses (unknown required items, encryption...)."""


class EncryptedImage(UnsupportedFeature):
    """The image is encrypted; it cannot be read without keys."""


class MissingBackingFile(FormatError):
    """A backing, parent or external data file is named but cannot be found or does not match."""


class DirtyImage(FormatError):
    """The image holds un-replayed state that this reader cannot apply."""
